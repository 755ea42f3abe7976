"""The `sentinel` command line. Every command maps its flags onto the one `Settings` object."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sentinel import __version__
from sentinel.config import ConfigError, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def settings_options(func: F) -> F:
    """Flags every command that reads settings shares; they override env and the YAML file."""

    @click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="SENTINEL_CONFIG",
        help="YAML settings file (env SENTINEL_CONFIG).",
    )
    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Where embedded stores, spools and key files live (env SENTINEL_DATA_DIR).",
    )
    @click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        help="Log verbosity (env SENTINEL_LOG_LEVEL).",
    )
    @click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        help="Log as text or one JSON object per line (env SENTINEL_LOG_FORMAT).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def load(
    config_file: Path | None,
    *,
    data_dir: Path | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    **overrides: Any,
) -> Settings:
    """Load settings or exit with status 2 and a message naming the bad key."""
    try:
        settings = load_settings(
            config_file, data_dir=data_dir, log_level=log_level, log_format=log_format, **overrides
        )
    except ConfigError as exc:
        click.echo(f"sentinel: {exc}", err=True)
        sys.exit(2)
    from sentinel.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    return settings


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="sentinel")
def main() -> None:
    """Sentinel: observability and compliance sidecar for self-hosted LLMs.

    Put Sentinel between Dify (or any OpenAI/Ollama client) and your model server. Every call is
    forwarded unchanged and becomes metrics, a trace and an interaction record.

    \b
    Start here:
      sentinel demo                                   see it work, no model server needed
      sentinel serve --upstream http://vllm:8000      proxy a real server on :8080

    Settings come from flags, SENTINEL_* environment variables and an optional YAML file
    (--config); secrets only from the environment or files.
    """


def _register() -> None:
    from sentinel.cli import admin, audit, backup, demo, drill, es, generate, grafana, keys, report, scheduler, serve

    main.add_command(serve.serve)
    main.add_command(demo.demo)
    main.add_command(generate.generate)
    main.add_command(grafana.grafana)
    main.add_command(backup.backup)
    main.add_command(drill.drill)
    main.add_command(scheduler.scheduler)
    main.add_command(keys.keys)
    main.add_command(audit.audit)
    main.add_command(es.es)
    main.add_command(admin.admin)
    main.add_command(report.report)


_register()
