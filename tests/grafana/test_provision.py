"""`sentinel grafana provision` against a Grafana HTTP API on a real socket.

Grafana itself cannot run here; `tests/support/grafana.py` implements the documented endpoints the
provisioning calls (see its docstring). What is proven: everything is created, a second run writes
nothing, drift is repaired in place (same ids, no duplicates), and failures (Grafana unreachable,
wrong credentials, missing permissions) end in a clear message that never shows the credential.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from sentinel.cli import main
from sentinel.grafana.desired import ELASTICSEARCH_UID
from sentinel.grafana.provision import ProvisionError, provision
from sentinel.grafana.settings import GrafanaSettings
from sentinel.monitoring.dashboards import PROMETHEUS_UID
from sentinel.monitoring.rules import ALERTS
from tests.support.grafana import ADMIN_TOKEN, ADMIN_USER, VIEWER_TOKEN, FakeGrafana, running_grafana
from tests.support.loop import BackgroundLoop
from tests.support.upstream import refused_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_UIDS = {"sentinel-overview", "sentinel-gpu", "sentinel-internals", "sentinel-backups"}


@pytest.fixture
def grafana(servers: BackgroundLoop) -> FakeGrafana:
    return servers.enter(running_grafana())


def settings_for(grafana: FakeGrafana, **overrides: Any) -> GrafanaSettings:
    base: dict[str, Any] = {
        "url": grafana.url,
        "token": ADMIN_TOKEN,
        "prometheus_url": "http://prometheus:9090",
        "elasticsearch_url": "http://elasticsearch:9200",
        "elasticsearch_user": "grafana_reader",
        "elasticsearch_password": "es-reader-secret",
    }
    return GrafanaSettings(**{**base, **overrides})


def actions(changes: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    return counts


def test_first_run_creates_everything(grafana: FakeGrafana) -> None:
    changes = provision(settings_for(grafana), alert_rules=True)
    assert actions(changes) == {"created": 2 + 1 + 4 + len(ALERTS)}

    prometheus = grafana.datasources[PROMETHEUS_UID]
    assert (prometheus["type"], prometheus["url"], prometheus["access"]) == (
        "prometheus",
        "http://prometheus:9090",
        "proxy",
    )
    elastic = grafana.datasources[ELASTICSEARCH_UID]
    assert elastic["jsonData"]["index"] == "sentinel-audit" and elastic["basicAuthUser"] == "grafana_reader"
    assert elastic["secureJsonFields"] == {"basicAuthPassword": True}
    assert grafana.secrets[ELASTICSEARCH_UID] == {"basicAuthPassword": "es-reader-secret"}
    assert "es-reader-secret" not in json.dumps(grafana.datasources)

    assert grafana.folders["sentinel"]["title"] == "Sentinel"
    assert set(grafana.dashboards) == DASHBOARD_UIDS
    assert set(grafana.dashboard_folders.values()) == {"sentinel"}
    for uid in DASHBOARD_UIDS:  # the very dashboards committed for file provisioning
        committed = json.loads((ROOT / "dashboards" / f"{uid}.json").read_text())
        stored = {k: v for k, v in grafana.dashboards[uid].items() if k not in ("id", "version")}
        assert stored == committed

    assert len(grafana.rules) == len(ALERTS)
    rule = grafana.rules["SentinelErrorRateHigh-crit"]
    assert rule["folderUID"] == "sentinel" and rule["ruleGroup"] == "sentinel" and rule["for"] == "5m"
    assert rule["labels"] == {"severity": "critical"}
    queries = {q["refId"]: q for q in rule["data"]}
    assert queries["A"]["model"]["expr"] == "job:sentinel_request_errors:ratio_rate5m > bool 0.02"
    assert queries["A"]["datasourceUid"] == PROMETHEUS_UID
    assert queries["C"]["model"]["conditions"][0]["evaluator"] == {"params": [0], "type": "gt"}
    assert "{{ $values.B.Value | humanizePercentage }}" in rule["annotations"]["description"]


def test_second_run_changes_nothing(grafana: FakeGrafana) -> None:
    settings = settings_for(grafana)
    provision(settings, alert_rules=True)
    writes = len(grafana.writes)
    changes = provision(settings, alert_rules=True)
    assert actions(changes) == {"unchanged": len(changes)}
    assert len(grafana.writes) == writes


def test_drift_is_repaired_in_place(grafana: FakeGrafana) -> None:
    provision(settings_for(grafana), alert_rules=True)
    overview_id = grafana.dashboards["sentinel-overview"]["id"]
    datasource_id = grafana.datasources[PROMETHEUS_UID]["id"]
    grafana.dashboards["sentinel-overview"]["panels"][1]["title"] = "edited in the UI"
    grafana.rules["SentinelUpstreamDown-crit"]["for"] = "1h"
    grafana.writes.clear()

    changes = provision(settings_for(grafana, prometheus_url="http://prometheus.internal:9090"), alert_rules=True)
    written = {(c.kind, c.uid) for c in changes if c.action == "updated"}
    assert written == {
        ("datasource", PROMETHEUS_UID),
        ("dashboard", "sentinel-overview"),
        ("alert rule", "SentinelUpstreamDown-crit"),
    }
    assert grafana.datasources[PROMETHEUS_UID]["id"] == datasource_id
    assert grafana.datasources[PROMETHEUS_UID]["url"] == "http://prometheus.internal:9090"
    assert grafana.dashboards["sentinel-overview"]["id"] == overview_id
    assert grafana.dashboards["sentinel-overview"]["version"] == 2
    assert grafana.dashboards["sentinel-overview"]["panels"][1]["title"] != "edited in the UI"
    assert grafana.rules["SentinelUpstreamDown-crit"]["for"] == "2m"
    assert len(grafana.dashboards) == 4 and len(grafana.rules) == len(ALERTS)
    assert len(grafana.writes) == 3


def test_force_rewrites_and_sends_secrets_again(grafana: FakeGrafana) -> None:
    provision(settings_for(grafana))
    changes = provision(settings_for(grafana, elasticsearch_password="rotated"), force=True)
    assert actions(changes) == {"updated": 2 + 1 + 4}
    assert grafana.secrets[ELASTICSEARCH_UID] == {"basicAuthPassword": "rotated"}


def test_without_alert_rules_and_elasticsearch(grafana: FakeGrafana) -> None:
    changes = provision(settings_for(grafana, elasticsearch_url=None))
    assert {c.kind for c in changes} == {"datasource", "folder", "dashboard"}
    assert set(grafana.datasources) == {PROMETHEUS_UID} and not grafana.rules


def test_basic_auth(grafana: FakeGrafana) -> None:
    user, password = ADMIN_USER
    changes = provision(settings_for(grafana, token=None, user=user, password=password))
    assert actions(changes) == {"created": 7}


def test_wrong_token_is_a_401_message_without_the_token(grafana: FakeGrafana) -> None:
    with pytest.raises(ProvisionError, match=r"refused the credentials \(401\)") as failure:
        provision(settings_for(grafana, token="glsa_wrong_token_value"))
    assert "glsa_wrong_token_value" not in str(failure.value)
    assert not grafana.writes


def test_viewer_token_is_a_403_message(grafana: FakeGrafana) -> None:
    with pytest.raises(ProvisionError, match=r"denied access \(403\)"):
        provision(settings_for(grafana, token=VIEWER_TOKEN))


def test_unreachable_grafana() -> None:
    settings = GrafanaSettings(url=f"http://127.0.0.1:{refused_port()}", token=SecretStr(ADMIN_TOKEN), timeout=2)
    with pytest.raises(ProvisionError, match="cannot reach Grafana at http://127.0.0.1:"):
        provision(settings)


def test_no_credentials() -> None:
    with pytest.raises(ProvisionError, match="no Grafana credentials"):
        provision(GrafanaSettings())


def test_cli_reads_the_token_from_a_file(grafana: FakeGrafana, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "grafana-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    monkeypatch.setenv("SENTINEL_GRAFANA_URL", grafana.url)
    monkeypatch.setenv("SENTINEL_GRAFANA_TOKEN_FILE", str(token_file))
    runner = CliRunner()

    first = runner.invoke(main, ["grafana", "provision", "--alert-rules"])
    assert first.exit_code == 0, first.output
    assert "created   dashboard sentinel-overview" in first.output
    assert f"{1 + 1 + 4 + len(ALERTS)} written, 0 unchanged" in first.output

    second = runner.invoke(main, ["grafana", "provision", "--alert-rules"])
    assert second.exit_code == 0 and "0 written" in second.output
    assert ADMIN_TOKEN not in first.output + second.output


def test_cli_failure_exit_code(grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_GRAFANA_URL", grafana.url)
    monkeypatch.setenv("SENTINEL_GRAFANA_TOKEN", "glsa_not_valid")
    result = CliRunner().invoke(main, ["grafana", "provision"])
    assert result.exit_code == 1
    assert "401" in result.output and "glsa_not_valid" not in result.output
