"""What every settings section shares: unknown keys are errors, and secrets may come from files."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def secret_from_file(path: Path | None, key: str) -> SecretStr | None:
    """The secret in `path` (stripped), None without a path; a clear error naming `key` otherwise."""
    if path is None:
        return None
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {key} file {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{key} file {path} is empty")
    return SecretStr(value)
