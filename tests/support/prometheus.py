"""`running_prometheus`: the real Prometheus server (Debian's `prometheus` binary) on 127.0.0.1.

Started with an explicit config (one scrape job, 1 s scrape and rule evaluation interval, the given
rule files), temporary storage and a free port; `query` uses the documented HTTP API
(`GET /api/v1/query`, `GET /api/v1/rules`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.support.upstream import free_port


@dataclass
class Prometheus:
    url: str
    log: Path

    def query(self, expr: str) -> dict[str, Any]:
        """The API's answer as JSON: `status` "success" with `data.result`, or "error" with `error`."""
        response = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        answer: dict[str, Any] = response.json()
        return answer

    def vector(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.vector(expr)
        return float(result[0]["value"][1]) if result else None

    def rules(self) -> list[dict[str, Any]]:
        groups = requests.get(self.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def wait_for(self, expr: str, predicate: Any = bool, timeout: float = 60.0) -> float | None:
        """Poll `expr` until `predicate(value)` holds (value is None while the query returns nothing)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.value(expr)
            if value is not None and predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} = {value} after {timeout} s; log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.25)


@contextmanager
def running_prometheus(
    workdir: Path,
    target: str,
    rule_files: Sequence[Path],
    job: str = "sentinel",
    *,
    scrape: dict[str, Any] | None = None,
    extra_jobs: Sequence[dict[str, Any]] = (),
) -> Iterator[Prometheus]:
    """Scrape `target` (host:port serving /metrics) every second with `rule_files` loaded; `scrape` adds
    to the job's scrape config (e.g. `authorization`), `extra_jobs` are more scrape configs."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: run scripts/install-system-deps"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                "rule_files": [str(p) for p in rule_files],
                "scrape_configs": [
                    {
                        "job_name": job,
                        "metrics_path": "/metrics",
                        "static_configs": [{"targets": [target]}],
                        **(scrape or {}),
                    },
                    *extra_jobs,
                ],
            }
        )
    )
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(prometheus.url + "/-/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready in 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
