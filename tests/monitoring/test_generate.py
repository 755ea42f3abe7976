"""The committed rules, dashboards and dashboard docs are exactly what the Python source generates."""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from sentinel.cli import main
from sentinel.monitoring.generate import artefacts, generate

ROOT = Path(__file__).resolve().parents[2]


def test_committed_artefacts_match_a_fresh_generation(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert sorted(map(str, written)) == sorted(map(str, artefacts()))
    for relative in written:
        fresh = (tmp_path / relative).read_text()
        committed = (ROOT / relative).read_text() if (ROOT / relative).exists() else ""
        diff = "".join(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True), str(relative), "fresh"))
        assert not diff, f"{relative} is out of date; run `make generate`:\n{diff[:3000]}"
    committed_dashboards = sorted(p.name for p in (ROOT / "dashboards").glob("*.json"))
    assert committed_dashboards == sorted(p.name for p in (tmp_path / "dashboards").glob("*.json"))


def test_generation_is_deterministic() -> None:
    assert artefacts() == artefacts()


def test_cli_check_reports_stale_files(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["generate", "--root", str(tmp_path)]).exit_code == 0
    assert runner.invoke(main, ["generate", "--root", str(tmp_path), "--check"]).exit_code == 0
    rules = tmp_path / "rules" / "sentinel.rules.yml"
    rules.write_text(rules.read_text().replace("> 0.5", "> 0.6"))
    stale = runner.invoke(main, ["generate", "--root", str(tmp_path), "--check"])
    assert stale.exit_code == 1 and "out of date: rules/sentinel.rules.yml" in stale.output
    assert "> 0.6" in rules.read_text()  # --check writes nothing


def test_runbook_base_makes_absolute_links(tmp_path: Path) -> None:
    generate(tmp_path, runbook_base="https://git.example.org/ops/sentinel/blob/main/")
    rules = (tmp_path / "rules" / "sentinel.rules.yml").read_text()
    assert "runbook_url: https://git.example.org/ops/sentinel/blob/main/docs/runbook.md#sentinelupstreamdown" in rules
    overview = json.loads((tmp_path / "dashboards" / "sentinel-overview.json").read_text())
    urls = [link["url"] for panel in overview["panels"] for link in panel.get("links", [])]
    assert urls and all(u.startswith("https://git.example.org/ops/sentinel/blob/main/docs/runbook.md#") for u in urls)


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sentinel.monitoring", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rules" / "sentinel.rules.yml").exists()
