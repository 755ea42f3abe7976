"""Prometheus metrics, OpenTelemetry spans and GPU collectors, all fed from `Interaction` records."""
