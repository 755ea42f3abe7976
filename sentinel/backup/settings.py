"""The `backup` settings section: targets, plans (sources, schedule, retention, drill) and key file.

Env names follow the rest of Sentinel: `SENTINEL_BACKUP_<KEY>` (e.g. `SENTINEL_BACKUP_KEY_FILE`);
plans and targets are nested mappings, easiest in YAML or as JSON in `SENTINEL_BACKUP_PLANS` /
`SENTINEL_BACKUP_TARGETS`. Relative paths are relative to `data_dir`. Secrets (S3 keys, database and
Elasticsearch passwords) come from the environment or a `*_file`, never from the YAML in clear if
avoidable, and never from flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from sentinel.cron import check_cron
from sentinel.sections import Section as _Section
from sentinel.sections import secret_from_file

DEFAULT_SCHEDULE = "0 2 * * *"
DEFAULT_DRILL_SCHEDULE = "0 4 * * sun"  # names: APScheduler 3 numbers weekdays from Monday = 0


def _secret(value: SecretStr | None, path: Path | None, key: str) -> SecretStr | None:
    return value if value is not None else secret_from_file(path, key)


class TargetSettings(_Section):
    """Where a plan's repository lives: a local directory (the embedded default) or an S3 bucket."""

    kind: Literal["local", "s3"] = "local"
    path: Path = Field(default=Path("backups"), description="local: the repository directory.")
    endpoint_url: str | None = Field(default=None, description="s3: e.g. http://minio:9000; unset for AWS.")
    bucket: str | None = None
    prefix: str = Field(default="", description="s3: key prefix, so several repositories can share a bucket.")
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    access_key_id_file: Path | None = None
    secret_access_key: SecretStr | None = None
    secret_access_key_file: Path | None = None
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = Field(
        default=None, description="s3: retention set on every object written (the bucket needs Object Lock)."
    )
    object_lock_days: int = Field(default=30, ge=1, le=36500)
    max_attempts: int = Field(default=5, ge=1, le=20, description="s3: tries per request (botocore standard mode).")
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    multipart_threshold: int = Field(
        default=64 * 1024 * 1024,
        ge=17 * 1024 * 1024,
        description="s3: objects this large go up in parts. Above the largest sealed chunk (16 MiB and a few "
        "bytes), so every chunk is one PUT whose version id the manifest records.",
    )
    multipart_chunksize: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    verify_tls: bool = True

    @model_validator(mode="after")
    def _complete(self) -> TargetSettings:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("an s3 target needs a bucket")
        self.access_key_id = _secret(self.access_key_id, self.access_key_id_file, "access_key_id")
        self.secret_access_key = _secret(self.secret_access_key, self.secret_access_key_file, "secret_access_key")
        return self


class _SourceBase(_Section):
    name: str | None = Field(default=None, description="Unique within the plan; default: the kind.")
    missing_ok: bool = Field(default=False, description="Back up nothing (instead of failing) if it does not exist.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value.startswith(".")):
            raise ValueError(f"a source name must be a plain non-empty name, got {value!r}")
        return value


class PathSourceSettings(_SourceBase):
    """Files and directories (model weights, arbitrary paths), walked without following symlinks."""

    kind: Literal["path"]
    path: Path
    exclude: list[str] = Field(default_factory=list, description="Glob patterns on paths relative to `path`.")


class SqliteSourceSettings(_SourceBase):
    """A SQLite database (e.g. the embedded audit store), copied online with SQLite's backup API."""

    kind: Literal["sqlite"]
    path: Path = Path("audit/store.db")
    newest_record_sql: str | None = Field(
        default=None,
        description="Query returning the newest record's time (epoch seconds or ISO 8601); drills use it for RPO.",
    )


class KeysSourceSettings(_SourceBase):
    """Sentinel's config file and wrapped key material (`<data_dir>/keys`), never the KEK or the backup key."""

    kind: Literal["keys"]
    path: Path = Path("keys")
    include_config: bool = Field(default=True, description="Also back up the YAML settings file in use.")


class PostgresSourceSettings(_SourceBase):
    """A PostgreSQL database streamed from `pg_dump` (plain SQL, so unchanged rows deduplicate)."""

    kind: Literal["postgres"]
    dsn: str = Field(description="libpq connection string or URI without the password, e.g. postgresql://dify@db/dify")
    password: SecretStr | None = None
    password_file: Path | None = None
    pg_dump: str = "pg_dump"
    extra_args: list[str] = Field(default_factory=list, description="More pg_dump flags, e.g. ['--exclude-table=x'].")

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str) -> str:
        netloc = value.split("://", 1)[1].split("/", 1)[0] if "://" in value else ""
        if "password=" in value.lower() or ("@" in netloc and ":" in netloc.split("@", 1)[0]):
            raise ValueError("put the password in password / password_file (or PGPASSWORD), not in the dsn")
        return value

    @model_validator(mode="after")
    def _password(self) -> PostgresSourceSettings:
        self.password = _secret(self.password, self.password_file, "password")
        return self


