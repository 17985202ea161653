"""A pipeline's state on disk: one shard per stage and a manifest, in the run's state directory.

Layout (``--state DIR`` of ``online-gim listen --pipeline``)::

    DIR/                  rank 0's run state (stage 0's learner, the stream's resume point):
                          a :class:`~online_gim.run.audio_state.ListenState`, as a single process'
    DIR/stage-1/ ...      stage s's shard: a :class:`~online_gim.state.store.CheckpointStore` of
                          ``{"learner": its learner's state}`` (modules, optimisers, memories)
    DIR/pipeline.json     the manifest (rank 0): the plan, and per stage the newest shard saved
                          (checkpoint number, model step)

A checkpoint request travels down with the windows, so shard ``n`` of every stage holds exactly the
windows rank 0 had sent when it wrote its own checkpoint ``n`` (less those a stage dropped).
Resuming with another plan is refused: a shard holds its stage's modules only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from online_gim.learner import OnlineLearner
from online_gim.scale.plan import PipelinePlan
from online_gim.state.atomic import write_atomic
from online_gim.state.store import CheckpointStore

MANIFEST = "pipeline.json"


@dataclass
class PipelineManifest:
    """The manifest: the plan (``"0-2,3-5"``) and each later stage's newest shard (stage -> checkpoint
    number and model step)."""

    plan: str
    shards: dict[int, tuple[int, int]] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        """Writes ``directory/pipeline.json`` atomically."""
        document = {"plan": self.plan, "shards": {str(k): {"checkpoint": n, "model_step": s} for k, (n, s) in self.shards.items()}}
        write_atomic(directory / MANIFEST, (json.dumps(document, indent=2) + "\n").encode())

    @classmethod
    def read(cls, directory: Path) -> PipelineManifest | None:
        """The manifest in ``directory``; ``None`` when there is none. ``ValueError``: unreadable."""
        path = directory / MANIFEST
        if not path.exists():
            return None
        try:
            document = json.loads(path.read_text())
            shards = {int(k): (int(v["checkpoint"]), int(v["model_step"])) for k, v in document["shards"].items()}
            return cls(str(document["plan"]), shards)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a pipeline manifest: {error}") from None

    def check_plan(self, plan: PipelinePlan, directory: Path) -> None:
        """``ValueError`` unless the state was written by a pipeline of the same stages."""
        if self.plan != str(plan):
            raise ValueError(f"state {directory} was written by the pipeline {self.plan}, not {plan}: run with --pipeline {self.plan}")


class StageShards:
    """A later stage's shard store, ``directory/stage-<stage>`` (created when missing, locked while
    open)."""

    def __init__(self, directory: Path, stage: int, *, keep: int = 3) -> None:
        self.store = CheckpointStore(directory / f"stage-{stage}", keep=keep)

    def restore(self, learner: OnlineLearner) -> int | None:
        """Loads the newest shard into ``learner``; returns its model step (``None``: no shard yet).
        Raises ``ValueError`` for a shard of other modules or another configuration."""
        checkpoint = self.store.load_newest()
        if checkpoint is None:
            return None
        learner.load_state_dict(checkpoint.state["learner"])
        return learner.updates

    def save(self, learner: OnlineLearner, number: int) -> None:
        """Saves ``learner``'s state as the shard of checkpoint ``number`` (atomic)."""
        self.store.save({"learner": learner.state_dict()}, info={"model_step": learner.updates, "checkpoint": number})

    def close(self) -> None:
        self.store.close()
