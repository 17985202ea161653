"""Prometheus metrics: names and conventions, values that follow the learner, over real HTTP."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service_support import SHAPES, FakeLearner, FakeStream, make_board, metric_values, running_service
from online_gim.services.metrics import METRIC_HELP, ServiceMetrics

REQUIRED = [
    "online_gim_module_loss", "online_gim_module_loss_positive", "online_gim_module_loss_negative",
    "online_gim_module_active_hinge_ratio", "online_gim_update_duration_seconds",
    "online_gim_module_update_duration_seconds", "online_gim_real_time_factor",
    "online_gim_windows_processed_total", "online_gim_windows_dropped_total", "online_gim_windows_skipped_total",
    "online_gim_samples_in_total", "online_gim_samples_dropped_total", "online_gim_buffer_fill_ratio",
    "online_gim_source_lag_seconds", "online_gim_memory_vectors", "online_gim_probe_accuracy_ratio",
    "online_gim_module_dead_unit_ratio", "online_gim_module_loss_chance_ratio",
    "online_gim_embedding_drift_cosine_distance", "online_gim_embedding_drift_mmd",
    "online_gim_input_level_dbfs", "online_gim_input_level_drift_decibels", "online_gim_input_spectrum_drift_decibels",
    "online_gim_input_spectral_centroid_hertz", "online_gim_weight_drift_ratio",
]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one scrape, parsed by prometheus_client."""
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))]


def test_every_metric_follows_the_naming_conventions():
    metrics = ServiceMetrics()
    metrics.enable_checkpoints()
    families = list(metrics.registry.collect())
    assert len(families) == len(METRIC_HELP) >= len(REQUIRED)
    for family in families:
        assert family.name.startswith("online_gim_") and re.fullmatch(r"[a-z_]+", family.name)
        assert family.documentation
        assert not family.name.endswith("_total")  # prometheus_client adds it to counters
        if family.type == "gauge":
            assert not family.name.endswith(("_count", "_sum", "_bucket"))
    for name in METRIC_HELP:
        assert not re.search(r"_(ms|milliseconds|percent|minutes|bytes_total_total)$", name), name


def test_metrics_text_parses_holds_every_name_and_only_bounded_labels():
    with running_service(windows=5) as (handle, _):
        samples = scrape(handle.url)
    names = {name for name, _ in samples}
    for required in REQUIRED:
        assert any(n == required or n.startswith(required + "_") for n in names), required
    for name, labels in samples:
        for key, label in labels:
            assert key in {"module", "stage", "task", "le"}, (name, key)
            if key in ("module", "stage"):  # a stage holds modules: at most as many stages as modules
                assert int(label) in range(len(SHAPES))
            if key == "task":
                assert label in {"phone", "speaker"}


def test_values_follow_the_stream_and_change_over_time():
    with running_service(windows=5) as (handle, stream):
        first = scrape(handle.url)
        assert value(first, "online_gim_windows_processed_total") == 5
        assert value(first, "online_gim_samples_in_total") == 5 * 20480
        assert value(first, "online_gim_model_step") == 5
        assert value(first, "online_gim_module_loss", module=0, stage=0) == pytest.approx(1 / (1 + 0.05 * 4))
        assert value(first, "online_gim_module_loss_chance_ratio", module=3, stage=0) == pytest.approx(1 / 1.2 + 0.03)
        assert value(first, "online_gim_module_dead_unit_ratio", module=2, stage=0) == pytest.approx(0.02)
        assert value(first, "online_gim_update_duration_seconds_count") == 5
        assert value(first, "online_gim_module_update_duration_seconds_count", module=5, stage=0) == 5
        assert value(first, "online_gim_probe_accuracy_ratio", task="phone") == pytest.approx(0.14)
        assert value(first, "online_gim_memory_vectors", module=0) > 0
        assert value(first, "online_gim_real_time_factor") == pytest.approx((0.05 + 0.004) / 1.28)

        stream.counters.samples_dropped += 20480
        stream.counters.windows_dropped += 1
        stream.feed(3)
        stream.feed(1, skipped=True)
        stream.board.flush_drift()
        second = scrape(handle.url)
    assert value(second, "online_gim_windows_processed_total") == 9
    assert value(second, "online_gim_windows_skipped_total") == 1
    assert value(second, "online_gim_windows_dropped_total") == 1
    assert value(second, "online_gim_samples_dropped_total") == 20480
    assert value(second, "online_gim_module_loss", module=0, stage=0) < value(first, "online_gim_module_loss", module=0, stage=0)
    assert value(second, "online_gim_probe_accuracy_ratio", task="speaker") > value(
        first, "online_gim_probe_accuracy_ratio", task="speaker")
    # the embeddings' mean moves by 0.1 per window: the drift against the reference grows
    for module in range(len(SHAPES)):
        assert value(second, "online_gim_embedding_drift_mmd", module=module) > value(
            first, "online_gim_embedding_drift_mmd", module=module)
    assert value(second, "online_gim_weight_drift_ratio", module=1) > 0
    assert value(second, "online_gim_stream_seconds") == pytest.approx(9 * 1.28)


