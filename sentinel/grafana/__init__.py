"""Setting up Grafana for Sentinel over its HTTP API: datasources, a folder, the dashboards, alert rules.

`desired.py` says what should exist (from the same source as `dashboards/` and `rules/`);
`provision.py` makes Grafana match it, changing only what differs.
"""
