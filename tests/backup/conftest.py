"""Backup fixtures: a real SeaweedFS for the session, a backup key, and settings for a throwaway data dir."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.backup.jobs import BackupContext
from sentinel.backup.keys import create_key_file
from sentinel.config import load_settings
from tests.support.seaweed import Seaweed


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    (path / "keys").mkdir(parents=True)
    create_key_file(path / "keys" / "backup.key")
    (path / "keys" / "kek.key").write_text("the key-encryption key\n")
    os.chmod(path / "keys" / "kek.key", 0o600)
    (path / "keys" / "audit-data-keys.json").write_text('{"k1": "wrapped"}\n')
    return path


MakeContext = Callable[..., BackupContext]


class FakeClock:
    """A wall clock (epoch seconds) that stands still until the test moves it."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def make_context(data_dir: Path) -> MakeContext:
    def make(
        plans: dict[str, Any] | None = None, targets: dict[str, Any] | None = None, **backup: Any
    ) -> BackupContext:
        section: dict[str, Any] = {"lease_ttl": 30, **backup}
        if plans is not None:
            section["plans"] = plans
        if targets is not None:
            section["targets"] = targets
        return BackupContext(load_settings(None, data_dir=data_dir, backup=section))

    return make


def write_model(root: Path, files: dict[str, int], seed: int = 1) -> None:
    """Files of pseudo-random (incompressible, like weights) bytes, deterministic per name and seed."""
    import random

    for name, size in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(f"{seed}:{name}")
        path.write_bytes(rng.randbytes(size))


SMALL = {"chunk_min_size": 16 * 1024, "chunk_avg_size": 64 * 1024, "chunk_max_size": 256 * 1024}
"""Chunk sizes that make a few hundred KB of model many chunks (the attack tests' repositories)."""


@pytest.fixture
def attacker(seaweed: Seaweed) -> Iterator[Any]:
    client = seaweed.client()
    yield client
    client.close()
