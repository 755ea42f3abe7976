"""The one typed settings object: read once at start from YAML, env (`SENTINEL_*`) and CLI flags.

Precedence, highest first: CLI flags, environment, the YAML file (`--config` / `SENTINEL_CONFIG`),
defaults. Nested sections map to env names with one underscore: `upstream.read_timeout` is
`SENTINEL_UPSTREAM_READ_TIMEOUT`. Secrets are read from env or from a `*_file`, never from flags.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
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

from sentinel.backup.settings import BackupSettings

ENV_PREFIX = "SENTINEL_"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the key, its env var and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _read_secret_file(path: Path | None, key: str) -> SecretStr | None:
    if path is None:
        return None
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {key} file {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{key} file {path} is empty")
    return SecretStr(value)


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
    keepalive_timeout: float = Field(
        default=4.0, gt=0, description="Idle upstream connections are closed after this; keep it below the server's."
    )
    health_path: str = Field(default="/v1/models", description="Probed to export sentinel_upstream_up.")
    health_interval: float = Field(default=15.0, gt=0)
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
    jsonl_path: Path | None = Field(default=None, description="Write each interaction as a JSON line here.")
    jsonl_include_content: bool = Field(
        default=False, description="Also write prompts and responses in plaintext (debugging only)."
    )


class AuditSettings(_Section):
    """The audit trail. Paths are relative to the data directory."""

    mode: Literal["best_effort", "strict", "off"] = Field(
        default="best_effort",
        description="strict: record durably before forwarding and before the last byte (HIPAA, fail closed); "
        "best_effort: record after the fact, count losses; off: no audit trail.",
    )
    store: Literal["auto", "embedded", "elasticsearch"] = Field(
        default="auto", description="auto: Elasticsearch when elasticsearch.url is set, else the embedded store."
    )
    spool_path: Path = Path("audit/spool.db")
    store_path: Path = Path("audit/store.db")
    checkpoint_every: int = Field(default=1000, ge=1, description="Sign a checkpoint every N records ...")
    checkpoint_interval: float = Field(default=300.0, gt=0, description="... or every M seconds, whichever first.")
    spool_retention_hours: float = Field(default=24.0, ge=0, description="Keep shipped records this long locally.")


class ElasticsearchSettings(_Section):
    url: str | None = Field(default=None, description="e.g. https://es:9200; several comma-separated.")
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_certs: Path | None = None
    verify_certs: bool = True
    index_prefix: str = "sentinel-audit"
    retention_days: int = Field(default=2190, ge=1, description="6 years: HIPAA 164.316(b)(2) documentation retention.")
    shards: int = Field(default=1, ge=1)
    replicas: int = Field(default=1, ge=0)
    request_timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _secrets_from_files(self) -> ElasticsearchSettings:
        if self.api_key is None:
            self.api_key = _read_secret_file(self.api_key_file, "elasticsearch.api_key")
        if self.password is None:
            self.password = _read_secret_file(self.password_file, "elasticsearch.password")
        return self


GpuSource = Literal["auto", "nvml", "vllm", "sglang", "llamacpp", "ollama", "dcgm"]


class GpuSettings(_Section):
    """Where GPU memory and KV-cache usage are read from (exported as ``sentinel_gpu_*``).

    ``sources: [auto]`` uses NVML when a GPU and driver are present, detects the model server behind
    ``upstream.url`` (vLLM, SGLang, llama.cpp ``/metrics`` or Ollama ``/api/ps``) and reads a DCGM
    exporter when ``dcgm_url`` is set. An explicit list, e.g. ``[nvml, vllm]``, reports every listed
    source, as absent (``sentinel_gpu_source_up 0``) while it cannot be read. ``[]`` turns GPU metrics off.
    """

    sources: list[GpuSource] = Field(default_factory=lambda: list[GpuSource](["auto"]))
    metrics_url: str | None = Field(
        default=None, description="The model server's Prometheus endpoint; default: upstream.url + /metrics."
    )
    ollama_url: str | None = Field(default=None, description="Ollama's base URL for /api/ps; default: upstream.url.")
    dcgm_url: str | None = Field(
        default=None, description="A DCGM exporter's metrics URL, e.g. http://dcgm-exporter:9400/metrics."
    )
    interval: float = Field(default=15.0, gt=0, description="How often HTTP sources are polled.")
    timeout: float = Field(default=5.0, gt=0, description="How long one poll may take.")

    @field_validator("metrics_url", "ollama_url", "dcgm_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():  # an empty env var (compose `${VAR:-}`) means unset
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[GpuSource]) -> list[GpuSource]:
        if "auto" in value and len(value) > 1:
            raise ValueError("'auto' cannot be combined with explicit sources")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _dcgm_needs_url(self) -> GpuSettings:
        if "dcgm" in self.sources and self.dcgm_url is None:
            raise ValueError("source 'dcgm' needs gpu.dcgm_url (env SENTINEL_GPU_DCGM_URL)")
        return self


class GrafanaSettings(_Section):
    """The Grafana that `sentinel grafana provision` sets up: datasources, a folder, dashboards, alert rules.

    Credentials come from env or files only: a service account token (``token`` / ``token_file``) or
    a user and password (``user`` with ``password`` / ``password_file``).
    """

    url: str = "http://127.0.0.1:3000"
    token: SecretStr | None = None
    token_file: Path | None = None
    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    folder_uid: str = "sentinel"
    folder_title: str = "Sentinel"
    prometheus_url: str = Field(
        default="http://prometheus:9090", description="Prometheus as Grafana's server reaches it."
    )
    elasticsearch_url: str | None = Field(
        default=None, description="Elasticsearch as Grafana reaches it; unset: no Elasticsearch datasource."
    )
    elasticsearch_index: str = Field(default="sentinel-audit", description="Index pattern of the audit records.")
    elasticsearch_time_field: str = "@timestamp"
    elasticsearch_user: str | None = Field(default=None, description="Basic auth user Grafana uses for Elasticsearch.")
    elasticsearch_password: SecretStr | None = None
    elasticsearch_password_file: Path | None = None
    alert_rules: bool = Field(default=False, description="Also create Grafana-managed copies of the alert rules.")
    timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _secrets_from_files(self) -> GrafanaSettings:
        if self.token is None:
            self.token = _read_secret_file(self.token_file, "grafana.token")
        if self.password is None:
            self.password = _read_secret_file(self.password_file, "grafana.password")
        if self.elasticsearch_password is None:
            self.elasticsearch_password = _read_secret_file(
                self.elasticsearch_password_file, "grafana.elasticsearch_password"
            )
        return self


class PolicySettings(_Section):
    """Response policies (docs/policy.md): off unless ``file`` names a policy YAML file."""

    file: Path | None = Field(
        default=None, description="Policy YAML (relative to the working directory); hot-reloaded on change."
    )
    reload_interval: float = Field(default=2.0, ge=0, description="Seconds between checks of the file; 0: never.")
    history_file: Path = Field(
        default=Path("policy-history.jsonl"), description="Every policy change (who, when, diff), in the data dir."
    )
    moderation_token: SecretStr | None = Field(
        default=None, description="Bearer token Dify sends to the moderation endpoint; unset: endpoint off."
    )
    moderation_token_file: Path | None = None
    max_rule_labels: int = Field(default=50, ge=1, le=1000, description="Rule names kept as metric labels.")

    @model_validator(mode="after")
    def _token_from_file(self) -> PolicySettings:
        if self.moderation_token is None:
            self.moderation_token = _read_secret_file(self.moderation_token_file, "policy.moderation_token")
        return self


class ReportSettings(_Section):
    """Compliance reports (`sentinel report`, docs/report.md): the rules that flag anomalies and how times read.

    Business hours are local to ``timezone``; a caller's hour outside them with at least
    ``off_hours_min`` calls is flagged. An hour with more than ``max(spike_min, spike_factor x`` the
    caller's 90th-percentile hourly volume over the period``)`` calls is a volume spike. A
    ``error_burst_window`` with at least ``error_burst_min`` failures making up at least
    ``error_burst_ratio`` of its calls is an error burst.
    """

    timezone: str = Field(default="UTC", description="IANA zone for business hours and the report's local times.")
    business_hours: tuple[int, int] = Field(default=(7, 19), description="[start, end) hour of the working day.")
    business_days: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], description="Working weekdays, Monday = 0."
    )
    off_hours_min: int = Field(default=20, ge=1, description="Calls by one caller in one off-hours hour to flag it.")
    spike_factor: float = Field(default=5.0, gt=1)
    spike_min: int = Field(default=50, ge=1)
    error_burst_window: int = Field(default=300, ge=60, le=3600, description="Seconds.")
    error_burst_min: int = Field(default=10, ge=1)
    error_burst_ratio: float = Field(default=0.5, gt=0, le=1)
    auth_failures_high: int = Field(default=5, ge=1, description="Failed admin logins from one client: high severity.")
    max_listed: int = Field(default=1000, ge=10, description="Rows listed per table (access events, exceptions).")
    verify_window: int = Field(default=50_000, ge=1000, description="Records verified per window (bounds memory).")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from None
        return value

    @field_validator("business_hours")
    @classmethod
    def _hours(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] < value[1] <= 24:
            raise ValueError("business_hours must be [start, end) with 0 <= start < end <= 24")
        return value

    @field_validator("business_days")
    @classmethod
    def _days(cls, value: list[int]) -> list[int]:
        if any(not 0 <= day <= 6 for day in value):
            raise ValueError("business_days are weekday numbers, Monday = 0 to Sunday = 6")
        return sorted(set(value))


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
            message += f" (got {item['input']!r})"
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
