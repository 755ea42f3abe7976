"""Prometheus series for policies: what each rule did, PHI found, and how reloads went.

Rule names come from the policy file, so the `rule` label is capped: the first `max_rules` names
seen keep their own series, later ones are counted as `other`.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from sentinel.policy.matching import Findings

OTHER_RULE = "other"


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry, max_rules: int = 50) -> None:
        self.actions = Counter(
            "sentinel_policy_actions",
            "Policy enforcements, by rule, action (block/redact/flag/clamp/reject/default) and stage.",
            ["rule", "action", "stage"],
            registry=registry,
        )
        self.phi = Counter(
            "sentinel_policy_phi_findings",
            "PHI/PII identifiers found, by category and stage (counts only; values are never kept).",
            ["category", "stage"],
            registry=registry,
        )
        self.reloads = Counter(
            "sentinel_policy_reloads",
            "Policy file loads, by outcome (applied, rejected).",
            ["outcome"],
            registry=registry,
        )
        self.rules = Gauge(
            "sentinel_policy_rules", "Rules in the policy in force, by kind.", ["kind"], registry=registry
        )
        self.last_reload = Gauge(
            "sentinel_policy_last_applied_timestamp_seconds",
            "When the policy in force was applied.",
            registry=registry,
        )
        self._max_rules = max_rules
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def _rule(self, name: str) -> str:
        if name in self._names:
            return name
        with self._lock:
            if len(self._names) < self._max_rules:
                self._names.add(name)
                return name
        return OTHER_RULE

    def action(self, rule: str, action: str, stage: str, count: int = 1) -> None:
        self.actions.labels(self._rule(rule), action, stage).inc(count)

    def findings(self, findings: Findings, stage: str) -> None:
        for (rule, action), count in findings.rules.items():
            self.action(rule, action, stage, count)
        for category, count in findings.phi.items():
            self.phi.labels(category, stage).inc(count)

    def applied(self, counts: dict[str, int]) -> None:
        self.reloads.labels("applied").inc()
        self.last_reload.set(time.time())
        for kind, count in counts.items():
            self.rules.labels(kind).set(count)

    def rejected(self) -> None:
        self.reloads.labels("rejected").inc()