def test_a_live_feed_changes_the_scraped_values():
    with running_service(windows=1, feed_period=0.05) as (handle, _):
        before = scrape(handle.url)
        time.sleep(0.6)
        after = scrape(handle.url)
    assert value(after, "online_gim_windows_processed_total") > value(before, "online_gim_windows_processed_total")
    assert value(after, "online_gim_samples_in_total") > value(before, "online_gim_samples_in_total")
    assert value(after, "online_gim_module_loss", module=5, stage=0) != value(before, "online_gim_module_loss", module=5, stage=0)


def test_boards_have_private_registries():
    a, b = make_board(), make_board()
    try:
        FakeStream(a, FakeLearner()).feed(2)
        assert b"online_gim_windows_processed_total 0.0" in b.metrics.render()[0]
        assert b"online_gim_windows_processed_total 2.0" in a.metrics.render()[0]
    finally:
        a.close()
        b.close()


def test_source_lag_and_buffer_fill():
    board = make_board()
    try:
        stream = FakeStream(board)
        stream.fill_ratio = 0.25
        stream.counters.source_seconds = 0
        stream.feed(1)
        # the source is 2.56 s ahead of the window just processed
        window = stream.window()
        report = stream.report()
        stream.counters.source_seconds = (stream.step + 3) * 1.28
        board.on_step(window, report)
        text = board.metrics.render()[0].decode()
        assert "online_gim_buffer_fill_ratio 0.25" in text
        assert "online_gim_source_lag_seconds 2.56" in text
    finally:
        board.close()


def test_checkpoint_metrics_only_with_a_checkpointer_and_follow_it():
    class Checkpointer:  # the PeriodicCheckpointer's read-only view
        written, failed, last_saved_at = 0, 0, None

    board = make_board()
    try:
        stream = FakeStream(board)
        stream.feed(1)
        assert "checkpoint" not in board.metrics.render()[0].decode()  # a run without --state
        checkpointer = Checkpointer()
        board.attach_checkpointer(checkpointer)
        stream.feed(1)
        first = metric_values(board.metrics.render()[0].decode())
        assert first[("online_gim_checkpoints_written_total", ())] == 0
        assert math.isnan(first[("online_gim_checkpoint_last_success_timestamp_seconds", ())])
        checkpointer.written, checkpointer.failed, checkpointer.last_saved_at = 2, 1, 1_800_000_000.5
        stream.feed(1)
        checkpointer.written = 3
        stream.feed(1)
        second = metric_values(board.metrics.render()[0].decode())
    finally:
        board.close()
    assert second[("online_gim_checkpoints_written_total", ())] == 3
    assert second[("online_gim_checkpoint_failures_total", ())] == 1
    assert second[("online_gim_checkpoint_last_success_timestamp_seconds", ())] == 1_800_000_000.5


def test_the_exposition_passes_promtool_check_metrics():
    """Prometheus' own linter (Debian's ``prometheus`` package) on a full exposition."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; `make test` installs it as root)")
    board = make_board()
    try:
        board.attach_learner(FakeLearner())
        board.attach_checkpointer(type("Checkpointer", (), {"written": 1, "failed": 0, "last_saved_at": 1.7e9})())
        stream = FakeStream(board, board.learner)
        stream.feed(4)
        board.flush_drift()
        text = board.metrics.render()[0]
    finally:
        board.close()
    assert b"online_gim_embedding_drift_mmd" in text and b"online_gim_checkpoints_written_total" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_the_docs_list_every_metric_with_its_type():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text()
    documented = dict(re.findall(r"^\| `(online_gim_[a-z_]+)` \| (\w+) \|", text, re.M))
    assert documented == {name: help.split(":")[0] for name, help in METRIC_HELP.items()}
