"""The `audit` and `elasticsearch` settings sections (env `SENTINEL_AUDIT_*`, `SENTINEL_ELASTICSEARCH_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from sentinel.cron import check_cron
from sentinel.sections import Section as _Section
from sentinel.sections import secret_from_file as _read_secret_file


class ObjectLockAnchorSettings(_Section):
    """Where checkpoints are anchored: a bucket created with Object Lock, ideally in another account.

    Credentials: both keys (or their `*_file`s), or neither, and boto3 finds them in its usual places
    (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a profile, an instance role). Give these credentials
    only the write-once permissions in docs/anchors.md.
    """

    endpoint_url: str | None = Field(default=None, description="e.g. http://minio:9000; unset for AWS.")
    bucket: str = Field(min_length=3)
    prefix: str = Field(default="", description="Key prefix, so several logs or installations can share a bucket.")
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    access_key_id_file: Path | None = None
    secret_access_key: SecretStr | None = None
    secret_access_key_file: Path | None = None
    retention_days: int = Field(
        default=2190,
        ge=1,
        le=36500,
        description="COMPLIANCE retention of each checkpoint: nobody, the bucket's root account included, can "
        "delete or shorten it before then. Default: six years (HIPAA's retention of documentation).",
    )
    max_attempts: int = Field(default=5, ge=1, le=20, description="Tries per request (botocore standard mode).")
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    verify_tls: bool = True

    @model_validator(mode="after")
    def _credentials(self) -> ObjectLockAnchorSettings:
        if self.access_key_id is None:
            self.access_key_id = _read_secret_file(self.access_key_id_file, "access_key_id")
        if self.secret_access_key is None:
            self.secret_access_key = _read_secret_file(self.secret_access_key_file, "secret_access_key")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "set both access_key_id and secret_access_key (or their *_file), or neither to use boto3's own "
                "lookup (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, an instance role)"
            )
        return self


class TimestampSettings(_Section):
    """An RFC 3161 time-stamping authority: each checkpoint's note is stamped before it is anchored."""

    url: str = Field(description="The TSA's URL (http or https), e.g. http://timestamp.example/tsr.")
    certificates: list[Path] = Field(
        min_length=1, description="PEM files with the TSA's root (and intermediate) certificates, to verify tokens."
    )
    timeout: float = Field(default=10.0, gt=0)


class Pkcs11SignerSettings(_Section):
    """An Ed25519 signing key in a PKCS#11 token (an HSM), used for checkpoints and reports instead of a key
    wrapped under the KEK (docs/audit.md, "Signing in a hardware security module"). The PIN comes from
    `pin_file` (or `pin`, e.g. in `SENTINEL_AUDIT_SIGNER` as JSON), never from the command line."""

    module: Path = Field(description="The token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so.")
    token_label: str = Field(min_length=1)
    key_label: str = Field(min_length=1, description="CKA_LABEL of the Ed25519 key pair (private and public).")
    pin: SecretStr | None = None
    pin_file: Path | None = None

    @model_validator(mode="after")
    def _pin(self) -> Pkcs11SignerSettings:
        if self.pin is None:
            self.pin = _read_secret_file(self.pin_file, "pin")
        return self


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
    log_origin: str = Field(
        default="sentinel/audit",
        description="Checkpoints name each chain's Merkle tree `<log_origin>/<instance>` (the C2SP origin line and "
        "the signing key's name in verifier keys): make it unique to the deployment, e.g. `audit.hospital.example`.",
    )
    spool_max_bytes: int | None = Field(
        default=None,
        ge=65536,
        description="Largest the spool may grow (SQLite max_page_count): past it records cannot be written, so "
        "strict mode refuses calls (best_effort counts them lost) and /readyz fails. null: the disk is the bound.",
    )
    spool_min_free_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="In strict mode /readyz fails while the spool's filesystem has less free space than this.",
    )
    spool_retention_hours: float = Field(default=24.0, ge=0, description="Keep shipped records this long locally.")
    anchor: ObjectLockAnchorSettings | None = Field(
        default=None,
        description="An S3 bucket with Object Lock where every signed checkpoint is published (docs/anchors.md).",
    )
    timestamp: TimestampSettings | None = Field(
        default=None, description="An RFC 3161 time-stamping authority for every anchored checkpoint."
    )
    signer: Pkcs11SignerSettings | None = Field(
        default=None,
        description="Sign checkpoints and reports with a key held in a PKCS#11 token (HSM) instead of one wrapped "
        "under the KEK beside the data.",
    )
    anchor_lag_max: float = Field(
        default=900.0,
        gt=0,
        description="Strict mode refuses traffic (and /metrics shows it) while the oldest checkpoint not yet "
        "anchored is older than this many seconds.",
    )
    verify_processes: int = Field(
        default=0, ge=0, le=64, description="Worker processes that read and hash pages when verifying; 0: one per CPU."
    )
    verify_page: int = Field(
        default=50_000, ge=1000, description="Sequence numbers verified per page (bounds memory: ~25 MB a page)."
    )
    verify_schedule: str | None = Field(
        default="7 * * * *",
        description="Cron time of the incremental check: the records written since the last check, which must "
        "link to the last verified hash, and every checkpoint signature. null: off.",
    )
    verify_full_schedule: str | None = Field(
        default="40 3 * * sun",
        description="Cron time of the full check: every chain from its first record. null: off.",
    )
    verify_in_serve: bool = Field(
        default=True, description="`sentinel serve` runs the scheduled checks; false: `sentinel scheduler` does."
    )
    pinned_keys: Path | None = Field(
        default=None,
        description="The pin file (`sentinel keys show --public`) that reports, restore drills and `audit verify` "
        "trust checkpoint signatures by (env SENTINEL_AUDIT_PINNED_KEYS); a signing key in the store that it does "
        "not pin is a finding. null: trust the keys stored beside the records, and say so.",
    )
    verify_state_file: Path = Field(
        default=Path("audit/verify-state.json"),
        description="The last verified head of each chain and the checks' outcomes, read by /metrics.",
    )

    @field_validator("verify_schedule", "verify_full_schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    def processes(self) -> int:
        """Worker processes for verification: `verify_processes`, or one per CPU (at most 8)."""
        import os

        return self.verify_processes or min(8, os.cpu_count() or 1)


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
