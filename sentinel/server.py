"""Booting Sentinel: build every part from `Settings`, serve the proxy and admin ports, shut down cleanly.

`run_server(settings)` is an async context manager that tests use to boot the real thing on real
sockets (port 0 picks free ports); `serve(settings)` is what `sentinel serve` runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from opentelemetry.sdk.trace import SpanProcessor
from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics

from sentinel.admin.app import AdminState, create_admin_app
from sentinel.admin.auth import AdminAuth, load_tokens
from sentinel.admin.logins import FailedLogins, FailureWindow
from sentinel.audit.record import EVENT, Event
from sentinel.audit.schedule import VerifySchedule, intervals, schedules
from sentinel.audit.service import AuditService
from sentinel.audit.trail import Entry
from sentinel.audit.watch import StateFile
from sentinel.audit.watch_metrics import VerifyCollector
from sentinel.backup.metrics import BackupCollector
from sentinel.backup.state import RunLog
from sentinel.config import ConfigError, Settings
from sentinel.connections import ConnectionLimits, closed_counter, guarded_protocol, sweep
from sentinel.cooperative import Foreground
from sentinel.gpu.monitor import GpuMonitor
from sentinel.policy.changes import PolicyHistory, log_change
from sentinel.policy.hook import PolicyHook
from sentinel.policy.loading import PolicyError
from sentinel.policy.metrics import PolicyMetrics
from sentinel.policy.moderation import ModerationEndpoint
from sentinel.policy.store import PolicyStore
from sentinel.proxy.app import ProxyApp
from sentinel.proxy.hooks import RequestHook
from sentinel.proxy.upstream_settings import TlsError, UpstreamLimits, UpstreamTimeouts, UpstreamTls
from sentinel.recorder import Recorder
from sentinel.sinks import Sink, SinkRunner, sink_counters
from sentinel.sinks.jsonl import JsonlSink
from sentinel.telemetry.metrics import ModelLabels, ProxyMetrics, ReadAtScrape
from sentinel.telemetry.tracing import SpanEmitter, TraceStarter
from sentinel.telemetry.upstream import UpstreamProbe

log = logging.getLogger("sentinel")


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: `serve` handles signals for both ports."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def instance_id(settings: Settings) -> str:
    """This instance's stable name: from settings, else created once and kept in the data directory."""
    if settings.instance_id:
        return settings.instance_id
    path = settings.data_dir / "instance-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
        return value


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


@dataclass
class Sentinel:
    """A running instance: its parts and the URLs it listens on."""

    settings: Settings
    registry: CollectorRegistry
    metrics: ProxyMetrics
    recorder: Recorder
    proxy: ProxyApp
    probe: UpstreamProbe
    audit: AuditService | None = None
    gpu: GpuMonitor | None = None
    proxy_url: str = ""
    admin_url: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


