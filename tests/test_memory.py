"""The FAISS negative memory: bounded, FIFO, never serves the anchor's neighbours."""

import numpy as np
import pytest
import torch

from online_gim.config import MemoryConfig
from online_gim.memory import NegativeMemory


def _memory(capacity: int = 50, max_age: int = 1000, policy: str = "uniform") -> NegativeMemory:
    config = MemoryConfig(capacity=capacity, max_age_updates=max_age, policy=policy, hard_pool=8)
    return NegativeMemory(4, config, exclusion_samples=30, seed=0)


def _fill(memory: NegativeMemory, windows: int, per_window: int = 20, step0: int = 0) -> None:
    for w in range(windows):
        positions = np.arange(per_window, dtype=np.int64) * 10 + w * per_window * 10
        vectors = torch.from_numpy(positions[:, None].repeat(4, axis=1).astype(np.float32))  # vector encodes position
        memory.add(vectors, positions, source_id="s", step=step0 + w)


def test_capacity_is_never_exceeded_and_oldest_go_first() -> None:
    memory = _memory(capacity=50)
    for w in range(10):
        memory.add(torch.full((20, 4), float(w)), np.arange(20, dtype=np.int64) + 1000 * w, source_id="s", step=w)
        assert len(memory) <= 50
    assert len(memory) == 50
    assert memory.steps.min() == 7 and int((memory.steps == 7).sum()) == 10  # FIFO: the 50 newest remain
    assert memory.index.ntotal == len(memory.positions) == len(memory.speakers)


def test_negatives_never_come_from_the_exclusion_window() -> None:
    memory = _memory(capacity=400)
    _fill(memory, 10)  # positions 0, 10, ..., 1990; vector value = position
    anchors = np.array([0, 500, 1000, 1990, 735])
    for _ in range(20):
        negatives = memory.sample(anchors, 12, source_id="s")
        assert negatives.shape == (5, 12, 4)
        distance = (negatives[..., 0].numpy() - anchors[:, None]).__abs__()
        assert distance.min() > 30
        # distinct negatives per anchor
        assert all(len(set(row.tolist())) == 12 for row in negatives[..., 0])


@pytest.mark.parametrize("excluded_share", [0.1, 0.9])
def test_negatives_are_a_uniform_distinct_draw_of_the_allowed_entries(excluded_share: float) -> None:
    """Each allowed entry is drawn about equally often, an excluded one never, none twice for one
    anchor; with most entries excluded (0.9) the rejection draws fall short and the exact draw over
    the allowed set takes over, with the same distribution."""
    memory = NegativeMemory(4, MemoryConfig(capacity=100), exclusion_samples=int(excluded_share * 100 * 10 / 2), seed=0)
    positions = np.arange(100, dtype=np.int64) * 10  # vector value = row
    memory.add(torch.from_numpy(np.arange(100, dtype=np.float32)[:, None].repeat(4, axis=1)), positions, source_id="s", step=0)
    anchor = np.array([500])
    allowed = np.abs(positions - 500) > memory.exclusion_samples
    counts = np.zeros(100)
    for _ in range(2000):
        rows = memory.sample(anchor, 6, source_id="s")[0, :, 0].long().numpy()
        assert len(set(rows.tolist())) == 6
        counts[rows] += 1
    assert counts[~allowed].sum() == 0
    expected = 2000 * 6 / allowed.sum()
    assert np.all(np.abs(counts[allowed] - expected) < 5 * np.sqrt(expected)), (counts[allowed].min(), counts[allowed].max(), expected)


def test_other_streams_are_not_excluded() -> None:
    memory = _memory(capacity=400)
    memory.add(torch.ones(3, 4), np.array([0, 10, 20]), source_id="other", step=0)
    negatives = memory.sample(np.array([10]), 3, source_id="s")
    assert negatives is not None and negatives.shape == (1, 3, 4)


def test_sample_returns_none_while_too_few_entries_are_allowed() -> None:
    memory = _memory(capacity=400)
    memory.add(torch.ones(3, 4), np.array([0, 10, 20]), source_id="s", step=0)
    assert memory.sample(np.array([10]), 1, source_id="s") is None


def test_stale_entries_are_evicted() -> None:
    memory = _memory(capacity=1000, max_age=3)
    _fill(memory, 10)
    assert memory.steps.min() >= 9 - 3


def test_hard_negatives_are_the_best_allowed_scores() -> None:
    memory = _memory(capacity=400, policy="hard")
    rng = np.random.default_rng(0)
    vectors = torch.from_numpy(rng.normal(size=(100, 4)).astype(np.float32))
    positions = np.arange(100, dtype=np.int64) * 10
    memory.add(vectors, positions, source_id="s", step=0)
    query = torch.from_numpy(rng.normal(size=(6, 4)).astype(np.float32))
    anchors = positions[[0, 10, 20, 30, 40, 50]]
    chosen = memory.hardest(query, anchors, source_id="s")
    for q, anchor, negative in zip(query, anchors, chosen):
        allowed = np.abs(positions - anchor) > 30
        best = vectors[allowed][int((vectors[allowed] @ q).argmax())]
        assert torch.allclose(negative, best)


def test_state_round_trip_and_nearest() -> None:
    memory = _memory(capacity=100)
    _fill(memory, 3)
    restored = _memory(capacity=100)
    restored.load_state_dict(memory.state_dict())
    query = torch.ones(4)
    assert [h.stream_seconds for h in restored.nearest(query, 5)] == [h.stream_seconds for h in memory.nearest(query, 5)]
    assert memory.nearest(query, 1)[0].stream_seconds == 590 / 16000  # largest position has the largest product


def test_state_of_earlier_versions_with_a_serialised_faiss_index_still_loads() -> None:
    import faiss

    memory = _memory(capacity=100)
    _fill(memory, 3)
    state = memory.state_dict()
    assert state["vectors"].shape == (len(memory), memory.dim)
    old = {key: value for key, value in state.items() if key != "vectors"}
    old["index"] = faiss.serialize_index(memory.index)
    restored = _memory(capacity=100)
    restored.load_state_dict(old)
    query = torch.ones(4)
    assert [h.stream_seconds for h in restored.nearest(query, 5)] == [h.stream_seconds for h in memory.nearest(query, 5)]
