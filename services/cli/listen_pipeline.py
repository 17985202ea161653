"""``online-gim listen --pipeline``: the module stack as a pipeline of processes
(:mod:`online_gim.scale.pipeline`).

Started by hand, the command re-executes itself under ``torchrun`` with one process per stage.
Under a launcher, every rank joins the gloo group and agrees on the plan (``--pipeline N``: rank 0
measures the modules' costs and sends the balanced plan to all); then rank 0 runs the usual listen
run (source, session, side service, status line, ``--state``) with a
:class:`~online_gim.scale.pipeline.PipelineHead` as its learner (:class:`HeadRun`), and every other
rank a :class:`~online_gim.scale.pipeline.StageWorker` (:func:`run_stage`).

Exit codes: those of a single process, and :data:`~online_gim.services.cli.EXIT_PEER_LOST` when a
process of the run was lost (every other process then stops within seconds, says which one was
lost, and writes its summary).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from online_gim.services.cli import EXIT_PEER_LOST, CliError
from online_gim.services.cli.listen_options import ListenOptions

if TYPE_CHECKING:
    from online_gim.config import LearnerConfig
    from online_gim.run.audio import ListenSession, ListenSummary
    from online_gim.run.state import Checkpointer
    from online_gim.scale.pipeline import PipelineHead, PipelineSettings, StageTally

FINISH_SECONDS = 120.0
"""How long rank 0 waits, after the end of its stream, for the other stages to learn the windows
still on their way and report."""


def settings_for(options: ListenOptions, *, paced: bool) -> PipelineSettings:
    """Every rank's plan and pace (rank 0 decides a balanced plan and sends it to the others)."""
    import torch.distributed as dist

    from online_gim.scale.pipeline import PipelineSettings
    from online_gim.scale.plan import plan_for

    plan = [None]
    if dist.get_rank() == 0:
        try:
            plan = [plan_for(options.scale.pipeline, options.learner)]
        except ValueError as error:
            plan = [str(error)]
    dist.broadcast_object_list(plan, src=0)
    if isinstance(plan[0], str):
        raise CliError(plan[0])
    if dist.get_world_size() != len(plan[0].stages):
        raise CliError(f"--pipeline {plan[0]} has {len(plan[0].stages)} stages but the launcher started {dist.get_world_size()} processes")
    return PipelineSettings(plan=plan[0], sync=options.scale.pipeline_sync, paced=paced)


class HeadRun:
    """What rank 0's listen run does besides a single process': its learner is a
    :class:`~online_gim.scale.pipeline.PipelineHead`; each checkpoint it writes is also asked of
    every later stage, and the manifest names the shards; at the end it waits for the stages and adds
    their tallies to the summary (``pipeline``). It has no module budget: every stage updates all its
    modules, and the slowest stage sets the pace."""

    module_budget = False

    def __init__(self, options: ListenOptions) -> None:
        self.options = options
        self.head: PipelineHead | None = None
        self.failure: str | None = None
        self._manifest = None

    def learner(self, config: LearnerConfig, *, paced: bool) -> PipelineHead:
        from online_gim.learner import OnlineLearner
        from online_gim.scale.pipeline import PipelineHead
        from online_gim.scale.shards import PipelineManifest

        settings = settings_for(self.options, paced=paced)
        state = self.options.state
        if state is not None:
            try:
                manifest = PipelineManifest.read(state.directory)
                if manifest is not None:
                    manifest.check_plan(settings.plan, state.directory)
            except ValueError as error:
                raise CliError(str(error)) from None
            self._manifest = manifest or PipelineManifest(str(settings.plan))
        self.head = PipelineHead(OnlineLearner(config, settings.plan.stages[0]), settings, on_saved=self._saved)
        print(f"online-gim listen: pipeline {settings.plan}: " + ", ".join(p.name for p in self.head.places), file=sys.stderr)
        return self.head

    def attach(self, session: ListenSession, checkpointer: Checkpointer | None) -> None:
        if checkpointer is not None:
            session.add_observer(_CheckpointRelay(self.head, checkpointer))

    def run(self, session: ListenSession) -> ListenSummary:
        """Runs the session; a lost stage ends it (the summary says so)."""
        from online_gim.scale.channel import PeerLost

        try:
            return session.run()
        except PeerLost as lost:
            self.failure = f"lost {lost}"
            session.summary.stop_reason = "peer_lost"
            session.summary.error = self.failure
            return session.summary

    def finish(self, document: dict[str, Any]) -> int | None:
        """Waits for the other stages, adds ``pipeline`` to the summary; the exit code when a stage
        was lost."""
        from online_gim.scale.channel import PeerLost

        head = self.head
        tallies: list[StageTally] = []
        drain_started = time.monotonic()
        if self.failure is None:
            try:
                tallies = head.finish(FINISH_SECONDS)
            except (PeerLost, TimeoutError) as error:
                self.failure = f"lost {error}" if isinstance(error, PeerLost) else str(error)
                document["stop_reason"], document["error"] = "peer_lost", self.failure
        for tally in tallies:
            for module, loss in tally.final_loss.items():
                document["final_loss"][module] = loss
        windows = head.windows_sent
        document["pipeline"] = {
            "plan": str(head.settings.plan),
            "sync": head.settings.sync,
            "stages": [
                {"stage": 0, "modules": f"{head.places[0].modules.start}-{head.places[0].modules.stop - 1}",
                 "windows_processed": document["windows_processed"], "windows_dropped": document["windows_dropped"],
                 "windows_unsent": head.windows_unsent,
                 "compute_seconds": document["compute_seconds"], "model_step": document["model_step"]},
                *[vars(t) for t in tallies],
            ],
            "windows_sent": windows,
            "drain_seconds": time.monotonic() - drain_started,
            "bytes_per_window": head.bytes_sent / windows if windows else None,
            "error": self.failure,
        }
        if self.failure is not None:
            print(f"online-gim listen: error: {self.failure}; stopping every stage", file=sys.stderr)
            return EXIT_PEER_LOST
        return None

    def _saved(self, stage: int, number: int, model_step: int) -> None:
        self._manifest.shards[stage] = (number, model_step)
        self._manifest.write(self.options.state.directory)


