"""A module's local objective: negatives drawn from the current window (``window_negatives``)."""

import numpy as np
import pytest
import torch

from online_gim.config import LossConfig, MemoryConfig
from online_gim.losses import PredictionHead
from online_gim.memory import NegativeMemory
from online_gim.objective import LocalObjective, WindowPool

FRAMES, DIM, EXCLUSION = 40, 4, 5
MEMORY_VALUE = -1.0
"""Every memory entry holds this value; a window frame holds its own index."""


def _objective(share: float) -> LocalObjective:
    memory_config = MemoryConfig(capacity=64, window_negatives=share)
    memory = NegativeMemory(DIM, memory_config, exclusion_samples=0, seed=0)
    memory.add(torch.full((64, DIM), MEMORY_VALUE), np.arange(64, dtype=np.int64) * 1000, source_id="other", step=0)
    generator = torch.Generator().manual_seed(0)
    head = PredictionHead(DIM, DIM, 3, split=False, generator=generator)
    return LocalObjective(LossConfig(prediction_steps=3), memory_config, head, memory, generator, exclusion=EXCLUSION)


def _pool() -> WindowPool:
    frames = torch.arange(FRAMES, dtype=torch.float32)[:, None].repeat(1, DIM)  # frame i holds the value i
    return WindowPool(frames, torch.tensor([0, 7, 20, 39]))


def test_window_negatives_come_from_the_window_outside_each_anchors_exclusion_zone():
    objective, pool = _objective(1.0), _pool()
    drawn = torch.cat([objective._mixed_negatives(np.zeros(4), 50, "s", pool)[..., 0] for _ in range(20)], dim=1)
    distance = (drawn - pool.anchors[:, None].float()).abs()
    assert bool((distance > EXCLUSION).all())
    for anchor, values in zip(pool.anchors.tolist(), drawn):
        allowed = {f for f in range(FRAMES) if abs(f - anchor) > EXCLUSION}
        assert set(values.long().tolist()) == allowed  # every allowed frame, uniformly: all appear in 1000 draws


def test_a_share_of_the_negatives_comes_from_the_window_the_rest_from_the_memory():
    objective, pool = _objective(0.25), _pool()
    drawn = torch.cat([objective._mixed_negatives(np.zeros(4), 50, "s", pool)[..., 0] for _ in range(40)], dim=1)
    from_memory = drawn == MEMORY_VALUE
    assert float((~from_memory).float().mean()) == pytest.approx(0.25, abs=0.02)
    assert bool(((drawn[~from_memory] - pool.anchors[:, None].expand_as(drawn)[~from_memory]).abs() > EXCLUSION).all())


def test_no_window_negative_where_the_exclusion_zone_covers_the_window():
    objective = _objective(1.0)
    tiny = WindowPool(torch.zeros(2 * EXCLUSION, DIM), torch.tensor([EXCLUSION]))
    assert objective._mixed_negatives(np.zeros(1), 3, "s", tiny) is None
