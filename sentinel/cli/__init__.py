"""The `sentinel` command line. Every command maps its flags onto the one `Settings` object."""

from __future__ import annotations

import functools
import importlib
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


class LazyGroup(click.Group):
    """Click's documented lazy-loading pattern: subcommands from `COMMANDS`, imported on use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, _, attr = COMMANDS[cmd_name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # A key that cannot be had (no KEK file, a token that refuses the PIN) is the operator's to fix:
            # a message and status 2 from any command, never a traceback.
            from sentinel.audit.kek import KeyUnavailable

            if isinstance(exc, KeyUnavailable):
                click.echo(f"sentinel: {exc}", err=True)
                sys.exit(2)
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))  # as click.Group.format_commands
        rows = [(name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings=CONTEXT)
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


COMMANDS: dict[str, tuple[str, str]] = {
    "admin": ("sentinel.cli.admin:admin", "The admin API's access tokens (SENTINEL_ADMIN_TOKENS_FILE)."),
    "audit": (
        "sentinel.cli.audit:audit",
        "Read and check the audit trail (the embedded store, or Elasticsearch when configured).",
    ),
    "backup": (
        "sentinel.cli.backup:backup",
        "Encrypted, deduplicated backups: audit store, keys, models, databases. See docs/backup.md.",
    ),
    "demo": ("sentinel.cli.demo:demo", "Watch Sentinel work without a model server."),
    "drill": ("sentinel.cli.drill:drill", "Restore drills: prove the backups restore, and how fast."),
    "es": (
        "sentinel.cli.es:es",
        "Elasticsearch for the audit trail (SENTINEL_ELASTICSEARCH_URL and credentials from env or files).",
    ),
    "generate": (
        "sentinel.cli.generate:generate",
        "Regenerate rules/sentinel.rules.yml, dashboards/*.json and docs/dashboards.md.",
    ),
    "grafana": ("sentinel.cli.grafana:grafana", "Manage Sentinel's Grafana objects over the Grafana HTTP API."),
    "keys": ("sentinel.cli.keys:keys", "Create, inspect and rotate the audit trail's keys."),
    "report": (
        "sentinel.cli.report:report",
        "A compliance report for auditors (HIPAA 164.312 style), signed and recorded in the audit trail.",
    ),
    "scheduler": (
        "sentinel.cli.scheduler:scheduler",
        "Run scheduled backups, restore drills and audit verification (cron times from the settings).",
    ),
    "serve": ("sentinel.cli.serve:serve", "Proxy an OpenAI-compatible or Ollama model server and record every call."),
}
"""Each command's module and the first paragraph of its help, which `sentinel --help` shortens as
click does (a test keeps them equal to the commands' own). A command's module is imported only when
that command runs: `sentinel --help` or `sentinel backup run` need not import the proxy, FastAPI or
the report renderer (`sentinel --help` took 0.59 s, now 0.18 s)."""