class ElasticsearchSourceSettings(_SourceBase):
    """Elasticsearch indices exported through a point in time and `search_after` (consistent, unbounded size)."""

    kind: Literal["elasticsearch"]
    url: str
    indices: list[str] = Field(min_length=1, description="Index names or patterns, e.g. ['sentinel-audit-*'].")
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    page_size: int = Field(default=1000, ge=1, le=10000)
    keep_alive: str = "5m"
    timestamp_field: str | None = Field(default=None, description="Field holding each record's time, for RPO.")
    verify_tls: bool = True

    @model_validator(mode="after")
    def _secrets(self) -> ElasticsearchSourceSettings:
        self.api_key = _secret(self.api_key, self.api_key_file, "api_key")
        self.password = _secret(self.password, self.password_file, "password")
        return self


SourceSettings = Annotated[
    PathSourceSettings
    | SqliteSourceSettings
    | KeysSourceSettings
    | PostgresSourceSettings
    | ElasticsearchSourceSettings,
    Field(discriminator="kind"),
]


class RetentionSettings(_Section):
    """Which snapshots `backup prune` keeps: the newest `keep_last`, plus the newest of each of the last
    N days, ISO weeks and months that have a snapshot (restic's `forget --keep-*` semantics)."""

    keep_last: int = Field(default=1, ge=1)
    keep_daily: int = Field(default=7, ge=0)
    keep_weekly: int = Field(default=4, ge=0)
    keep_monthly: int = Field(default=12, ge=0)


class DrillSettings(_Section):
    schedule: str | None = Field(default=DEFAULT_DRILL_SCHEDULE, description="Crontab; null: only on demand.")
    rto_target: float = Field(default=3600.0, gt=0, description="Seconds from drill start to verified restore.")
    rpo_target: float = Field(default=26 * 3600.0, gt=0, description="Seconds of data one may lose (daily + slack).")
    scratch_dir: Path = Field(default=Path("backup/drill-scratch"), description="Isolated restore area.")
    report_dir: Path = Path("backup/drills")
    keep_scratch: bool = False
    checks: list[str] = Field(
        default_factory=list,
        description="Extra checks, 'module:factory' import paths; factory(plan_name, settings) -> DrillCheck.",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)


class PlanSettings(_Section):
    sources: list[SourceSettings] = Field(min_length=1)
    target: str = "default"
    schedule: str | None = Field(default=DEFAULT_SCHEDULE, description="Crontab; null: only on demand.")
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    drill: DrillSettings = Field(default_factory=DrillSettings)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @model_validator(mode="after")
    def _unique_names(self) -> PlanSettings:
        seen: set[str] = set()
        for source in self.sources:
            name = source.name or source.kind
            if name in seen:
                raise ValueError(f"two sources are named {name!r}; give each a distinct `name`")
            seen.add(name)
        return self


def _default_plans() -> dict[str, PlanSettings]:
    return {
        "default": PlanSettings(
            sources=[
                SqliteSourceSettings(kind="sqlite", name="audit", missing_ok=True),
                KeysSourceSettings(kind="keys"),
            ],
            # Restored audit stores must re-verify and decrypt (sentinel/audit/drill.py).
            drill=DrillSettings(checks=["sentinel.audit.drill:audit_trail_check"]),
        )
    }


class BackupSettings(_Section):
    """Scheduled, encrypted, deduplicated backups. See docs/backup.md."""

    key_file: Path = Field(
        default=Path("keys/backup.key"),
        description="The backup key (create with `sentinel backup init-key`); never stored with the backups.",
    )
    targets: dict[str, TargetSettings] = Field(default_factory=lambda: {"default": TargetSettings()})
    plans: dict[str, PlanSettings] = Field(default_factory=_default_plans)
    timezone: str | None = Field(default=None, description="Timezone of the cron schedules; default: local time.")
    misfire_grace_time: int = Field(default=3600, ge=1, description="A run missed by less than this still runs.")
    schedule_in_serve: bool = Field(default=False, description="`sentinel serve` also runs the backup scheduler.")
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU niceness of scheduled runs, so a backup on the proxy's host yields the CPU to it.",
    )
    state_file: Path = Field(default=Path("backup/state.db"), description="Run outcomes, read by /metrics.")
    lease_ttl: float = Field(default=300.0, ge=5, description="A crashed run's lock expires after this.")
    upload_concurrency: int = Field(default=8, ge=1, le=64)
    # Chunks are objects of their own in the target: 4 MiB on average keeps the per-request cost of
    # S3 small next to the bytes (1 MiB chunks reached 72-77% of plain boto3's upload rate and 65% of
    # its download rate, 4 MiB ~80%; docs/benchmarks.md), and is still fine-grained for dedup.
    chunk_min_size: int = Field(default=1024 * 1024, ge=64, le=1024 * 1024)
    chunk_avg_size: int = Field(default=4 * 1024 * 1024, ge=256, le=4 * 1024 * 1024)
    chunk_max_size: int = Field(default=16 * 1024 * 1024, ge=1024, le=16 * 1024 * 1024)

    @model_validator(mode="after")
    def _consistent(self) -> BackupSettings:
        for name, plan in self.plans.items():
            if plan.target not in self.targets:
                raise ValueError(f"plan {name!r} names target {plan.target!r}, which is not in backup.targets")
        if not self.chunk_min_size <= self.chunk_avg_size <= self.chunk_max_size:
            raise ValueError("chunk sizes must satisfy chunk_min_size <= chunk_avg_size <= chunk_max_size")
        return self
