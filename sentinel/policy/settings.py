"""The `policy` settings section (env `SENTINEL_POLICY_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from sentinel.sections import Section as _Section
from sentinel.sections import secret_from_file as _read_secret_file


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
