"""The alert rules: valid for promtool, every alert proven to fire and to stay quiet, complete
annotations, runbook anchors that exist, and dashboard thresholds equal to the alert thresholds.

promtool is the real one from Debian's `prometheus` package (installed by scripts/install-system-deps).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from sentinel.monitoring import thresholds as t
from sentinel.monitoring.rules import ALERTS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules" / "sentinel.rules.yml"
RULE_TESTS = sorted((ROOT / "rules" / "tests").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in yaml.safe_load(RULES.read_text())['groups'])} rules found" in (
        result.stdout
    )


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule file with the TTFT warning moved to 0.8 s must fail the unit tests written for 0.5 s."""
    broken = tmp_path / "sentinel.rules.yml"
    broken.write_text(RULES.read_text().replace("p95_5m > 0.5\n", "p95_5m > 0.8\n", 1))
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "latency.yml").write_text((ROOT / "rules" / "tests" / "latency.yml").read_text())
    result = promtool("test", "rules", str(tests / "latency.yml"))
    assert result.returncode != 0 and "SentinelTimeToFirstTokenHigh" in result.stderr


def test_every_alert_is_shown_firing_at_each_severity_and_quiet() -> None:
    fired: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if not check.get("exp_alerts"):
                    quiet.add(check["alertname"])
                for expected in check.get("exp_alerts") or []:
                    fired.add((check["alertname"], expected["exp_labels"]["severity"]))
    rules = {(rule["alert"], rule["labels"]["severity"]) for rule in alerting_rules()}
    assert rules - fired == set(), "alerts never shown firing in rules/tests"
    assert {name for name, _ in rules} - quiet == set(), "alerts never shown staying quiet in rules/tests"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {_github_anchor(h) for h in re.findall(r"^#+ (.+)$", runbook, flags=re.MULTILINE)}
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbook.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: docs/runbook.md has no section #{anchor}"


def _github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_runbook_has_no_section_without_an_alert() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    sections = set(re.findall(r"^## (Sentinel\w+)$", runbook, flags=re.MULTILINE))
    assert sections == {a.name for a in ALERTS}


def _levels(expr: str) -> float:
    match = re.search(r"[>=]=? ([0-9.e+]+)\)?(\nunless .*)?$", expr, flags=re.DOTALL)
    assert match, expr
    return float(match.group(1))


def test_dashboard_thresholds_equal_the_alert_thresholds() -> None:
    """Read from the generated files: the rule YAML's levels against each linked panel's steps."""
    levels: dict[str, list[float]] = defaultdict(list)
    for rule in alerting_rules():
        levels[rule["alert"]].append(_levels(rule["expr"]))
    linked: set[str] = set()
    for path in (ROOT / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
            shown = [s["value"] for s in steps if s["value"] is not None]
            for link in panel.get("links", []):
                name = link["title"].removeprefix("Runbook: ")
                linked.add(name)
                assert shown == sorted(levels[name]), f"{path.name} / {panel['title']}: {shown} vs {name}"
            if not panel.get("links"):
                assert shown == [], f"{path.name} / {panel['title']} shows thresholds no alert uses"
    two_level = {name for name, values in levels.items() if len(values) == 2}
    assert two_level - linked == set(), "alerts with warning/critical levels but no dashboard panel"


def test_seed_thresholds_are_the_paging_levels() -> None:
    assert (t.TTFT_P95.warning, t.TTFT_P95.critical) == (0.5, 1.0)
    assert (t.GPU_MEMORY.warning, t.GPU_MEMORY.critical) == (0.7, 0.9)
    assert (t.ERROR_RATIO.warning, t.ERROR_RATIO.critical) == (0.005, 0.02)
    rules = {(r["alert"], r["labels"]["severity"]): r["expr"] for r in alerting_rules()}
    assert rules["SentinelGpuMemoryHigh", "critical"].startswith("(sentinel_gpu_memory_utilization_ratio > 0.9)")
    assert rules["SentinelErrorRateHigh", "warning"] == "job:sentinel_request_errors:ratio_rate5m > 0.005"
