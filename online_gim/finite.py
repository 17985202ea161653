"""Finiteness of learner state: where a state tree holds NaN or Inf, and the guard of a learner's step.

A window whose samples hold NaN/Inf or a level float32 cannot represent is refused before
anything changes (:meth:`~online_gim.input_norm.InputNormalizer.refusal`). Of what the step of
any other window changes, some is committed by a guard of its own: an optimiser steps only with a
finite gradient norm, clipped (:func:`~online_gim.local_update.step_optimizer`), and a memory
stores only finite vectors (:meth:`~online_gim.memory.NegativeMemory.add`). Everything else
(running statistics, the GRU's state, e-prop traces, probes) is *volatile*: :class:`StepGuard`
copies it before the step, checks it (and the encodings) before the memory writes and weight
updates and again at the end, and puts the copy back when the window made any of it non-finite.
So whatever goes wrong inside a step, no NaN or Inf stays in the learner's state.

:func:`nonfinite_paths` is the one way to find non-finite values in a state tree (a learner's
``state_dict()``, a checkpoint, an exported encoder): the guard, resume, export and the
checkpointer all use it.

Example:
    >>> import torch
    >>> nonfinite_paths({"input_norm": {"mean": torch.zeros(()), "var": torch.tensor(float("inf"))}, "steps": 3})
    ['input_norm.var']
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from online_gim.input_norm import InputNormalizer
from online_gim.report import SkipReason

T = TypeVar("T")


class NonFiniteState(ValueError):
    """A learner's state (or a value about to enter it) holds NaN or Inf.

    Attributes:
        paths: where, as dotted paths in the state tree (``stages.0.module.running_var``).
    """

    def __init__(self, message: str, paths: list[str]) -> None:
        super().__init__(message)
        self.paths = paths


def nonfinite_paths(tree: Any, prefix: str = "") -> list[str]:
    """The dotted paths of the floating-point tensors, arrays and numbers of ``tree`` that hold NaN
    or Inf (dicts and sequences are walked; everything else is ignored).

    Args:
        tree: a state tree (dicts, lists, tuples, tensors, numpy arrays, numbers).
        prefix: the path of ``tree`` itself.
    """
    if isinstance(tree, torch.Tensor):
        return [] if not tree.is_floating_point() or _finite(tree.detach()) else [prefix]
    if isinstance(tree, np.ndarray):
        finite = not np.issubdtype(tree.dtype, np.floating) or bool(np.isfinite(tree).all())
        return [] if finite else [prefix]
    if isinstance(tree, float):
        return [] if math.isfinite(tree) else [prefix]
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return []
    found: list[str] = []
    for key, value in items:
        found += nonfinite_paths(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def state_part(path: str) -> str:
    """The part of a learner state that a dotted path lies in: ``stages.N.<part>`` inside a stage
    (``stages.2.module``, ``stages.2.optimizer``), else its top-level key (``input_norm``, ``traces``)."""
    keys = path.split(".")
    return ".".join(keys[:3]) if keys[0] == "stages" and len(keys) >= 3 else keys[0]


def replace_parts(tree: dict[str, Any], fresh: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """A copy of ``tree`` with each of ``parts`` (:func:`state_part` names) taken from ``fresh``, a
    tree of the same shape; a part ``tree`` does not hold is ignored."""
    tree = copy.deepcopy(tree)
    for part in parts:
        keys: list[Any] = [int(key) if key.isdigit() else key for key in part.split(".")]
        target, source = tree, fresh
        try:
            for key in keys[:-1]:
                target, source = target[key], source[key]
            target[keys[-1]] = copy.deepcopy(source[keys[-1]])
        except (KeyError, IndexError, TypeError):
            continue
    return tree


def _finite(tensor: torch.Tensor) -> bool:
    """Whether every value of a floating-point tensor is finite. NaN and Inf carry through a sum, so
    a finite sum proves it in one pass; only a sum that overflows needs the element-wise check."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def describe_paths(paths: list[str], *, limit: int = 6) -> str:
    """``paths`` for a sentence: the first ``limit`` of them, then how many more."""
    shown = ", ".join(paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


def require_finite(vectors: torch.Tensor, what: str) -> None:
    """Raises :class:`NonFiniteState` unless every value of ``vectors`` is finite (``what`` names them)."""
    if not _finite(vectors):
        raise NonFiniteState(f"{what} are not finite", [what])


class StepGuard:
    """Keeps a learner's state finite across its steps.

    :meth:`run` is the learner's step: it refuses a window whose samples cannot be learned from
    (:meth:`InputNormalizer.refusal`) before anything changes, and runs the step of any other
    between :meth:`begin`, which copies the volatile state, and :meth:`rollback`, which puts the
    copy back when the step raised :class:`NonFiniteState`. The step calls :meth:`verify` before
    each commit that cannot be undone (memory writes, weight updates) and at its end: it raises
    :class:`NonFiniteState` when the volatile state, or the outputs it is given, are not finite.

    Usage (the learner's step)::

        outcome = guard.run(samples, lambda: learn(window))   # learn calls guard.verify(...)
        if isinstance(outcome, SkipReason):
            ...                                                 # skipped: report and count it

    Parameters:
        read: returns the learner's volatile state as a tree that holds its live tensors (not copies).
        restore: loads a tree of the shape ``read`` returns back into the learner.
    """

    def __init__(self, read: Callable[[], dict[str, Any]], restore: Callable[[dict[str, Any]], None]) -> None:
        self._read = read
        self._restore = restore
        self._saved: dict[str, Any] | None = None
        self._initial = copy.deepcopy(read())  # the fresh learner's, for reset()

    def run(self, samples: torch.Tensor, learn: Callable[[], T]) -> T | SkipReason:
        """``learn()``'s result, or why the window of ``samples`` was skipped: refused before
        anything changed (its level), or rolled back (``nonfinite_state``)."""
        refusal = InputNormalizer.refusal(samples)
        if refusal is not None:
            return refusal
        self.begin()
        try:
            return learn()
        except NonFiniteState as error:
            self.rollback()
            return SkipReason("nonfinite_state", f"{error}; the learner's state was rolled back")

    def begin(self) -> None:
        """Copies the volatile state (tensors are cloned)."""
        self._saved = copy.deepcopy(self._read())

    def verify(self, outputs: Any = ()) -> None:
        """Raises :class:`NonFiniteState` naming what is not finite: the volatile state, or ``outputs``
        (a tree of what the step returns, under the path ``outputs``)."""
        paths = nonfinite_paths(self._read()) + nonfinite_paths(outputs, "outputs")
        if paths:
            raise NonFiniteState(f"it made {describe_paths(paths)} non-finite", paths)

    def rollback(self) -> None:
        """Restores the copy :meth:`begin` took."""
        if self._saved is None:
            raise RuntimeError("rollback without begin")
        self._restore(self._saved)
        self._saved = None

    def reset(self, parts: list[str]) -> None:
        """Puts ``parts`` (:func:`state_part` names) of the volatile state back to their values when
        the guard was made, those of the fresh learner; other names are ignored."""
        self._restore(replace_parts(self._read(), self._initial, parts))


def repairable_paths(state: dict[str, Any], stages: Sequence[Any]) -> list[str]:
    """The non-finite paths of a learner state about to be loaded (:func:`nonfinite_paths`), when
    none of them is a learned weight.

    Args:
        state: the learner's state tree (``state_dict()`` layout: ``stages.N.module``, ``stages.N.head``).
        stages: the learner's stages (their ``module`` buffers are statistics, not learned weights).
    Raises:
        NonFiniteState: a learned weight (a parameter of a stage's module or prediction head) is
            not finite: it cannot be estimated again.
    """
    paths = nonfinite_paths(state)
    statistics = {f"stages.{i}.module.{name}" for i, stage in enumerate(stages) for name, _ in stage.module.named_buffers()}
    weights = [path for path in paths if state_part(path).split(".")[-1] in ("module", "head") and path not in statistics]
    if weights:
        raise NonFiniteState(f"its learned weights are not finite ({describe_paths(weights)})", weights)
    return paths


def repair_loaded_state(
    paths: list[str], guard: StepGuard, *, optimizers: dict[str, torch.optim.Optimizer], memories: dict[str, Any]
) -> list[str]:
    """After a learner loaded a state whose ``paths`` are not finite (none of them learned weights),
    resets what the stream estimates again: the volatile parts that hold them (``guard.reset``),
    the moments of the optimisers among them (Adam starts its estimates again), and every memory
    whose stored vectors are not finite (emptied).

    Args:
        paths: the loaded state's non-finite paths (:func:`nonfinite_paths`).
        guard: the learner's step guard.
        optimizers: the learner's optimisers by :func:`state_part` name (``stages.0.optimizer``).
        memories: its memories (``finite()``, ``clear()``) by their name in the state (``memories.0``).
    Returns:
        The parts reset, sorted (empty for a sound state).
    """
    parts = sorted({state_part(path) for path in paths})
    for part in parts:
        if part in optimizers:
            optimizers[part].state.clear()
    if parts:
        guard.reset(parts)
    for name, memory in memories.items():
        if not memory.finite():
            memory.clear()
            parts.append(name)
    return parts
