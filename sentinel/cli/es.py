"""`sentinel es setup`: apply the Elasticsearch layout for the audit trail, idempotently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from sentinel.audit.store import StoreUnavailable
from sentinel.cli import load, settings_options
from sentinel.cli.keys import fail


@click.group()
def es() -> None:
    """Elasticsearch for the audit trail (SENTINEL_ELASTICSEARCH_URL and credentials from env or files)."""


@es.command("setup")
@settings_options
def setup(config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None) -> None:
    """Create or update the ILM policy (retention), index template, data stream and side indices.

    Run it with an account allowed to manage ILM and templates; Sentinel itself then writes with a
    create-only role (see compose/elasticsearch/).
    """
    settings = load(config_file, data_dir=data_dir, log_level=log_level or "warning", log_format=log_format)
    if not settings.elasticsearch.url:
        fail("elasticsearch.url (env SENTINEL_ELASTICSEARCH_URL) is not set", 2)
    from sentinel.audit.service import open_store
    from sentinel.audit.store.elasticsearch import ElasticsearchStore

    async def run() -> list[str]:
        store = open_store(settings)
        assert isinstance(store, ElasticsearchStore)
        try:
            return await store.setup()
        finally:
            await store.close()

    try:
        for step in asyncio.run(run()):
            click.echo(f"  {step}")
    except StoreUnavailable as exc:
        fail(str(exc), 1)
    click.echo("Elasticsearch is ready for the audit trail.")
