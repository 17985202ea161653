"""What the tests of ``deploy/`` share: where its files are, the alert names of the rules, the
dashboard's queries, and Prometheus' ``promtool`` (Debian package ``prometheus``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "online-gim.json"
COMPOSE = DEPLOY / "docker-compose.yml"
JOB = "online-gim"
"""The scrape job of ``prometheus.yml`` (the dashboard's ``$job``, the alerts' ``up{job=...}``)."""


def require_tool(name: str) -> str:
    """The path of a Prometheus binary (``prometheus``, ``promtool``); skips the test without it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package prometheus; `make test` installs it as root)")
    return path


def alert_rules() -> dict[str, dict]:
    """``{alert name: rule}`` of every alerting rule in ``alerts.yml``."""
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def dashboard_queries(job: str = JOB) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` of every target of every panel, with the dashboard's ``$job``
    variable set to ``job`` as Grafana does for one selected value."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$job", job))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
