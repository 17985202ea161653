"""Read-only access to the parts of a running learner that the side service shows.

The service never changes the learner. Everything it needs from it is optional, so the service
also runs with a learner that lacks probes or memories (then the probe and neighbour endpoints
answer 404 with a sentence saying so):

- ``learner.probe_readout() -> ProbeReadout | None`` (or ``StepReport.probes``): the online probes.
- ``learner.memories[m].nearest(query: Tensor (channels,), k) -> list[MemoryHit]``: nearest stored
  moments in module ``m``'s FAISS memory; safe to call from another thread. ``len(memory)`` is its
  number of stored vectors and ``memory.dim`` their size.
- for the weight drift, each module's parameters: ``learner.encoder_state()`` (``{name: Tensor}``,
  grouped into modules by the first integer in each name, ``"stages.3.conv.weight"`` -> module 3)
  or else ``learner.stages[m].module`` (an ``nn.Module``); copied on the learner's thread only
  (between two updates).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from online_gim.report import ProbeReadout, StepReport
from services.api_models import finite_or_none

_MODULE_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def probe_readout(learner: Any, report: StepReport) -> ProbeReadout | None:
    """The probes' readout for the step just reported, from the report or the learner; else ``None``."""
    readout = getattr(report, "probes", None)
    if readout is None and learner is not None:
        method = getattr(learner, "probe_readout", None)
        if callable(method):
            readout = method()
    return readout if isinstance(readout, ProbeReadout) else None


def memories(learner: Any) -> Sequence[Any] | Mapping[int, Any] | None:
    """The learner's per-module memories (a sequence or ``{module: memory}``), or ``None``."""
    found = getattr(learner, "memories", None) if learner is not None else None
    return found if isinstance(found, (Sequence, Mapping)) else None


def memory_for(learner: Any, module: int) -> Any | None:
    """Module ``module``'s memory, or ``None`` when it has none."""
    found = memories(learner)
    if found is None:
        return None
    if isinstance(found, Mapping):
        return found.get(module)
    return found[module] if 0 <= module < len(found) else None


def memory_sizes(learner: Any) -> dict[int, int]:
    """``{module: number of stored vectors}`` for every module that has a memory."""
    found = memories(learner)
    if found is None:
        return {}
    items = found.items() if isinstance(found, Mapping) else enumerate(found)
    sizes: dict[int, int] = {}
    for module, memory in items:
        if memory is None:
            continue
        size = _size_of(memory)
        if size is not None:
            sizes[int(module)] = size
    return sizes


def _size_of(memory: Any) -> int | None:
    try:
        return len(memory)
    except TypeError:
        return None


def hit_to_dict(hit: Any) -> dict[str, Any]:
    """A ``MemoryHit`` (``stream_seconds``, ``source_id``, ``step``, ``score``, ``speaker_id``,
    ``phone`` with -1 = unknown) as a plain dict with the API's field names."""
    source = getattr(hit, "source_id", None)
    speaker = getattr(hit, "speaker_id", None)
    phone = _int_or_none(getattr(hit, "phone", None))
    return {
        "stream_seconds": finite_or_none(getattr(hit, "stream_seconds", None)),
        "source_id": None if source is None else str(source),
        "model_step": _int_or_none(getattr(hit, "step", None)),
        "score": finite_or_none(getattr(hit, "score", None)),
        "speaker": None if speaker is None else str(speaker),
        "phone": None if phone is None or phone < 0 else phone,
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def module_weights(learner: Any) -> dict[int, list[torch.Tensor]] | None:
    """Detached CPU copies of each module's parameters, ``{module: [tensor, ...]}``, or ``None``.

    From ``learner.encoder_state()`` (grouped by the first integer in each name) when the learner
    has it, else from ``learner.stages[m].module.parameters()``. Call it on the learner's thread
    (between two updates) so that the copy is consistent.
    """
    if learner is None:
        return None
    method = getattr(learner, "encoder_state", None)
    if callable(method):
        state = method()
        if isinstance(state, Mapping):
            groups: dict[int, list[torch.Tensor]] = {}
            for name, tensor in state.items():
                if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                    continue
                match = _MODULE_INDEX.search(str(name))
                if match is not None:
                    groups.setdefault(int(match.group(1)), []).append(_copy(tensor))
            return groups or None
    stages = getattr(learner, "stages", None)
    if isinstance(stages, Sequence):
        groups = {}
        for index, stage in enumerate(stages):
            module = getattr(stage, "module", None)
            if isinstance(module, torch.nn.Module):
                groups[index] = [_copy(p) for p in module.parameters()]
        return groups or None
    return None


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)
