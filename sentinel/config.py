"""The one typed settings object: read once at start from YAML, env (`SENTINEL_*`) and CLI flags.

Precedence, highest first: CLI flags, environment, the YAML file (`--config` / `SENTINEL_CONFIG`),
defaults. Nested sections map to env names with one underscore: `upstream.read_timeout` is
`SENTINEL_UPSTREAM_READ_TIMEOUT`. Secrets are read from env or from a `*_file`, never from flags.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from sentinel.audit.settings import AuditSettings, ElasticsearchSettings
from sentinel.backup.settings import BackupSettings
from sentinel.gpu.settings import GpuSettings
from sentinel.grafana.settings import GrafanaSettings
from sentinel.policy.settings import PolicySettings
from sentinel.report.settings import ReportSettings
from sentinel.sections import Section as _Section
from sentinel.sections import secret_from_file as _read_secret_file

ENV_PREFIX = "SENTINEL_"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the key, its env var and the problem."""


class UpstreamSettings(_Section):
    """The model server Sentinel fronts.

    ``url`` is its base, e.g. ``http://vllm:8000``; the incoming path is appended unchanged.
    """

    url: str | None = None
    api_key: SecretStr | None = Field(default=None, description="Replaces the caller's Authorization header when set.")
    api_key_file: Path | None = None
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=300.0, gt=0, description="Longest silence between two chunks.")
    max_connections: int = Field(default=1024, ge=1)
    pool_timeout: float = Field(
        default=10.0, gt=0, description="Longest wait for a free connection when all are busy; then 504."
    )
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of the CA(s) that sign an https:// upstream's certificate (internal CA)."
    )
    client_cert: Path | None = Field(default=None, description="PEM client certificate for mutual TLS.")
    client_key: Path | None = Field(default=None, description="Its private key, unless in client_cert's file.")
    client_key_password: SecretStr | None = Field(
        default=None, description="Decrypts an encrypted client_key (env SENTINEL_UPSTREAM_CLIENT_KEY_PASSWORD)."
    )
    tls_verify: bool = Field(
        default=True, description="false: accept any certificate (tests only; logged as a warning at every start)."
    )
    keepalive_timeout: float = Field(
        default=4.0, gt=0, description="Idle upstream connections are closed after this; keep it below the server's."
    )
    warm_window: float = Field(
        default=60.0,
        ge=0,
        description="For this long after a burst, idle connections that expire (or the server closes after serving) "
        "are replaced in the background, up to the burst's peak, so the next burst does not connect on its requests' "
        "path; 0 turns it off.",
    )
    max_warm: int = Field(default=128, ge=0, description="At most this many connections are kept warm.")
    health_path: str = Field(default="/v1/models", description="Probed to export sentinel_upstream_up.")
    health_interval: float = Field(default=15.0, gt=0)
    ready_requires_up: bool = Field(
        default=True, description="/readyz fails while the probe finds the model server unreachable."
    )
    ready_fail_after: int = Field(
        default=3, ge=1, description="Failed probes in a row before the model server counts as unreachable."
    )
    provider: str = Field(
        default="auto",
        description="gen_ai.provider.name; 'auto' says openai for /v1 routes and ollama for /api routes.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        if "@" in urllib.parse.urlsplit(value).netloc:  # the URL itself is not echoed: it holds a secret
            raise ValueError("must not carry credentials (user:password@); set upstream.api_key or api_key_file")
        return value

    @model_validator(mode="after")
    def _key_from_file(self) -> UpstreamSettings:
        if self.api_key is None:
            self.api_key = _read_secret_file(self.api_key_file, "upstream.api_key")
        return self


class MetricsSettings(_Section):
    models: list[str] = Field(
        default_factory=list,
        description="Model names kept as label values; others fold into 'other'. Empty: the first max_models seen.",
    )
    max_models: int = Field(default=20, ge=1, le=500)
    token: SecretStr | None = Field(
        default=None,
        description="When set, /metrics, /docs and /openapi.json on the admin port need `Authorization: Bearer` "
        "with it (or an admin API token). Env SENTINEL_METRICS_TOKEN or a file: metrics.token_file.",
    )
    token_file: Path | None = None

    @model_validator(mode="after")
    def _token_from_file(self) -> MetricsSettings:
        if self.token is None:
            self.token = _read_secret_file(self.token_file, "metrics.token")
        return self


class TracingSettings(_Section):
    exporter: Literal["auto", "none", "otlp", "console"] = Field(
        default="auto", description="'auto' exports over OTLP when an endpoint is set, else nothing."
    )
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP http/protobuf traces URL, e.g. http://collector:4318/v1/traces."
    )
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    service_name: str = "sentinel"

    @property
    def exporting(self) -> bool:
        if self.exporter == "auto":
            return bool(self.otlp_endpoint or _otel_env("TRACES_ENDPOINT") or _otel_env("ENDPOINT"))
        return self.exporter != "none"

    def traces_endpoint(self) -> str:
        """The OTLP traces URL: ours, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT
        plus `/v1/traces` (as the OTLP exporter specification says), else the collector default."""
        if self.otlp_endpoint:
            return self.otlp_endpoint
        if traces := _otel_env("TRACES_ENDPOINT"):
            return traces
        if base := _otel_env("ENDPOINT"):
            return base.rstrip("/") + "/v1/traces"
        return "http://localhost:4318/v1/traces"

    def otlp_headers(self) -> dict[str, str]:
        """Headers from OTEL_EXPORTER_OTLP_(TRACES_)HEADERS (`key=value,key2=value2`), e.g. collector auth."""
        raw = _otel_env("TRACES_HEADERS") or _otel_env("HEADERS") or ""
        headers = {}
        for item in raw.split(","):
            key, _, value = item.partition("=")
            if key.strip() and value:
                headers[key.strip()] = urllib.parse.unquote(value.strip())
        return headers


