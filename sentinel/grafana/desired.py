"""What Sentinel's Grafana should hold, as Grafana HTTP API payloads.

Dashboards come from `sentinel.monitoring.dashboards` and alert rules from `sentinel.monitoring.rules`,
so API provisioning, file provisioning (`dashboards/`) and Prometheus alerting never drift apart.
Grafana-managed alert rules evaluate each alert as `query <op> bool threshold` (query A: 1 where
the condition holds) with a threshold expression `A > 0` as condition (C); query B is the plain
`query`, so annotations can show the measured value as `$values.B.Value`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders.alerting import Query as AlertQuery
from grafana_foundation_sdk.builders.alerting import Rule
from grafana_foundation_sdk.builders.expr import (
    ExprTypeThresholdConditions,
    ExprTypeThresholdConditionsEvaluator,
    TypeThreshold,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.alerting import RelativeTimeRange

from sentinel.grafana.settings import GrafanaSettings
from sentinel.monitoring.dashboards import BOARDS, PROMETHEUS_UID, dashboard_json
from sentinel.monitoring.rules import ALERTS, Alert

ELASTICSEARCH_UID = "sentinel-elasticsearch"
RULE_GROUP = "sentinel"
EXPRESSIONS_UID = "__expr__"  # Grafana's server-side expressions pseudo-datasource


@dataclass(frozen=True)
class Datasource:
    uid: str
    body: dict[str, Any]
    secure: dict[str, str]
    """Secrets (`secureJsonData`): Grafana never returns them, so they cannot be compared."""


def datasources(settings: GrafanaSettings) -> list[Datasource]:
    wanted = [
        Datasource(
            PROMETHEUS_UID,
            {
                "uid": PROMETHEUS_UID,
                "name": "Sentinel Prometheus",
                "type": "prometheus",
                "access": "proxy",
                "url": settings.prometheus_url,
                "isDefault": False,
                "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
            },
            {},
        )
    ]
    if settings.elasticsearch_url:
        body: dict[str, Any] = {
            "uid": ELASTICSEARCH_UID,
            "name": "Sentinel audit (Elasticsearch)",
            "type": "elasticsearch",
            "access": "proxy",
            "url": settings.elasticsearch_url,
            "isDefault": False,
            "basicAuth": settings.elasticsearch_user is not None,
            "basicAuthUser": settings.elasticsearch_user or "",
            "jsonData": {"index": settings.elasticsearch_index, "timeField": settings.elasticsearch_time_field},
        }
        secure = {}
        if settings.elasticsearch_password is not None:
            secure["basicAuthPassword"] = settings.elasticsearch_password.get_secret_value()
        wanted.append(Datasource(ELASTICSEARCH_UID, body, secure))
    return wanted


def dashboards(runbook_base: str = "") -> list[dict[str, Any]]:
    return [dashboard_json(board, runbook_base) for board in BOARDS]


def rule_uid(alert: Alert) -> str:
    # Grafana uids are at most 40 characters.
    return f"{alert.name}-{alert.severity[:4]}"


def alert_rule(alert: Alert, folder_uid: str, runbook_base: str = "") -> dict[str, Any]:
    rule = (
        Rule(f"{alert.name} ({alert.severity})")
        .uid(rule_uid(alert))
        .folder_uid(folder_uid)
        .rule_group(RULE_GROUP)
        .org_id(1)  # Grafana files the rule under the credential's organisation whatever this says
        .condition("C")
        .for_val(alert.for_)
        .no_data_state("OK")  # no series means nothing to alert on (e.g. no backups configured yet)
        .exec_err_state("Error")
        .labels({"severity": alert.severity})
        .annotations(
            {
                "summary": _grafana_template(alert.summary),
                "description": _grafana_template(alert.description),
                "runbook_url": alert.runbook_url(runbook_base),
            }
        )
        .with_query(
            AlertQuery("A")
            .datasource_uid(PROMETHEUS_UID)
            .relative_time_range(RelativeTimeRange(from_val=600, to=0))
            .model(Dataquery().expr(alert.bool_expr).instant().ref_id("A"))
        )
        .with_query(
            AlertQuery("B")
            .datasource_uid(PROMETHEUS_UID)
            .relative_time_range(RelativeTimeRange(from_val=600, to=0))
            .model(Dataquery().expr(alert.query).instant().ref_id("B"))
        )
        .with_query(
            AlertQuery("C")
            .datasource_uid(EXPRESSIONS_UID)
            .relative_time_range(RelativeTimeRange(from_val=0, to=0))
            .model(
                TypeThreshold()
                .ref_id("C")
                .expression("A")
                .conditions(
                    [
                        ExprTypeThresholdConditions().evaluator(
                            ExprTypeThresholdConditionsEvaluator().type("gt").params([0])
                        )
                    ]
                )
            )
        )
    )
    encoded: dict[str, Any] = json.loads(json.dumps(rule.build(), cls=JSONEncoder))
    return encoded


def _grafana_template(text: str) -> str:
    """Prometheus annotation templates in Grafana's dialect: `$value` is a text there, values are by query."""
    return re.sub(r"\$value\b", "$values.B.Value", text)


def alert_rules(folder_uid: str, runbook_base: str = "") -> list[dict[str, Any]]:
    return [alert_rule(alert, folder_uid, runbook_base) for alert in ALERTS]
