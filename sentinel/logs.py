"""Logging setup: readable text by default, one JSON object per line with `--log-format json`."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from sentinel.proxy.app import SuppressAbortTraceback


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.error").addFilter(SuppressAbortTraceback())
    # uvicorn's per-request chatter and aiohttp internals stay quiet unless debugging.
    if level != "debug":
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        # Two uvicorn servers (proxy and admin port) each announce their start and stop: every line
        # twice looks like two Sentinels. Sentinel says itself where it listens and when it stops.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        logging.getLogger("aiohttp").setLevel(logging.WARNING)
        # The Elasticsearch transport logs every retried request with a traceback; Sentinel reports
        # an unreachable store itself, once, in words.
        logging.getLogger("elastic_transport").setLevel(logging.ERROR)
