"""A real Prometheus (Debian's ``prometheus``) scrapes a real ``online-gim listen --http`` process
with the shipped scrape configuration, alert rules and bearer token; PromQL through Prometheus'
HTTP API must show what a learning run shows, every query of the Grafana dashboard must return
data, and the rules must evaluate without error.

One listen process (the small learner, synthetic corpus at 4x real time, checkpoints every 5
windows) and one Prometheus server (1 s scrapes and rule evaluations) serve the whole module.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from deploy_support import ALERT_RULES, JOB, PROMETHEUS_CONFIG, alert_rules, dashboard_queries, require_tool
from online_gim.services.loadcheck import LISTEN, free_port, stop_listen

pytestmark = pytest.mark.slow

TOKEN = "prometheus-test-token"
MODULES = 6
"""Modules of the small learner: five conv modules and the GRU."""


def wait_until(what: str, check: Callable[[], bool], timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with code {process.returncode}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@pytest.fixture(scope="module")
def listening(tmp_path_factory, synth_corpus_dir: Path, small_config: Path) -> Iterator[str]:
    """``host:port`` of a listen process learning from the synthetic corpus, with a token and a state directory."""
    port = free_port()
    state = tmp_path_factory.mktemp("prometheus-listen") / "state"
    process = subprocess.Popen(
        [*LISTEN, "listen", "--source", "synth", "--root", str(synth_corpus_dir), "--speed", "4",
         "--config", str(small_config), "--http", f"127.0.0.1:{port}", "--token", TOKEN,
         "--state", str(state), "--checkpoint-every-windows", "5", "--duration", "3600", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    address = f"127.0.0.1:{port}"
    try:
        wait_until(
            "listen ready",
            lambda: httpx.get(f"http://{address}/readyz", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2).status_code == 200,
            timeout=240, process=process,
        )
        yield address
    finally:
        stop_listen(process)


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict]:
        """The instant vector (or scalar, as one sample) of ``expr`` now."""
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def values(self, expr: str) -> dict[str, float]:
        """``{module or task or "": value}`` of ``expr``."""
        return {
            s["metric"].get("module", s["metric"].get("task", "")): float(s["value"][1]) for s in self.query(expr)
        }


def scrape_config(target: str, token_file: Path) -> dict:
    """The shipped ``prometheus.yml`` pointed at ``target``, 1 s scrapes and evaluations."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB and config["rule_files"] == [ALERT_RULES.name]
    job["static_configs"] = [{"targets": [target]}]
    job["authorization"]["credentials_file"] = str(token_file)
    job["scrape_interval"] = config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(ALERT_RULES)]
    return config


@pytest.fixture(scope="module")
def prometheus(listening: str, tmp_path_factory) -> Iterator[Prometheus]:
    binary = require_tool("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    token = root / "token"
    token.write_text(TOKEN + "\n")
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(listening, token)))
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_until("prometheus ready", lambda: httpx.get(server.url + "/-/ready", timeout=2).status_code == 200,
                   timeout=60, process=process)
        # data for every panel: a few scrapes, a drift reading (after the 30 s reference window of
        # stream time, 7.5 s at 4x), weight drift (two copies of the weights 30 s of wall time
        # apart), a checkpoint, the rates of two scrapes or more
        wait_until("a learning run in Prometheus", lambda: (
            len(server.query("online_gim_embedding_drift_cosine_distance")) == MODULES
            and len(server.query("online_gim_weight_drift_ratio")) == MODULES
            and len(server.query("time() - online_gim_checkpoint_last_success_timestamp_seconds < 600")) == 1
            and len(server.query("rate(online_gim_windows_processed_total[30s]) > 0")) == 1
            and len(server.query("count_over_time(up[1m]) >= 5")) == 1
        ), timeout=180, process=process)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_prometheus_scrapes_the_learner_with_the_token(prometheus):
    (target,) = httpx.get(prometheus.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert target["labels"]["job"] == JOB and target["health"] == "up", target
    assert prometheus.values(f'up{{job="{JOB}"}}') == {"": 1.0}


def test_promql_shows_what_a_learning_run_must_show(prometheus):
    def finite(values: dict[str, float]) -> bool:
        return all(math.isfinite(v) for v in values.values())

    assert prometheus.values("rate(online_gim_windows_processed_total[30s])")[""] > 0  # windows per second
    loss = prometheus.values("online_gim_module_loss")
    assert sorted(loss) == [str(m) for m in range(MODULES)] and finite(loss) and all(v >= 0 for v in loss.values())
    ratio = prometheus.values("online_gim_module_loss_chance_ratio")  # loss relative to chance
    assert len(ratio) == MODULES and all(0 < v < 2 for v in ratio.values())
    for drift in ("online_gim_embedding_drift_cosine_distance", "online_gim_embedding_drift_mmd"):
        values = prometheus.values(drift)
        assert len(values) == MODULES and finite(values), drift
    assert math.isfinite(prometheus.values("online_gim_input_spectrum_drift_decibels")[""])
    dropped = prometheus.values("rate(online_gim_samples_dropped_total[30s]) / rate(online_gim_samples_in_total[30s])")
    assert 0 <= dropped[""] <= 1  # the dashboard's share of dropped audio
    assert prometheus.values("online_gim_windows_skipped_total") == {"": 0.0}  # no non-finite window in speech
    rtf = prometheus.values("online_gim_real_time_factor")[""]
    assert math.isfinite(rtf) and rtf > 0
    probes = prometheus.values("online_gim_probe_accuracy_ratio")
    assert set(probes) == {"phone", "speaker"} and all(0 <= v <= 1 for v in probes.values())
    assert prometheus.values("online_gim_checkpoints_written_total")[""] >= 1
    assert prometheus.values("online_gim_checkpoint_failures_total") == {"": 0.0}


def test_the_exposition_passes_promtool_check_metrics(listening):
    text = httpx.get(f"http://{listening}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).content
    assert b"online_gim_checkpoint_last_success_timestamp_seconds" in text
    result = subprocess.run([require_tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_every_dashboard_query_returns_data(prometheus):
    queries = dashboard_queries()
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        assert "$" not in expr, f"{title}: a dashboard variable the test does not set: {expr}"
        samples = prometheus.query(expr)
        if not any(math.isfinite(float(s["value"][1])) for s in samples):
            empty.append(f"{title}: {expr} -> {samples}")
    assert not empty, "\n".join(empty)
    jobs = httpx.get(prometheus.url + "/api/v1/label/job/values",
                     params={"match[]": "online_gim_windows_processed_total"}, timeout=10).json()["data"]
    assert jobs == [JOB]  # the dashboard's $job variable: label_values(online_gim_windows_processed_total, job)


def test_the_alert_rules_evaluate_and_a_healthy_run_fires_none(prometheus):
    def evaluated() -> list[dict]:
        groups = httpx.get(prometheus.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if all(not rule["lastEvaluation"].startswith("0001") for rule in rules) else []

    wait_until("every rule evaluated", lambda: bool(evaluated()), timeout=30)
    rules = evaluated()
    assert {rule["name"] for rule in rules} == set(alert_rules())
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
    firing = [alert for rule in rules for alert in rule["alerts"] if alert["state"] == "firing"]
    assert firing == []