def build(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    sinks: Sequence[Sink] = (),
    span_processor: SpanProcessor | None = None,
) -> Sentinel:
    if not settings.upstream.url:
        raise ConfigError("upstream.url (env SENTINEL_UPSTREAM_URL, flag --upstream) is required")
    # `_created` series double the exposition and nothing here uses them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = registry or CollectorRegistry()
    gauges = ReadAtScrape()
    registry.register(gauges)
    metrics = ProxyMetrics(registry, ModelLabels(settings.metrics.models, settings.metrics.max_models))
    written, dropped, failures = sink_counters(registry)
    all_sinks: list[Sink] = list(sinks)
    instance = instance_id(settings)
    audit: AuditService | None = None
    journal = None
    if settings.audit.mode != "off":
        audit = AuditService(settings, registry, instance)
        audit.register_gauges(gauges)
        if settings.audit.mode == "strict":
            journal = audit.journal(settings.upstream.provider)
        else:
            all_sinks.append(audit.sink())
    if settings.sinks.jsonl_path is not None:
        all_sinks.append(
            JsonlSink(
                settings.resolve_path(settings.sinks.jsonl_path), include_content=settings.sinks.jsonl_include_content
            )
        )
    runners = [
        SinkRunner(sink, settings.sinks.queue_size, written, dropped, failures, linger=settings.sinks.linger)
        for sink in all_sinks
    ]
    spans = SpanEmitter.from_settings(settings.tracing, registry, span_processor)
    foreground = Foreground()
    recorder = Recorder(
        registry,
        metrics,
        runners,
        spans=spans,
        capacity=settings.sinks.queue_size,
        instance=instance,
        provider=settings.upstream.provider,
        upstream_url=settings.upstream.url,
        foreground=foreground,
    )
    recorder.register_gauges(gauges)
    # Backups run in their own processes; their outcomes are read from the run log at scrape time.
    registry.register(BackupCollector(RunLog(settings.resolve_path(settings.backup.state_file)), settings.backup.plans))
    if audit is not None:  # so do the scheduled verification checks, here or in `sentinel scheduler`
        registry.register(
            VerifyCollector(
                StateFile(settings.resolve_path(settings.audit.verify_state_file)), intervals(settings.audit)
            )
        )
    extras: dict[str, Any] = {"gauges": gauges}
    tokens = load_tokens(settings.resolve_path(settings.admin_tokens_file)) if settings.admin_tokens_file else {}
    logins = FailedLogins(
        window=settings.logins.window, limit=settings.logins.limit, max_clients=settings.logins.max_clients
    )
    extras["auth"] = AdminAuth(tokens, registry, logins)
    hooks: list[RequestHook] = []
    if settings.policy.file is not None:
        policy_metrics = PolicyMetrics(registry, settings.policy.max_rule_labels)
        store = PolicyStore(settings.policy.file, interval=settings.policy.reload_interval, metrics=policy_metrics)
        store.subscribe(log_change)
        store.subscribe(PolicyHistory(settings.resolve_path(settings.policy.history_file)))
        try:
            store.load()
        except PolicyError as exc:
            raise ConfigError(f"policy.file (env SENTINEL_POLICY_FILE): {exc}") from None
        hooks.append(PolicyHook(store, policy_metrics))
        extras["policy"] = store
        extras["policy_metrics"] = policy_metrics
    api_key = settings.upstream.api_key.get_secret_value() if settings.upstream.api_key else None
    up = settings.upstream
    password = up.client_key_password.get_secret_value() if up.client_key_password else None
    tls = UpstreamTls(up.tls_verify, up.ca_bundle, up.client_cert, up.client_key, password)
    ssl_context = _tls_context(settings.upstream.url, tls)
    if ssl_context is not None:
        Gauge(
            "sentinel_upstream_tls_verify",
            "1 when the https:// upstream's certificate is verified, 0 with upstream.tls_verify=false.",
            registry=registry,
        ).set(1 if tls.verify else 0)
    proxy = ProxyApp(
        settings.upstream.url,
        recorder,
        foreground=foreground,
        traces=TraceStarter(settings.tracing.sample_ratio),
        upstream_api_key=api_key,
        timeouts=UpstreamTimeouts(up.connect_timeout, up.read_timeout, up.pool_timeout),
        limits=UpstreamLimits(
            max_connections=up.max_connections,
            keepalive_expiry=up.keepalive_timeout,
            warm_window=up.warm_window,
            max_warm=up.max_warm,
        ),
        tls=tls,
        max_body_bytes=settings.max_body_bytes,
        max_capture_bytes=settings.max_capture_bytes,
        in_flight=metrics.in_flight,
        journal=journal,
        request_hooks=hooks,
    )
    probe = UpstreamProbe(
        settings.upstream.url,
        registry,
        path=settings.upstream.health_path,
        interval=settings.upstream.health_interval,
        api_key=api_key,
        ssl_context=ssl_context,
        fail_after=settings.upstream.ready_fail_after,
    )
    gpu = GpuMonitor.from_settings(settings.gpu, settings.upstream.url, ssl_context=ssl_context)
    registry.register(gpu.collector)
    return Sentinel(settings, registry, metrics, recorder, proxy, probe, audit=audit, gpu=gpu, extras=extras)


def _tls_context(url: str, tls: UpstreamTls) -> ssl.SSLContext | None:
    """The upstream's TLS context, checked once at start: a file that cannot be loaded is a ConfigError."""
    if not url.startswith("https://"):
        if tls != UpstreamTls():
            log.warning("upstream TLS settings are ignored: upstream.url %s is not https://", url)
        return None
    try:
        context = tls.context()
    except TlsError as exc:
        raise ConfigError(f"upstream TLS (upstream.ca_bundle / client_cert / client_key): {exc}") from None
    if not tls.verify:
        log.warning(
            "TLS VERIFICATION OF THE UPSTREAM IS OFF (upstream.tls_verify=false): anyone on the path to %s can "
            "read and change prompts and answers. Point upstream.ca_bundle at a private CA instead.",
            url,
        )
    return context


def _policy_change_recorder(audit: AuditService) -> Any:
    def record(change: Any) -> None:
        event = Event(
            "policy_change",
            change.actor,
            {
                "path": change.path,
                "outcome": change.outcome,
                "old_digest": change.old_digest,
                "new_digest": change.new_digest,
                "error": change.error,
            },
            private={"diff": change.diff},
            time=change.at,
        )
        done = audit.trail.append([Entry(EVENT, event=event)])
        done.add_done_callback(_log_failure("policy change"))

    return record


