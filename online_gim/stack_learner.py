"""What every learner made of a stack of :class:`~online_gim.local_update.LocalStage` s shares: the
audio learner (:class:`~online_gim.learner.OnlineLearner`) and the video learner
(:class:`~online_gim.video.learner.VideoLearner`) are :class:`StackLearner` s.

A :class:`StackLearner` holds the seeded random generators, the running input statistics, the
stages, the module schedule, the counters and the step guard (:mod:`online_gim.finite`), and
implements the :class:`~online_gim.run.contract.StreamLearner` contract around one method a
subclass writes, :meth:`StackLearner._learn` (the forward passes and updates of one window). It
owns the step (the window's check, the counters, the guard, replay, the report) and the state tree
(``state_dict`` / ``load_state_dict``, with the repair of non-finite parts); a subclass adds what
its stack holds besides (the audio GRU's state and traces, the video decorrelation statistics)
through the ``_extra_*`` and ``_stage_*`` hooks.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from online_gim.finite import StepGuard, repair_loaded_state, repairable_paths
from online_gim.input_norm import InputNormalizer
from online_gim.local_update import LocalStage, ModuleSchedule
from online_gim.memory import NegativeMemory
from online_gim.report import ModuleReport, ProbeReadout, SkipReason, StepReport
from online_gim.run.contract import StreamWindow

W = TypeVar("W", bound=StreamWindow)


class StackLearner(Generic[W]):
    """A stack of gradient-isolated modules (or, in ``e2e`` mode, one trained end to end) that
    learns window by window.

    Subclasses build, in their ``__init__`` after ``super().__init__(config)``: ``input_norm``,
    ``stages`` (and what else their stack holds), then call :meth:`_start`. They implement
    :meth:`_window_values`, :meth:`_learn` and :meth:`embed`.

    Attributes:
        config: the learner's typed configuration (``seed``, ``schedule``, ...).
        stages: the modules, bottom to top, each with everything that trains it.
        steps: live windows stepped (skipped ones included); ``replayed``: replayed ones.
        updates: windows that updated weights (the model step).
        windows_skipped_nonfinite: windows skipped (non-finite, unrepresentable level, or rolled back).
    """

    input_norm: InputNormalizer

    def __init__(self, config: BaseModel) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self._rng = np.random.default_rng(config.seed)  # the module schedule's; each stage has its own
        self.stages: list[LocalStage] = []
        self.first_module = 0
        self.steps = 0
        self.updates = 0
        self.replayed = 0
        self.windows_skipped_nonfinite = 0

    def _start(self, schedule: str, *, stack_modules: int | None = None) -> None:
        """Ends the construction: the module schedule (``all``, ``random``, ``round_robin``) and the
        step guard, which keeps a copy of the fresh learner's volatile state. ``stack_modules``: the
        modules of the whole stack when this learner holds a part of it (a pipeline stage: its
        modules are ``first_module ..``); the schedule chooses among the whole stack's, as the
        whole stack's learner would."""
        self._schedule = ModuleSchedule(schedule, stack_modules or len(self.stages), self._rng)
        self._guard = StepGuard(self._volatile_state, self._load_volatile_state)

    @property
    def num_modules(self) -> int:
        return len(self.stages)

    @property
    def module_indices(self) -> range:
        """The stack indices of this learner's modules (``range(num_modules)`` unless it is a
        pipeline stage); reports and the ``modules`` argument of :meth:`step` use them."""
        return range(self.first_module, self.first_module + len(self.stages))

    @property
    def memories(self) -> list[NegativeMemory]:
        """Each module's negative memory (stages may share one)."""
        return [stage.memory for stage in self.stages]

    def probe_readout(self) -> ProbeReadout | None:
        """The online probes' readout of the newest window; ``None``: this learner has no probes."""
        return None

    def module_parameters(self) -> list[list[torch.Tensor]]:
        """Per module, its parameters (live tensors)."""
        return [list(stage.module.parameters()) for stage in self.stages]

    # ------------------------------------------------------------------ the step

    def step(self, window: W, modules: Sequence[int] | None = None, *, replay: bool = False) -> StepReport:
        """Learns from one window.

        Args:
            window: the window (its data as :meth:`_window_values` requires).
            modules: update only these modules (stack indices) this window (overrides the
                schedule); all modules still run forward.
            replay: the window is replayed from the past: the weights update as on a new window,
                but nothing that describes the live stream changes (running statistics, memories,
                probes, recurrent state: :meth:`_replay_scope`); counted in ``replayed``, not in
                ``steps``.
        Returns:
            The :class:`StepReport` of this window. A window that cannot be learned from (NaN/Inf
            values, a level float32 cannot represent, or one that made the state non-finite and
            was rolled back) changes nothing but ``windows_skipped_nonfinite``, and its report says
            why (``skip``).
        Raises:
            ValueError: the window has the wrong shape, or ``modules`` names no module.
        """
        started = time.perf_counter()
        values = self._window_values(window)
        if replay:
            self.replayed += 1
        else:
            self.steps += 1
        outcome = self._guard.run(values, lambda: self._learn_guarded(window, self._scheduled(modules), started, replay))
        if not isinstance(outcome, SkipReason):
            return outcome
        self.windows_skipped_nonfinite += 1
        return self._report(window, [], [], started, skip=outcome, replay=replay)

    def _scheduled(self, modules: Sequence[int] | None) -> set[int]:
        """The modules to update this window, as indices into :attr:`stages`: the schedule chooses
        among the whole stack's (``modules`` overrides it), this learner updates those it holds.
        Asked only of a window that passed the level check (a skipped window takes no turn)."""
        return {index - self.first_module for index in self._schedule.choose(modules)} & set(range(len(self.stages)))

    def _window_values(self, window: W) -> torch.Tensor:
        """The window's data (samples, frames), checked. Raises ``ValueError`` for a wrong shape."""
        raise NotImplementedError

    def _learn(
        self, window: W, scheduled: set[int], replay: bool
    ) -> tuple[list[ModuleReport], list[torch.Tensor], ProbeReadout | None]:
        """The forward passes and updates of a window that passed the level check (``scheduled``:
        the modules to update, as indices into :attr:`stages`), inside the step
        guard: calls ``self._guard.verify(outputs=...)`` before any memory write or weight update
        (raising :class:`~online_gim.finite.NonFiniteState` rolls the window back). Writes no memory
        when ``replay``. Returns each module's report and ``(frames, channels)`` output, and the
        probes' readout (``None`` without probes or on a replay)."""
        raise NotImplementedError

    def _learn_guarded(self, window: W, scheduled: set[int], started: float, replay: bool) -> StepReport:
        with self._replay_scope() if replay else nullcontext():
            modules, embeddings, probes = self._learn(window, scheduled, replay)
            self._guard.verify(outputs=embeddings)
        if any(report.updated for report in modules):
            self.updates += 1
        return self._report(window, modules, embeddings, started, probes=probes, replay=replay)

    @contextmanager
    def _replay_scope(self) -> Iterator[None]:
        """The live stream's volatile state (what the step guard watches), copied before a replayed
        window and put back after it; :meth:`_begin_replay` prepares the stack for it."""
        saved = copy.deepcopy(self._volatile_state())
        self._begin_replay()
        try:
            yield
        finally:
            self._load_volatile_state(saved)

    def _begin_replay(self) -> None:
        """Before a replayed window (inside :meth:`_replay_scope`): nothing by default."""

    def _report(
        self,
        window: W,
        modules: list[ModuleReport],
        embeddings: list[torch.Tensor],
        started: float,
        *,
        probes: ProbeReadout | None = None,
        skip: SkipReason | None = None,
        replay: bool = False,
    ) -> StepReport:
        return StepReport(
            step=self.steps,
            updates=self.updates,
            window_start=window.start,
            window_length=window.length,
            skipped_nonfinite=skip is not None,
            modules=tuple(modules),
            embeddings=tuple(embeddings),
            seconds=time.perf_counter() - started,
            rate=window.rate,
            probes=probes,
            skip=skip,
            replay=replay,
        )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, object]:
        """The whole learner state: weights, statistics, optimisers, memories, RNGs, counters, and
        what the subclass holds besides (:meth:`_extra_state`)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "modules": [self.module_indices.start, self.module_indices.stop],
            "input_norm": self.input_norm.state_dict(),
            "stages": [
                {
                    "module": stage.module.state_dict(),
                    "head": stage.head.state_dict(),
                    "optimizer": stage.optimizer.state_dict(),
                    "generators": stage.generator_state(),
                    **self._stage_state(index),
                }
                for index, stage in enumerate(self.stages)
            ],
            "counters": {
                "steps": self.steps,
                "updates": self.updates,
                "windows_skipped_nonfinite": self.windows_skipped_nonfinite,
                "replayed": self.replayed,
                "round_robin": self._schedule.round_robin,
            },
            "numpy_rng": self._rng.bit_generator.state,
            **self._extra_state(),
        }

    def _stage_state(self, index: int) -> dict[str, object]:
        """What stage ``index``'s entry of the state holds besides its module, head and optimiser."""
        return {}

    def _extra_state(self) -> dict[str, object]:
        """Top-level entries of the state besides the common ones."""
        return {}

    def load_state_dict(self, state: dict[str, object]) -> list[str]:
        """Restores :meth:`state_dict`'s output.

        A state may hold NaN or Inf where the stream can estimate the values again (a checkpoint
        written before the step guard, :mod:`online_gim.finite`): such parts are reset to their
        initial values: running input and normalisation statistics, recurrent state, probes, an
        optimiser's moments, a memory's entries.

        Returns:
            The parts reset (``input_norm``, ``stages.2.module``, ``memories.0``, ...), empty for a
            sound state.
        Raises:
            ValueError: the state was written with a different configuration (the message names
                the first differing field), or by a learner holding other modules of the stack.
            NonFiniteState: learned weights (a module's parameters or its prediction head) are not
                finite: they cannot be estimated again; nothing is changed.
        """
        saved = type(self.config).from_saved(state["config"])
        if saved != self.config:
            raise ValueError(f"state was saved with a different config: {first_difference(saved, self.config)}")
        modules = range(*state.get("modules", (0, len(state["stages"]))))  # absent before pipeline stages: the whole stack
        if modules != self.module_indices:
            raise ValueError(
                f"state holds modules {modules.start}-{modules.stop - 1} of the stack, this learner modules "
                f"{self.module_indices.start}-{self.module_indices.stop - 1}"
            )
        paths = repairable_paths(state, self.stages)
        self.input_norm.load_state_dict(state["input_norm"])
        for index, (stage, saved_stage) in enumerate(zip(self.stages, state["stages"])):
            stage.module.load_state_dict(saved_stage["module"])
            stage.head.load_state_dict(saved_stage["head"])
            stage.optimizer.load_state_dict(saved_stage["optimizer"])
            if "generators" in saved_stage:  # absent from checkpoints written before per-module generators
                stage.load_generator_state(saved_stage["generators"])
            self._load_stage_state(index, saved_stage)
        counters = state["counters"]
        self.steps = int(counters["steps"])
        self.updates = int(counters["updates"])
        self.windows_skipped_nonfinite = int(counters["windows_skipped_nonfinite"])
        self.replayed = int(counters.get("replayed", 0))  # absent from checkpoints written before replay
        self._schedule.round_robin = int(counters["round_robin"])
        self._rng.bit_generator.state = state["numpy_rng"]
        self._load_extra_state(state)
        return repair_loaded_state(paths, self._guard, optimizers=self._named_optimizers(), memories=self._named_memories())

    def _load_stage_state(self, index: int, saved: dict[str, Any]) -> None:
        """Loads what :meth:`_stage_state` added to stage ``index``'s entry."""

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Loads what :meth:`_extra_state` added."""

    def _named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser, by its place in the state (``stages.0.optimizer``)."""
        return {f"stages.{index}.optimizer": stage.optimizer for index, stage in enumerate(self.stages)}

    def _named_memories(self) -> dict[str, NegativeMemory]:
        """Every memory, by its place in the state."""
        raise NotImplementedError

    def _stage_buffers(self, index: int) -> dict[str, nn.Module]:
        """The parts of stage ``index`` whose buffers are volatile state (running statistics), by
        their key in the stage's entry: its module, and what the subclass adds."""
        return {"module": self.stages[index].module}

    def _volatile_state(self) -> dict[str, object]:
        """What a step changes besides the weights, the optimiser moments and the memories (whose
        commits guard themselves), as live tensors: the step guard's view (:mod:`online_gim.finite`)."""
        return {
            "input_norm": self.input_norm.state_dict(),
            "stages": [
                {name: dict(part.named_buffers()) for name, part in self._stage_buffers(index).items()}
                for index in range(len(self.stages))
            ],
            **self._extra_volatile_state(),
        }

    def _extra_volatile_state(self) -> dict[str, object]:
        """Volatile state besides the input statistics and the stages' buffers (live tensors)."""
        return {}

    def _load_volatile_state(self, state: dict[str, Any]) -> None:
        """Restores a copy of :meth:`_volatile_state`."""
        self.input_norm.load_state_dict(state["input_norm"])
        for index, saved in enumerate(state["stages"]):
            for name, part in self._stage_buffers(index).items():
                for key, buffer in part.named_buffers():
                    buffer.copy_(saved[name][key])
        self._load_extra_volatile_state(state)

    def _load_extra_volatile_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`_extra_volatile_state` read."""


def first_difference(a: BaseModel, b: BaseModel) -> str:
    """Names the first field (dotted path) where two configs differ, with both values."""

    def walk(x: object, y: object, path: str) -> str | None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in x:
                found = walk(x[key], y.get(key), f"{path}.{key}" if path else key)
                if found:
                    return found
            return None
        return None if x == y else f"{path}: saved {x!r}, now {y!r}"

    return walk(a.model_dump(mode="json"), b.model_dump(mode="json"), "") or "unknown field"
