"""`sentinel demo`: a labelled demo model server behind Sentinel, a few real calls, and what was recorded."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import click
import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console
from rich.json import JSON
from rich.table import Table

from sentinel.cli import load, settings_options
from sentinel.interaction import Interaction

console = Console()

METRIC_PREFIXES = (
    "gen_ai_server_time_to_first_token_seconds_count",
    "gen_ai_server_request_duration_seconds_count",
    "sentinel_requests_total",
    "sentinel_tokens_total",
    "sentinel_proxy_overhead_seconds_count",
    "sentinel_proxy_overhead_seconds_sum",
)


async def _calls(proxy_url: str) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=proxy_url + "/v1", api_key="demo-key-not-a-secret", max_retries=0)
    console.print("[bold]1.[/] Streamed chat, as Dify sends it (include_usage, user field) ...")
    stream = await client.chat.completions.create(
        model="deepseek-r1-demo",
        messages=[{"role": "user", "content": "What does Sentinel record about this call?"}],
        stream=True,
        stream_options={"include_usage": True},
        user="dify-end-user-42",
        temperature=0.6,
    )
    async for _ in stream:
        pass
    console.print("[bold]2.[/] Non-streamed chat ...")
    await client.chat.completions.create(
        model="deepseek-r1-demo", messages=[{"role": "user", "content": "Hello there"}], max_tokens=64
    )
    console.print("[bold]3.[/] Embeddings ...")
    await client.embeddings.create(model="demo-embedder", input=["patient intake note", "discharge summary"])
    console.print("[bold]4.[/] Ollama-native streamed chat (/api/chat, NDJSON) ...")
    async with aiohttp.ClientSession() as session:
        payload = {"model": "deepseek-r1-demo", "messages": [{"role": "user", "content": "Hi Ollama"}], "think": True}
        async with session.post(proxy_url + "/api/chat", json=payload) as resp:
            async for _ in resp.content:
                pass
    await client.close()


async def _audit_tour(sentinel: Any, interaction_id: str) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """Ship what is spooled, then show the stored record, its decryption and the chain verification."""
    service = sentinel.audit
    if service is None or service.shipper is None:
        return None
    stored = None
    for _ in range(100):  # the audit sink records after the fact: give it a moment
        while await service.shipper.ship_once():
            pass
        stored = await service.store.get(interaction_id)
        if stored is not None:
            break
        await asyncio.sleep(0.05)
    if stored is None:
        return None
    for blob in stored.get("encrypted", {}).values():
        blob["ct"] = blob["ct"][:24] + "..."
    opened = await service.show(interaction_id, decrypt_content=True, actor="sentinel demo", reason="demo tour")
    report = await service.verify()
    verdict = (
        f"[green]intact[/]: {report.records_checked} records in {len(report.instances)} chain(s)"
        if report.ok
        else f"[red]{len(report.findings)} problem(s)[/]"
    )
    return stored, opened.get("content", {}), verdict


def _table(records: list[Interaction]) -> Table:
    # Fits an 80-column terminal: short two-line headers, the route never cut.
    table = Table(title="Interactions Sentinel recorded", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("route", no_wrap=True, min_width=len("/v1/chat/completions"))
    for column in ("stream", "status", "outcome", "TTFT\nms", "total\nms", "tokens\nin/out", "added\nµs"):
        table.add_column(column, no_wrap=True, justify="left" if column.isalpha() else "right")
    for r in records:
        table.add_row(
            r.path,
            "yes" if r.stream else "no",
            str(r.status_code),
            r.outcome.value,
            f"{r.ttft_s * 1000:.1f}" if r.ttft_s is not None else "-",
            f"{r.duration_s * 1000:.1f}",
            f"{r.usage.input_tokens or '-'}/{r.usage.output_tokens or '-'}" if r.usage.source else "unknown",
            f"{r.overhead_s * 1e6:.0f}" if r.overhead_s is not None else "-",
        )
    return table


def _json(value: Any) -> None:
    """Indented JSON, long strings wrapped at the terminal's width rather than past it."""
    console.print(JSON(orjson.dumps(value).decode()))


def _metrics_excerpt(text: str) -> None:
    """Each sample as its name, then its labels and value on an indented line: fits 80 columns."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(METRIC_PREFIXES):
                continue
            labels = ", ".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if v)
            console.print(f"[bold]{sample.name}[/]", highlight=False)
            console.print(f"  {labels or '(no labels)'}  [cyan]{sample.value:g}[/]", highlight=False)


async def _run(settings: Any) -> None:
    from sentinel.demo.upstream import running_demo_upstream
    from sentinel.server import run_server
    from sentinel.sinks.memory import MemorySink

    sink = MemorySink()
    async with running_demo_upstream(delay=0.01) as upstream_url:
        console.rule("[bold yellow]DEMO upstream (canned answers, not a real model)")
        console.print(f"Demo model server on {upstream_url}")
        settings.upstream.url = upstream_url
        async with run_server(settings, sinks=[sink]) as sentinel:
            console.print(f"Sentinel proxy on {sentinel.proxy_url}")
            console.print(f"Its metrics on   {sentinel.admin_url}/metrics\n")
            await _calls(sentinel.proxy_url)
            records = await sink.wait_for(4)
            async with aiohttp.ClientSession() as session, session.get(sentinel.admin_url + "/metrics") as resp:
                metrics_text = await resp.text()
            audit = await _audit_tour(sentinel, records[0].id)
    console.print()
    console.print(_table(records))
    console.rule("One record in full (the streamed chat)")
    _json(records[0])
    console.rule("Metrics excerpt (GET /metrics on the admin port)")
    _metrics_excerpt(metrics_text)
    if audit is not None:
        stored, opened, verdict = audit
        console.rule("The same call in the audit trail, as stored (content encrypted)")
        _json(stored)
        console.rule("... decrypted by an auditor (the access itself is recorded)")
        _json(opened)
        console.rule("sentinel audit verify")
        console.print(verdict)


@click.command()
@settings_options
def demo(config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None) -> None:
    """Watch Sentinel work without a model server.

    Starts a built-in DEMO upstream (canned answers, clearly labelled, streams like vLLM with
    DeepSeek-R1 reasoning and like Ollama), puts Sentinel in front of it on free local ports,
    sends a few calls with the official `openai` client, and prints what Sentinel captured.
    """
    # The demo's audit key lives and dies in a temporary directory: the warning to back it up does not apply.
    logging.getLogger("sentinel.audit").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="sentinel-demo-") as scratch:
        settings = load(
            config_file,
            data_dir=data_dir or Path(scratch),
            log_level=log_level or "warning",
            log_format=log_format,
            host="127.0.0.1",
            port=0,
            admin_port=0,
            upstream={"url": "http://127.0.0.1:1"},
        )
        asyncio.run(_run(settings))
