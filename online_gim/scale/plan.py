"""Which modules each stage of a pipeline holds: parsed from ``--pipeline 0-2,3-5`` or balanced
into ``--pipeline N`` stages by each module's measured cost."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from online_gim.config import LearnerConfig


@dataclass(frozen=True)
class PipelinePlan:
    """The stages of a pipeline, bottom to top: stage ``s`` holds the modules ``stages[s]`` (stack
    indices), contiguous, together the whole stack.

    Attributes:
        stages: each stage's modules.
        costs: the per-module seconds per window the plan was balanced by (``()`` when the
            boundaries were given).
    """

    stages: tuple[range, ...]
    costs: tuple[float, ...] = ()

    def __str__(self) -> str:
        return ",".join(f"{r.start}-{r.stop - 1}" for r in self.stages)

    def stage_of(self, module: int) -> int:
        """The stage that holds ``module``."""
        return next(s for s, modules in enumerate(self.stages) if module in modules)

    def stage_costs(self) -> list[float]:
        """Each stage's seconds per window (the sum of its modules' costs); empty without costs."""
        return [sum(self.costs[m] for m in modules) for modules in self.stages] if self.costs else []


def stage_count(spec: str) -> int:
    """Stages a ``--pipeline`` value asks for (``"2"``: 2; ``"0-2,3-5"``: 2). ``ValueError``: not a
    pipeline value."""
    spec = spec.strip()
    if spec.isdigit():
        count = int(spec)
    else:
        count = len(spec.split(","))
    if count < 2:
        raise ValueError(f"--pipeline needs at least 2 stages, got {spec!r}")
    return count


def parse_plan(spec: str, num_modules: int, bound: Sequence[tuple[int, int]] = ()) -> PipelinePlan:
    """The plan of ``--pipeline A-B,C-D,...`` for a stack of ``num_modules`` modules.

    Args:
        bound: pairs of modules that must share a stage (the GRU and the top conv module).
    Raises:
        ValueError: a malformed value, stages that leave out, repeat or reorder modules, an empty
            stage, or a bound pair split (the message says which).
    """
    stages: list[range] = []
    for part in spec.split(","):
        first, sep, last = part.strip().partition("-")
        if not (first.isdigit() and (not sep or last.isdigit())):
            raise ValueError(f"--pipeline stages are module ranges like 0-2,3-5; cannot read {part!r}")
        stages.append(range(int(first), int(last or first) + 1))
    expected = 0
    for modules in stages:
        if modules.start != expected or len(modules) == 0:
            raise ValueError(
                f"--pipeline {spec}: stages must cover modules 0..{num_modules - 1} in order, each once; "
                f"the stage after module {expected - 1} must start at {expected}"
            )
        expected = modules.stop
    if expected != num_modules:
        raise ValueError(f"--pipeline {spec}: stages must cover modules 0..{num_modules - 1}, they end at {expected - 1}")
    plan = PipelinePlan(tuple(stages))
    _check_bound(plan, bound)
    return plan


def balanced_plan(count: int, costs: Sequence[float], bound: Sequence[tuple[int, int]] = ()) -> PipelinePlan:
    """The ``count`` contiguous stages whose slowest stage is fastest, for modules costing
    ``costs`` seconds per window each, keeping every ``bound`` pair in one stage. ``ValueError``:
    more stages than the stack can be split into."""
    modules = len(costs)
    cuts = [c for c in range(1, modules) if not any(a < c <= b for a, b in bound)]  # a stage may start at these
    if count - 1 > len(cuts):
        raise ValueError(f"the stack of {modules} modules can be split into at most {len(cuts) + 1} stages, not {count}")
    best: tuple[float, tuple[int, ...]] | None = None
    for chosen in itertools.combinations(cuts, count - 1):
        edges = (0, *chosen, modules)
        slowest = max(sum(costs[edges[i] : edges[i + 1]]) for i in range(count))
        if best is None or slowest < best[0]:
            best = (slowest, edges)
    edges = best[1]
    return PipelinePlan(tuple(range(edges[i], edges[i + 1]) for i in range(count)), tuple(costs))


def plan_for(spec: str, config: LearnerConfig, costs: Sequence[float] | None = None) -> PipelinePlan:
    """The plan of a ``--pipeline`` value for a learner of ``config``: boundaries as given, or
    ``N`` stages balanced by ``costs`` (measured by :func:`module_costs` when not given)."""
    convs = len(config.encoder.convs)
    num_modules = convs + (config.encoder.gru != "none")
    bound = [(convs - 1, convs)] if config.encoder.gru != "none" else []
    if config.mode == "e2e":
        raise ValueError("an e2e learner trains its whole stack by one loss: it cannot run as a pipeline")
    if spec.strip().isdigit():
        return balanced_plan(stage_count(spec), costs if costs is not None else module_costs(config), bound)
    return parse_plan(spec, num_modules, bound)


def module_costs(config: LearnerConfig, windows: int = 3) -> list[float]:
    """Seconds per window each module of a learner of ``config`` takes to learn (its forward pass,
    memory write and update), the median over ``windows`` windows of noise after one warm-up."""
    from online_gim.learner import OnlineLearner
    from online_gim.streams.window import AudioWindow

    learner = OnlineLearner(config)
    generator = torch.Generator().manual_seed(0)
    seconds: list[list[float]] = [[] for _ in range(learner.num_modules)]
    for index in range(windows + 1):
        report = learner.step(AudioWindow(torch.randn(config.window, generator=generator) * 0.1, start_sample=index * config.window))
        if index:
            for module in report.modules:
                seconds[module.module].append(module.seconds)
    return [sorted(s)[len(s) // 2] for s in seconds]


def _check_bound(plan: PipelinePlan, bound: Sequence[tuple[int, int]]) -> None:
    for a, b in bound:
        if plan.stage_of(a) != plan.stage_of(b):
            raise ValueError(
                f"--pipeline {plan}: modules {a} and {b} must share a stage (the GRU predicts from the top conv "
                "module's memory)"
            )
