"""The `grafana` settings section (env `SENTINEL_GRAFANA_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from sentinel.sections import Section as _Section
from sentinel.sections import secret_from_file as _read_secret_file


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