def _otel_env(name: str) -> str | None:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{name}") or None


class SinkSettings(_Section):
    queue_size: int = Field(default=10_000, ge=1, description="Interactions a sink may fall behind by.")
    drain_timeout: float = Field(default=10.0, ge=0, description="At shutdown, how long sinks may take to drain.")
    linger: float = Field(
        default=0.05, ge=0, description="How long a sink waits for more records to join a batch; 0: write at once."
    )
    jsonl_path: Path | None = Field(default=None, description="Write each interaction as a JSON line here.")
    jsonl_include_content: bool = Field(
        default=False, description="Also write prompts and responses in plaintext (debugging only)."
    )


class ConnectionSettings(_Section):
    """Limits on client connections, applied to the proxy and the admin port alike (caps apart).

    A client that sends its request too slowly gets 408 and is closed; connections past a port's cap
    get 503 and are closed at once, so slow or idle clients cannot starve the others.
    """

    header_timeout: float = Field(
        default=10.0, gt=0, description="Seconds from connecting, or a request's first byte, to its last header."
    )
    body_timeout: float = Field(default=30.0, gt=0, description="Longest silence while a request body is read.")
    idle_timeout: float = Field(default=75.0, gt=0, description="A kept-alive connection idle this long is closed.")
    body_min_rate: float = Field(
        default=500.0,
        ge=0,
        description="Bytes per second a request body must average (body_timeout plus 1 s per this many bytes, "
        "never more than body_timeout of silence); 0: only the silence limit.",
    )
    write_timeout: float = Field(
        default=60.0, gt=0, description="Longest wait for a client to read its answer (send buffer full); then closed."
    )
    max_per_client: int = Field(
        default=0, ge=0, description="Open connections per client address and port (IPv6 by /64); 0: no cap."
    )
    max_proxy: int = Field(default=1000, ge=1, description="Open connections the proxy port accepts.")
    max_admin: int = Field(default=64, ge=1, description="Open connections the admin port accepts.")


class LoginSettings(_Section):
    """Failed admin API logins: counted per client address in fixed windows."""

    window: float = Field(
        default=60.0, gt=0, description="Seconds per window; the audit trail gets one record per client per window."
    )
    limit: int = Field(
        default=10, ge=1, description="Failed logins (no or a wrong token) a client may make per window; then 429."
    )
    max_clients: int = Field(
        default=10_000, ge=1, description="Clients counted apart per window; failures from more count as 'other'."
    )


class Settings(BaseSettings):
    """Everything Sentinel reads at start. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        validate_default=True,
    )

    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=9464, ge=0, le=65535)
    data_dir: Path = Path("sentinel-data")
    instance_id: str | None = Field(
        default=None, description="This instance's name in records and chains; default: kept in the data dir."
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="Larger requests get 413.")
    max_capture_bytes: int = Field(
        default=16 * 1024 * 1024, ge=0, description="Bytes of each body kept for the record; the rest is only counted."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False
    key_file: Path = Field(
        default=Path("keys/kek.key"),
        description="The key-encryption key file (env SENTINEL_KEY_FILE). Keep it out of backups and Elasticsearch.",
    )
    admin_tokens_file: Path | None = Field(
        default=None,
        description="YAML/JSON list of admin API tokens: {name, role: auditor|operator, sha256} (env "
        "SENTINEL_ADMIN_TOKENS_FILE).",
    )
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings)
    logins: LoginSettings = Field(default_factory=LoginSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    elasticsearch: ElasticsearchSettings = Field(default_factory=ElasticsearchSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    sinks: SinkSettings = Field(default_factory=SinkSettings)
    gpu: GpuSettings = Field(default_factory=GpuSettings)
    grafana: GrafanaSettings = Field(default_factory=GrafanaSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    report: ReportSettings = Field(default_factory=ReportSettings)

    yaml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls.yaml_file))
        return tuple(sources)

    def resolve_path(self, path: Path) -> Path:
        """A relative path in the settings is relative to the data directory."""
        return path if path.is_absolute() else self.data_dir / path


def env_name(loc: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + "_".join(str(part) for part in loc).upper()


def _redacted(value: Any) -> Any:
    """A bad value as an error message may show it: without the credentials of a URL."""
    return _URL_CREDENTIALS.sub(r"\1***@", value) if isinstance(value, str) else value


_URL_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(part) for part in loc) or "(settings)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        elif (
            "input" in item
            and not isinstance(item["input"], dict)
            and "key" not in key
            and repr(item["input"]) not in message
        ):
            message += f" (got {_redacted(item['input'])!r})"
        lines.append(f"  {key} (env {env_name(loc)}): {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Read settings once. ``overrides`` (from CLI flags) use the nested shape, e.g. ``upstream={"url": ...}``.

    Raises :class:`ConfigError` naming every bad key.
    """
    path = config_file or os.environ.get(ENV_PREFIX + "CONFIG")
    yaml_file: Path | None = None
    if path:
        yaml_file = Path(path)
        try:
            loaded = yaml.safe_load(yaml_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {yaml_file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {yaml_file} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {yaml_file} must hold a mapping of settings")
    cleaned = {k: v for k, v in overrides.items() if v is not None}
    settings_cls: type[Settings] = type("Settings", (Settings,), {"yaml_file": yaml_file})
    try:
        return settings_cls(**cleaned)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
