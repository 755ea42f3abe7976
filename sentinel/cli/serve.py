"""`sentinel serve`: run the proxy and the admin API until stopped."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from sentinel.audit.kek import KeyUnavailable
from sentinel.cli import load, settings_options
from sentinel.config import ConfigError


@click.command()
@click.option(
    "--upstream", metavar="URL", help="Model server base URL, e.g. http://vllm:8000 (env SENTINEL_UPSTREAM_URL)."
)
@click.option("--host", help="Proxy listen address [127.0.0.1] (env SENTINEL_HOST).")
@click.option("--port", type=int, help="Proxy port that Dify points at [8080] (env SENTINEL_PORT).")
@click.option("--admin-host", help="Admin/metrics listen address [127.0.0.1] (env SENTINEL_ADMIN_HOST).")
@click.option("--admin-port", type=int, help="Admin API and /metrics port [9464] (env SENTINEL_ADMIN_PORT).")
@click.option("--access-log/--no-access-log", default=None, help="Log every proxied request (env SENTINEL_ACCESS_LOG).")
@settings_options
def serve(
    upstream: str | None,
    host: str | None,
    port: int | None,
    admin_host: str | None,
    admin_port: int | None,
    access_log: bool | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Proxy an OpenAI-compatible or Ollama model server and record every call.

    Point Dify's model provider at http://HOST:PORT/v1 (OpenAI-compatible) or http://HOST:PORT
    (Ollama) instead of the model server. Metrics are on http://ADMIN_HOST:ADMIN_PORT/metrics.
    """
    settings = load(
        config_file,
        data_dir=data_dir,
        log_level=log_level,
        log_format=log_format,
        upstream={"url": upstream} if upstream else None,
        host=host,
        port=port,
        admin_host=admin_host,
        admin_port=admin_port,
        access_log=access_log,
    )
    from sentinel.audit.service import InstanceRunning
    from sentinel.server import serve as run

    try:
        import uvloop

        uvloop.run(run(settings))
    except (ConfigError, KeyUnavailable, InstanceRunning) as exc:
        click.echo(f"sentinel: {exc}", err=True)
        sys.exit(2)
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        asyncio.run(run(settings))
