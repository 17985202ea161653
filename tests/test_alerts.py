"""The alert rules and the Prometheus configuration of ``deploy/prometheus/``, checked by Prometheus'
own ``promtool``: the rules parse, every rule's unit tests (synthetic series) pass, every alert has
a case where it fires and one where it must not, and the configuration loads."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict

import yaml

from deploy_support import (
    ALERT_RULES,
    ALERT_TESTS,
    PROMETHEUS_CONFIG,
    alert_rules,
    dashboard_queries,
    require_tool,
)
from online_gim.services.metrics import METRIC_HELP


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_every_rule_passes_its_unit_tests():
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_must_not():
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERT_RULES.name]
    fires, quiet = defaultdict(int), defaultdict(int)
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet)[check["alertname"]] += 1
    rules = set(alert_rules())
    assert len(rules) >= 10
    assert rules - set(fires) == set(), "alerts never tested firing"
    assert rules - set(quiet) == set(), "alerts never tested quiet"
    assert set(fires) | set(quiet) <= rules, "tests of alerts that do not exist"


def test_every_alert_says_what_it_means():
    for name, rule in alert_rules().items():
        assert name.startswith("OnlineGim")
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_the_rules_and_the_dashboard_use_only_metrics_the_service_exports():
    known = set(METRIC_HELP) | {n + s for n in METRIC_HELP for s in ("_bucket", "_count", "_sum")}
    exprs = [rule["expr"] for rule in alert_rules().values()] + [expr for _, expr in dashboard_queries()]
    used = set(re.findall(r"online_gim_[a-z_]+", " ".join(exprs)))
    assert len(used) >= 15 and used <= known, used - known


def test_promtool_checks_the_shipped_configuration(tmp_path):
    """The configuration as shipped, with its token file (a compose secret) made here."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [ALERT_RULES.name]
    (job,) = config["scrape_configs"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/online_gim_token"
    token = tmp_path / "token"
    token.write_text("secret\n")
    job["authorization"]["credentials_file"] = str(token)
    config["rule_files"] = [str(ALERT_RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout
