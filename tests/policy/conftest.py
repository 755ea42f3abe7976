"""Booting Sentinel with a policy file written by the test."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Running

StartWithPolicy = Callable[..., Running]


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    return tmp_path / "policy.yaml"


@pytest.fixture
def start_with_policy(start_sentinel: Callable[..., Running], policy_path: Path) -> StartWithPolicy:
    def start(upstream_url: str, policy: str, **policy_settings: Any) -> Running:
        policy_path.write_text(textwrap.dedent(policy))
        settings = {"file": policy_path, "reload_interval": 0, **policy_settings}
        return start_sentinel(upstream_url, policy=settings)

    return start
