"""Alerting rules, Grafana dashboards and their documentation, generated from one Python source.

`thresholds.py` holds the numbers once; `rules.py` and `dashboards.py` read them, so a panel's
coloured thresholds always equal the alert that pages. `generate.py` writes the artefacts
(`rules/`, `dashboards/`, `docs/dashboards.md`); a test regenerates them and fails on any diff.
"""