async def _record_settings(audit: AuditService, settings: Settings) -> None:
    """The non-secret settings in force from now on, as an audit event: reports state the settings of
    their period from these (settings change only with a restart), not those of whoever runs the report."""
    from sentinel.report.configuration import SETTINGS_EFFECTIVE, effective

    snapshot = await asyncio.to_thread(effective, settings)  # reads the admin tokens file
    try:
        await audit.record_event(
            Event(SETTINGS_EFFECTIVE, "system:startup", {"digest": snapshot["digest"], "settings": snapshot})
        )
    except Exception as exc:  # an unavailable trail is reported by its own readiness check
        log.error("could not record the settings in force in the audit trail: %s", exc)


def _log_failure(what: str) -> Any:
    def callback(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("could not record %s in the audit trail: %s", what, future.exception())

    return callback


def _failed_logins_recorder(audit: AuditService | None, window: float) -> Any:
    """Failed admin logins go into the audit trail, one record per client per window (reports list
    them as anomalies); without a trail they are only logged."""

    async def record(failures: FailureWindow) -> None:
        if audit is not None:
            await audit.record_event(
                Event(
                    "admin_auth_failed",
                    f"client:{failures.client}",
                    failures.details(window),
                    time=failures.started,
                )
            )

    return record


@contextlib.asynccontextmanager
async def run_server(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    sinks: Sequence[Sink] = (),
    span_processor: SpanProcessor | None = None,
) -> AsyncIterator[Sentinel]:
    """Start Sentinel on its two ports; stop it (draining records) when the block exits."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sentinel = build(settings, registry=registry, sinks=sinks, span_processor=span_processor)
    proxy_sock = _bind(settings.host, settings.port)
    admin_sock = _bind(settings.admin_host, settings.admin_port)
    sentinel.proxy_url, sentinel.admin_url = _url(proxy_sock), _url(admin_sock)

    admin_state = AdminState(sentinel.registry)
    admin_state.ready_checks["upstream"] = lambda: (
        sentinel.probe.verdict is not False or not settings.upstream.ready_requires_up,
        "unknown yet"
        if sentinel.probe.verdict is None
        else ("reachable" if sentinel.probe.verdict else f"{settings.upstream.url} unreachable"),
        "unknown" if sentinel.probe.verdict is None else ("reachable" if sentinel.probe.verdict else "unreachable"),
    )
    if sentinel.audit is not None:
        audit = sentinel.audit

        def audit_ready() -> tuple[bool, str, str]:
            ok, detail = audit.ready()
            if not ok:
                return ok, detail, "cannot_record" if audit.keyring is not None else "unavailable"
            return ok, detail, "losing_records" if "records are being lost" in detail else "recording"

        admin_state.ready_checks["audit"] = audit_ready
        admin_state.audit = sentinel.audit
    admin_state.auth = sentinel.extras["auth"]
    if settings.metrics.token is not None:
        admin_state.metrics_token = settings.metrics.token.get_secret_value()
    sentinel.extras["admin_state"] = admin_state
    store: PolicyStore | None = sentinel.extras.get("policy")
    if store is not None:
        admin_state.ready_checks["policy"] = lambda: (
            store.current is not None,
            store.current.digest[:19] if store.current else "not loaded",
            "loaded" if store.current else "not_loaded",
        )
    if settings.policy.moderation_token is not None:
        admin_state.moderation = ModerationEndpoint(
            settings.policy.moderation_token.get_secret_value(),
            lambda: store.current if store is not None else None,
            sentinel.extras.get("policy_metrics"),
        )
    admin_app = create_admin_app(admin_state)
    admin_state.register_gauges(sentinel.extras["gauges"])

    limits = settings.connections
    closed = closed_counter(sentinel.registry)
    shared_limits: dict[str, Any] = {
        "header_timeout": limits.header_timeout,
        "body_timeout": limits.body_timeout,
        "idle_timeout": limits.idle_timeout,
        "write_timeout": limits.write_timeout,
        "body_min_rate": limits.body_min_rate,
        "max_per_client": limits.max_per_client,
        "closed": closed,
    }
    proxy_limits = ConnectionLimits("proxy", max_connections=limits.max_proxy, **shared_limits)
    admin_limits = ConnectionLimits("admin", max_connections=limits.max_admin, **shared_limits)
    common: dict[str, Any] = {
        "lifespan": "off",
        "proxy_headers": False,  # the client address is the peer's; Sentinel sits in front of Dify, not behind an LB
        "log_config": None,
        "server_header": False,
        "date_header": False,
        "timeout_keep_alive": limits.idle_timeout,
        "timeout_graceful_shutdown": 30,
    }
    servers: dict[str, uvicorn.Server] = {}
    sentinel.extras["gauges"].gauge(
        "sentinel_connections_open",
        "Client connections open now, by port (proxy, admin).",
        ["port"],
        lambda: [((port,), float(len(server.server_state.connections))) for port, server in servers.items()],
    )
    sentinel.extras["gauges"].counter(
        "sentinel_upstream_retries",
        "Requests sent again on a new upstream connection after a reused one failed before any response "
        "byte, by reason (idempotent, idempotency_key, closed_before_send, not_written, reset, idle).",
        ["reason"],
        lambda: [((reason,), float(count)) for reason, count in sentinel.proxy.upstream_retries.items()],
    )
    proxy_server = _Server(
        uvicorn.Config(
            sentinel.proxy, http=guarded_protocol(proxy_limits, proxy_sock), access_log=settings.access_log, **common
        )
    )
    admin_server = _Server(
        uvicorn.Config(admin_app, http=guarded_protocol(admin_limits, admin_sock), access_log=False, **common)
    )
    servers.update(proxy=proxy_server, admin=admin_server)
    sentinel.extras["servers"] = servers

    if sentinel.audit is not None:
        await sentinel.audit.start()
        await _record_settings(sentinel.audit, settings)
        policy_store = sentinel.extras.get("policy")
        if policy_store is not None:
            # Policy changes, the one at start included, become events in the audit trail.
            policy_store.subscribe(_policy_change_recorder(sentinel.audit), replay=True)
    await sentinel.recorder.start()
    await sentinel.proxy.start()
    sentinel.probe.start()
    if sentinel.gpu is not None:
        sentinel.gpu.start()
    backups = None
    if settings.backup.schedule_in_serve:
        from sentinel.backup.scheduler import BackupScheduler

        # A scheduler thread that only waits on child processes: the backup work never runs here.
        backups = BackupScheduler(settings)
        backups.start()
        sentinel.extras["backup_scheduler"] = backups
    verification = None
    if sentinel.audit is not None and settings.audit.verify_in_serve and schedules(settings.audit):
        # Like backups: each check runs in its own process, this thread only waits for it.
        verification = VerifySchedule(settings)
        verification.start()
        sentinel.extras["verify_schedule"] = verification
    if store is not None:
        store.start()
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(proxy_server.serve(sockets=[proxy_sock]), name="proxy-server"),
        loop.create_task(admin_server.serve(sockets=[admin_sock]), name="admin-server"),
    ]
    auth: AdminAuth = sentinel.extras["auth"]
    sweepers = [
        loop.create_task(sweep(proxy_server.server_state.connections, proxy_limits), name="proxy-deadlines"),
        loop.create_task(sweep(admin_server.server_state.connections, admin_limits), name="admin-deadlines"),
        loop.create_task(
            auth.logins.run(
                _failed_logins_recorder(sentinel.audit, settings.logins.window), min(1.0, settings.logins.window / 4)
            ),
            name="failed-logins",
        ),
    ]
    try:
        while not (proxy_server.started and admin_server.started):
            for task in tasks:
                if task.done():
                    task.result()
                    raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        yield sentinel
    finally:
        proxy_server.should_exit = admin_server.should_exit = True
        if backups is not None:
            backups.shutdown(wait=False)
        if verification is not None:
            verification.shutdown(wait=False)
        await asyncio.gather(*tasks, return_exceptions=True)
        for sweeper in sweepers:
            sweeper.cancel()
        await asyncio.gather(*sweepers, return_exceptions=True)
        await sentinel.probe.stop()
        if sentinel.gpu is not None:
            await sentinel.gpu.stop()
        if store is not None:
            await store.stop()
        await sentinel.proxy.close()
        await sentinel.recorder.stop(settings.sinks.drain_timeout)
        if sentinel.audit is not None:
            await sentinel.audit.stop(settings.sinks.drain_timeout)
        proxy_sock.close()
        admin_sock.close()


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight requests and pending records."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_server(settings) as sentinel:
        log.info(
            "Sentinel proxying %s on %s (metrics and admin API on %s)",
            settings.upstream.url,
            sentinel.proxy_url,
            sentinel.admin_url,
        )
        # Long-lived objects from start-up never need collecting again; fewer, larger young-generation
        # collections cost less per request than the default 700-allocation trigger on a busy proxy.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: finishing in-flight requests and pending records")
