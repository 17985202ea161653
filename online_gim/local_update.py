"""How one gradient-isolated module is trained, shared by the audio and the video learner.

A :class:`LocalStage` holds a module with everything that trains it (prediction head, negative
memory, local objective, its own Adam optimiser); :class:`ModuleSchedule` chooses the modules that
update on a window; :func:`apply_local_loss` and :func:`step_optimizer` turn a local loss into a
guarded optimiser step; :func:`module_report` describes what a module did on a window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from online_gim.adam import Adam
from online_gim.config import LossConfig, MemoryConfig, OptimConfig
from online_gim.losses import LossParts, PredictionHead
from online_gim.memory import NegativeMemory
from online_gim.objective import LocalObjective
from online_gim.report import ModuleReport


@dataclass
class LocalStage:
    """A module with everything that trains it: head, memory, objective and optimiser, and its own
    random generators.

    ``stride``: stream positions per output frame of this module (cumulative; input samples for
    audio, 1 for video, where every output frame is one input frame). ``rng`` (NumPy: the memory
    writes' and the anchors' choices) and ``generator`` (torch: the head's initialisation, the
    objective's draws) belong to this module alone, seeded from the learner's seed and the module's
    index (:func:`module_generators`): a module draws the same numbers whichever modules run beside
    it, in this process or in another (a stage of a pipeline, :mod:`online_gim.scale`).
    """

    module: nn.Module
    head: PredictionHead
    memory: NegativeMemory
    objective: LocalObjective
    optimizer: Adam
    stride: int
    rng: np.random.Generator
    generator: torch.Generator

    @classmethod
    def build(
        cls,
        module: nn.Module,
        *,
        context_dim: int,
        target_dim: int,
        memory: NegativeMemory,
        stride: int,
        loss: LossConfig,
        memory_config: MemoryConfig,
        optim: OptimConfig,
        seed: int,
        index: int,
        product_dtype: torch.dtype = torch.float32,
        exclusion: int = 0,
    ) -> LocalStage:
        """A stage whose head predicts ``target_dim`` targets from ``context_dim`` contexts (its
        products in ``product_dtype``); one Adam optimiser (``optim.module_lr(index)``, moments stored as
        ``optim.moments``) over the module's and the head's parameters. ``exclusion``: frames
        around an anchor that never give a window negative (:class:`~online_gim.objective.LocalObjective`).
        ``seed`` and ``index`` (the learner's seed, the module's place in the stack) seed the stage's
        generators."""
        rng, generator = module_generators(seed, index)
        head = PredictionHead(
            context_dim, target_dim, loss.prediction_steps, split=loss.split_prediction, generator=generator,
            product_dtype=product_dtype,
        )
        objective = LocalObjective(loss, memory_config, head, memory, generator, exclusion=exclusion)
        optimizer = Adam([*module.parameters(), *head.parameters()], lr=optim.module_lr(index), moments=optim.moments)
        return cls(module, head, memory, objective, optimizer, stride, rng, generator)

    def generator_state(self) -> dict[str, object]:
        """The generators' state (part of the learner's state, in the stage's entry)."""
        return {"numpy": self.rng.bit_generator.state, "torch": self.generator.get_state()}

    def load_generator_state(self, state: dict[str, object]) -> None:
        """Restores :meth:`generator_state`'s output."""
        self.rng.bit_generator.state = state["numpy"]
        self.generator.set_state(state["torch"])


def module_generators(seed: int, index: int) -> tuple[np.random.Generator, torch.Generator]:
    """Module ``index``'s NumPy and torch generators for the learner seed ``seed``: independent of
    every other module's, and of the number of modules."""
    sequence = np.random.SeedSequence([seed, index])
    torch_seed = int(sequence.spawn(1)[0].generate_state(1, np.uint64)[0] >> np.uint64(1))
    return np.random.default_rng(sequence), torch.Generator().manual_seed(torch_seed)


class ModuleSchedule:
    """Which modules update on a window: ``all``, ``random`` (one random module, as RLL) or
    ``round_robin`` (one module, in turn).

    Parameters:
        kind: the schedule.
        count: modules in the stack.
        rng: draws the ``random`` choices (the learner's, so that its state is saved with it).

    Attributes:
        round_robin: windows scheduled so far under ``round_robin`` (part of the learner's state).
    """

    def __init__(self, kind: str, count: int, rng: np.random.Generator) -> None:
        self.kind = kind
        self.count = count
        self.rng = rng
        self.round_robin = 0

    def choose(self, modules: Sequence[int] | None = None) -> set[int]:
        """The modules to update: ``modules`` when given (an override), else the schedule's choice.

        Raises:
            ValueError: ``modules`` names a module outside ``0..count - 1``.
        """
        count = self.count
        if modules is not None:
            chosen = set(int(m) for m in modules)
            if not chosen <= set(range(count)):
                raise ValueError(f"modules must be in 0..{count - 1}, got {sorted(chosen)}")
            return chosen
        if self.kind == "all":
            return set(range(count))
        if self.kind == "random":
            return {int(self.rng.integers(count))}
        chosen = {self.round_robin % count}
        self.round_robin += 1
        return chosen


def step_optimizer(optimizer: Adam, grad_clip: float) -> bool:
    """Clips the gradient norm to ``grad_clip`` and steps, unless the gradient is not finite (then
    the weights stay as they are); the gradients are cleared either way. Returns whether it stepped."""
    parameters = [p for p in optimizer.params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    finite = bool(torch.isfinite(norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad()
    return finite


def apply_local_loss(optimizer: Adam, parts: LossParts | None, grad_clip: float) -> LossParts | None:
    """Back-propagates a module's local loss (its graph stays inside the module) and steps its
    optimiser; a missing or non-finite loss changes nothing. Returns ``parts``."""
    if parts is None or not bool(torch.isfinite(parts.loss)):
        optimizer.zero_grad()
        return parts
    parts.loss.backward()
    step_optimizer(optimizer, grad_clip)
    return parts


def module_report(index: int, parts: LossParts | None, frames: torch.Tensor, started: float) -> ModuleReport:
    """What module ``index`` did on a window: its loss parts (``None``: not scored), the dead units
    of its ``(T, C)`` output ``frames`` (never positive in the window), and the seconds since
    ``started`` (a ``time.perf_counter()`` reading)."""
    nan = float("nan")
    return ModuleReport(
        module=index,
        updated=parts is not None and math.isfinite(float(parts.loss.detach())),
        loss=float(parts.loss.detach()) if parts is not None else nan,
        loss_pos=parts.loss_pos if parts is not None else nan,
        loss_neg=parts.loss_neg if parts is not None else nan,
        chance_loss=parts.chance if parts is not None else nan,
        active_fraction=parts.active_fraction if parts is not None else nan,
        dead_fraction=float((frames.amax(dim=0) <= 0).float().mean()),
        seconds=time.perf_counter() - started,
    )