class _CheckpointRelay:
    """After rank 0 wrote a checkpoint, asks every later stage for its shard (the request travels
    behind the windows sent so far), and writes the manifest."""

    def __init__(self, head: PipelineHead, checkpointer: Checkpointer) -> None:
        self.head, self.checkpointer = head, checkpointer
        self._written = checkpointer.written

    def on_step(self, window: object, report: object) -> None:
        if self.checkpointer.written != self._written:
            self._written = self.checkpointer.written
            self.head.request_checkpoint(self._written)

    def close(self) -> None:
        from online_gim.scale.channel import PeerLost

        try:
            self.on_step(None, None)  # the checkpointer saved once more when it closed (it closes first)
        except PeerLost:
            pass  # a lost stage: the head's finish names it; the observers after this one still close


def run_stage(options: ListenOptions, signals: Any) -> int:
    """A later stage's process: learns its modules from the windows the stage below sends, until
    rank 0 ends the pipeline. Returns the exit code."""
    import torch.distributed as dist

    from online_gim.learner import OnlineLearner
    from online_gim.scale.pipeline import StageWorker, stage_places
    from online_gim.scale.shards import StageShards
    from online_gim.state.store import CheckpointError

    settings = settings_for(options, paced=True)
    place = stage_places(settings.plan)[dist.get_rank()]
    learner = OnlineLearner(options.learner, place.modules)
    shards = None
    if options.state is not None:
        try:
            shards = StageShards(Path(options.state.directory), place.index, keep=options.state.keep)
            resumed = shards.restore(learner)
        except (CheckpointError, ValueError) as error:
            raise CliError(f"{place.name}: cannot resume: {error}") from None
        if resumed is not None:
            print(f"online-gim listen: {place.name}: resuming from model step {resumed}", file=sys.stderr)
    worker = StageWorker(place, learner, settings, save=(lambda number: shards.save(learner, number)) if shards else None)
    signals.session = worker
    try:
        tally = worker.run()
    finally:
        if shards is not None:
            shards.close()
    if not options.run.quiet:
        losses = " ".join("-" if v is None else f"{v:.3f}" for v in tally.final_loss.values())
        print(
            f"{place.name}: windows {tally.windows_processed} (dropped {tally.windows_dropped}, non-finite "
            f"{tally.windows_skipped_nonfinite}), compute {tally.compute_seconds:.1f} s, model step {tally.model_step}, "
            f"shards written {tally.checkpoints_written}, final loss {losses}"
        )
    if tally.error is not None:
        print(f"online-gim listen: error: {place.name}: {tally.error}; stopping", file=sys.stderr)
        return EXIT_PEER_LOST
    return 0
