"""Fixtures the audit tests share."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TLOGCHECK = ROOT / "tests" / "interop" / "tlogcheck"
GOCODE = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put Go sources


@pytest.fixture(scope="session")
def tlogcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/interop/tlogcheck built with Debian's Go and x/mod, offline, once per session."""
    go = shutil.which("go")
    if go is None or not (GOCODE / "src/golang.org/x/mod/sumdb/tlog").is_dir():
        pytest.fail("the interop test needs Go and golang.org/x/mod: run scripts/install-system-deps")
    out = tmp_path_factory.mktemp("tlogcheck")
    binary = out / "tlogcheck"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOPATH": f"{out / 'gopath'}:{GOCODE}",
        "GOCACHE": str(out / "cache"),
        "CGO_ENABLED": "0",
    }
    build = subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=TLOGCHECK, env=env, capture_output=True, text=True, timeout=300
    )
    assert build.returncode == 0, f"go build failed:\n{build.stderr}"
    return binary
