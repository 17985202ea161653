"""The module stack as a pipeline of processes: each stage holds a contiguous part of the stack
(:class:`~online_gim.scale.plan.PipelinePlan`) and learns it by its own local losses, memories and
optimisers; only activations flow forward, nothing flows back.

Rank 0 holds stage 0 and the stream (source, ring buffer, windowing, the session loop, the side
service): its learner is a :class:`PipelineHead`, which learns stage 0's modules on each window and
sends their output, detached, with the window's place and labels
(:class:`~online_gim.stage_window.ActivationWindow`), to stage 1. Rank ``s`` holds stage ``s`` and
runs :class:`StageWorker`: it learns from each window it receives and sends its output on to stage
``s + 1``. Every stage reports each window (its modules' :class:`~online_gim.report.ModuleReport` s,
labelled with the stage) to rank 0, whose observers (status line, ``/metrics``) then show every
module of every stage.

**Pace.** No stage ever waits for a later one. On a paced stream (a microphone, a replay at
``--speed`` N) rank 0 sends every window at once; a stage that falls behind drops the oldest window
waiting for it (its inbox holds :attr:`PipelineSettings.queue_windows`) and counts it. On an unpaced
stream (``--speed max``: nothing may be lost) rank 0 keeps at most ``queue_windows`` windows between
itself and the last stage, so nothing is dropped and the pipeline runs at its slowest stage's pace.

**What equals one process.** Nothing flows back, so a stage's input for window ``w`` is the
output of the modules below as they were after window ``w - 1``, exactly as in one process, however
late the stage learns it; and every module has its own generators
(:class:`~online_gim.local_update.LocalStage`). So a pipeline that drops no window learns the
weights of the single-process learner for the same seed and stream, asynchronous or not; what is
stale is only *when*: stage ``s`` learns window ``w`` up to ``queue_windows`` windows after stage
``s - 1`` did. It differs from one process (1) where a stage drops windows (a paced stream and a
stage slower than it): that stage and those above learn fewer windows; (2) on a window that a
module of a later stage makes non-finite: one process rolls the whole stack back, a pipeline only
that stage; (3) ``--schedule auto`` and ``--replay``, which a pipeline does not run. Synchronous mode
(``sync``: rank 0 sends a window only after the last stage reported the one before) also rules out
(1) on a paced stream; it is for tests.

**Checkpoints.** A checkpoint request travels down with the windows (:class:`Kind.CHECKPOINT`): each
stage saves its shard after exactly the windows before it, and says so to rank 0
(:mod:`online_gim.scale.shards`).

**Failure.** A stage that dies closes its connections; the others see it at their next receive or
send (gloo raises at once), stop, say which stage was lost and exit with a summary
(:class:`~online_gim.scale.channel.PeerLost`). As the processes that see a loss stop too, and close
their own connections, the one lost first is named by a verdict: a stage that sees a neighbour go
tells rank 0 (:class:`Kind.LOST`); rank 0 names the link that failed first (or the stage a notice
named) and sends that name to every stage before it leaves; a stage whose link to rank 0 closes
without a verdict names rank 0.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from online_gim.learner import OnlineLearner
from online_gim.memory import NegativeMemory
from online_gim.report import ModuleReport, ProbeReadout, StepReport
from online_gim.scale.channel import Inbox, Kind, Message, Outbox, PeerLost, Tag
from online_gim.scale.plan import PipelinePlan
from online_gim.stage_window import ActivationWindow
from online_gim.streams.window import AudioWindow, UtteranceSpan

POLL_SECONDS = 0.1
"""How long one wait for a message lasts before the waiter looks at its other links again."""

STOP_GRACE_SECONDS = 10.0
"""How long a later stage that got a stop signal waits for rank 0's end of stream."""

FLUSH_SECONDS = 10.0
"""How long a stage waits for its last messages to be sent before it leaves."""

SETTLE_SECONDS = 0.3
"""How long rank 0, having seen a loss, waits for the other links and notices before it names the
process lost first."""

VERDICT_SECONDS = 2.0
"""How long a stage that saw a neighbour go waits for rank 0's verdict before it names the neighbour."""

FINAL_LOSS_UPDATES = 10
"""A stage's ``final_loss`` of a module: the mean of its last this-many losses (as one process')."""


@dataclass(frozen=True)
class StagePlace:
    """Stage ``index`` of a pipeline: the modules it holds; it runs as rank ``index``."""

    index: int
    modules: range

    @property
    def rank(self) -> int:
        return self.index

    @property
    def name(self) -> str:
        return f"stage {self.index} (modules {self.modules.start}-{self.modules.stop - 1}, rank {self.rank})"


def stage_places(plan: PipelinePlan) -> list[StagePlace]:
    """The places of a plan's stages, bottom to top."""
    return [StagePlace(index, modules) for index, modules in enumerate(plan.stages)]


@dataclass(frozen=True)
class PipelineSettings:
    """How the stages keep pace.

    Attributes:
        plan: the stages.
        sync: rank 0 sends a window only after the last stage reported the one before.
        paced: rank 0's stream runs at its own pace (never wait for the stages; they drop windows).
        queue_windows: windows a stage's inbox holds (and, unpaced, windows in flight at most).
    """

    plan: PipelinePlan
    sync: bool = False
    paced: bool = False
    queue_windows: int = 4


@dataclass(frozen=True)
class WindowMeta:
    """What travels with a window's activations: its number (rank 0 counts the windows it sends),
    its place in the stream and its labels."""

    sequence: int
    start_sample: int
    length: int
    source_id: str
    phones: np.ndarray | None
    spans: tuple[UtteranceSpan, ...]

    def window(self, activations: torch.Tensor) -> ActivationWindow:
        return ActivationWindow(
            activations=activations, start_sample=self.start_sample, length=self.length, source_id=self.source_id,
            phones=self.phones, spans=self.spans,
        )


@dataclass(frozen=True)
class StageReport:
    """A stage's report of one window, to rank 0 (``probes``: the online probes' readout, from the
    stage that holds the probed module)."""

    stage: int
    sequence: int
    modules: tuple[ModuleReport, ...]
    seconds: float
    skipped: bool
    updates: int
    windows_dropped: int
    probes: ProbeReadout | None = None


@dataclass
class StageTally:
    """What a stage did over the run (its final message to rank 0; rank 0's own for stage 0).

    Counts are windows (``windows_dropped``: lost waiting for this stage; ``windows_unsent``: learned
    here but dropped on the way to the next stage, whose link was slower than this stage); ``first_loss`` and ``final_loss`` map each of the stage's modules to the mean
    of its first and of its last :data:`FINAL_LOSS_UPDATES` losses (``None``: never updated);
    ``error``: why the stage stopped early.
    """

    stage: int
    modules: str
    windows_processed: int = 0
    windows_dropped: int = 0
    windows_unsent: int = 0
    windows_skipped_nonfinite: int = 0
    compute_seconds: float = 0.0
    model_step: int = 0
    checkpoints_written: int = 0
    first_loss: dict[str, float | None] = field(default_factory=dict)
    final_loss: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None


def next_window_message(sequence: int, window: AudioWindow | ActivationWindow, top: torch.Tensor) -> Message:
    """The message that carries ``window``'s ``(frames, C)`` top output ``top`` to the next stage
    (as ``(C, frames)`` activations, the layout a conv module reads)."""
    meta = WindowMeta(
        sequence=sequence, start_sample=window.start_sample, length=window.length, source_id=window.source_id,
        phones=window.phones, spans=window.spans,
    )
    return Message(Kind.WINDOW, meta, top.T.contiguous())


class PipelineHead:
    """Rank 0's learner (a :class:`~online_gim.run.contract.StreamLearner` for the session loop):
    stage 0's modules, learned here, and the other stages, reached by messages.

    Its reports hold stage 0's modules and the newest report of each other stage that arrived since
    the step before (in ``sync`` mode: this window's), and the online probes' newest readout, from
    whichever stage holds the probed module; ``embeddings`` are stage 0's only. ``memories``,
    ``module_parameters`` and :meth:`embed` are stage 0's; ``state_dict`` is stage 0's shard.

    Parameters:
        learner: stage 0's learner (``OnlineLearner(config, plan.stages[0])``).
        settings: the plan and the pace.
        on_saved: called with ``(stage, checkpoint number, model step)`` when a stage saved its shard.
    """

    def __init__(
        self, learner: OnlineLearner, settings: PipelineSettings, *, on_saved: Callable[[int, int, int], None] | None = None
    ) -> None:
        self.local = learner
        self.settings = settings
        self.places = stage_places(settings.plan)
        self._on_saved = on_saved
        later = self.places[1:]
        self._data = Outbox(1, Tag.DATA, name=later[0].name, capacity=settings.queue_windows)
        self._control = {place.index: Outbox(place.rank, Tag.CONTROL, name=place.name) for place in later}
        self._reports = {place.index: Inbox(place.rank, Tag.REPORTS, name=place.name, capacity=1) for place in later}
        self._sent = 0
        self._acknowledged = 0  # the newest window the last stage reported
        self._pending: dict[int, deque[StageReport]] = {place.index: deque() for place in later}
        self._finals: dict[int, StageTally] = {}
        self._probes: ProbeReadout | None = None
        self._notices: list[tuple[str, str]] = []  # LOST notices of the stages: (name, detail)
        self._ended = False

    # ------------------------------------------------------------------ the learner contract

    @property
    def num_modules(self) -> int:
        return self.settings.plan.stages[-1].stop

    @property
    def updates(self) -> int:
        return self.local.updates

    @property
    def windows_skipped_nonfinite(self) -> int:
        return self.local.windows_skipped_nonfinite

    @property
    def memories(self) -> list[NegativeMemory]:
        return self.local.memories

    def probe_readout(self) -> ProbeReadout | None:
        return self.local.probe_readout() or self._probes

    def module_parameters(self) -> list[list[torch.Tensor]]:
        return self.local.module_parameters()

    def embed(self, values: torch.Tensor) -> list[torch.Tensor]:
        return self.local.embed(values)

    def state_dict(self) -> dict[str, object]:
        return self.local.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> list[str]:
        return self.local.load_state_dict(state)

    def step(self, window: AudioWindow, modules: Sequence[int] | None = None, *, replay: bool = False) -> StepReport:
        """Learns stage 0's modules on ``window``, sends their output to stage 1 and gathers the
        other stages' reports. Raises :class:`PeerLost` when a stage is gone, ``ValueError`` for a
        replay (a pipeline learns each window once)."""
        if replay:
            raise ValueError("a pipeline learns each window once: replay is not supported")
        self.check()
        if self.settings.sync or not self.settings.paced:
            limit = 1 if self.settings.sync else self.settings.queue_windows
            self._wait(lambda: self._sent - self._acknowledged < limit)
        report = self.local.step(window, modules)
        if not report.skipped_nonfinite:
            self._sent += 1
            self._put(next_window_message(self._sent, window, report.embeddings[-1]))
            if self.settings.sync:
                self._wait(lambda: self._acknowledged >= self._sent)
        self._gather()
        remote = [pending[-1] for pending in self._pending.values() if pending]  # each stage's newest
        for pending in self._pending.values():
            pending.clear()  # older reports of a stage are superseded by its newest (counted in its tally)
        for stage_report in remote:
            self._probes = stage_report.probes or self._probes
        return dataclasses.replace(
            report, modules=report.modules + tuple(m for r in remote for m in r.modules),
            probes=report.probes or next((r.probes for r in remote if r.probes is not None), None),
        )

    # ------------------------------------------------------------------ checkpoints and the end

    def request_checkpoint(self, number: int) -> None:
        """Asks every later stage to save its shard after the windows sent so far."""
        self._put(Message(Kind.CHECKPOINT, number))

    def finish(self, timeout: float) -> list[StageTally]:
        """Ends the pipeline: the end travels down after the last window; waits (at most
        ``timeout`` s) for every stage's final tally, then tells every stage to leave. Returns the
        later stages' tallies. Raises :class:`PeerLost` (a stage is gone) or ``TimeoutError``."""
        if not self._ended:
            self._ended = True
            self._put(Message(Kind.END))
        self._wait(lambda: len(self._finals) == len(self._reports), timeout=timeout)
        try:
            for outbox in self._control.values():
                outbox.put(Message(Kind.BYE))
            for outbox in self._control.values():
                outbox.flush(timeout)
        except PeerLost:
            self.check()  # names the process lost first
            raise
        return [self._finals[index] for index in sorted(self._finals)]

    def check(self) -> None:
        """Raises :class:`PeerLost` naming the process lost first if any link to another stage
        has failed or a stage has sent a notice of a loss, after sending that verdict to every
        stage (module docstring)."""
        self._gather()
        if not self._notices and not self._failed_links():
            return
        settle = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < settle:
            time.sleep(POLL_SECONDS / 4)
            self._gather()
        if self._notices:
            peer, detail = self._notices[0]
        else:
            first = min(self._failed_links(), key=lambda link: link.failed_at)
            peer, detail = first.name, first.failure
        for outbox in self._control.values():
            try:
                outbox.put(Message(Kind.LOST, (peer, detail)))
            except PeerLost:
                pass
        for outbox in self._control.values():
            try:
                outbox.flush(1.0)
            except PeerLost:
                pass
        raise PeerLost(peer, detail)

    def _failed_links(self) -> list[Inbox | Outbox]:
        return [link for link in (self._data, *self._control.values(), *self._reports.values()) if link.failure is not None]

    @property
    def windows_sent(self) -> int:
        return self._sent

    @property
    def windows_unsent(self) -> int:
        """Windows stage 0 learned but dropped on the way to stage 1 (the link was slower)."""
        return self._data.dropped

    @property
    def bytes_sent(self) -> int:
        """Bytes stage 0 sent to stage 1 (windows and checkpoint requests)."""
        return self._data.bytes_sent

    # ------------------------------------------------------------------ messages

    def _put(self, message: Message) -> None:
        try:
            self._data.put(message)
        except PeerLost:
            self.check()  # names the process lost first
            raise

    def _gather(self) -> None:
        """Takes every message the other stages have sent so far (non-blocking)."""
        for index, inbox in self._reports.items():
            while (message := inbox.poll()) is not None:
                self._take(index, message)

    def _take(self, stage: int, message: Message) -> None:
        if message.kind == Kind.REPORT:
            report: StageReport = message.meta
            self._pending[stage].append(report)
            if stage == len(self.places) - 1:
                self._acknowledged = max(self._acknowledged, report.sequence)
        elif message.kind == Kind.SAVED:
            number, model_step = message.meta
            if self._on_saved is not None:
                self._on_saved(stage, number, model_step)
        elif message.kind == Kind.FINAL:
            self._finals[stage] = message.meta
        elif message.kind == Kind.LOST:
            self._notices.append(message.meta)

    def _wait(self, done: Callable[[], bool], timeout: float | None = None) -> None:
        """Waits until ``done()`` while taking the other stages' messages; raises :class:`PeerLost`
        when a stage is gone, ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._gather()
        while not done():
            self.check()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the pipeline's stages did not finish within {timeout:.0f} s")
            for index, inbox in self._reports.items():  # block briefly on one link, then look at all
                try:
                    message = inbox.get(timeout=POLL_SECONDS / len(self._reports))
                except PeerLost:
                    continue  # check() names the process lost first, and tells the stages
                if message is not None:
                    self._take(index, message)
                    break


class StageWorker:
    """A later stage (rank >= 1): receives windows from the stage below, learns them, sends their
    output to the stage above, reports to rank 0; saves its shard when a checkpoint request comes.

    Parameters:
        place: this stage.
        learner: ``OnlineLearner(config, place.modules)`` (restored from its shard when resuming).
        settings: the plan and the pace.
        save: saves the learner's shard (``(checkpoint number) -> None``); ``None``: no state.
    """

    def __init__(
        self, place: StagePlace, learner: OnlineLearner, settings: PipelineSettings, *, save: Callable[[int], None] | None = None
    ) -> None:
        places = stage_places(settings.plan)
        if not 0 < place.index < len(places):
            raise ValueError(f"a stage worker runs a later stage (1..{len(places) - 1}), not stage {place.index}")
        self.place, self.learner, self.settings, self._save = place, learner, settings, save
        below = places[place.index - 1]
        self._above = places[place.index + 1] if place.index + 1 < len(places) else None
        self._inbox = Inbox(below.rank, Tag.DATA, name=below.name, capacity=settings.queue_windows)
        self._control = Inbox(0, Tag.CONTROL, name=places[0].name, capacity=1)
        self._out = Outbox(self._above.rank, Tag.DATA, name=self._above.name, capacity=settings.queue_windows) if self._above else None
        self._reports = Outbox(0, Tag.REPORTS, name=places[0].name)
        self._first: dict[int, list[float]] = {m: [] for m in place.modules}
        self._losses: dict[int, deque[float]] = {m: deque(maxlen=FINAL_LOSS_UPDATES) for m in place.modules}
        self.tally = StageTally(stage=place.index, modules=f"{place.modules.start}-{place.modules.stop - 1}")
        self._stopping_since: float | None = None
        self._bye = False

    def stop(self, reason: str = "stopped") -> None:
        """A signal asked this process to stop: it goes on until rank 0's end arrives (rank 0 got the
        signal too and ends the stream), or gives up :data:`STOP_GRACE_SECONDS` later."""
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self._stopping_since is not None

    def run(self) -> StageTally:
        """Runs until rank 0 ends the pipeline (then waits for its goodbye). Returns the tally; a
        lost peer is in ``tally.error`` (the caller exits with its code)."""
        try:
            self._loop()
            self._finish()
        except _Verdict as verdict:
            self.tally.error = f"lost {verdict.lost}"
        except PeerLost as lost:
            self.tally.error = f"lost {self._lost_first(lost)}"
        return self.tally

    def _verdict(self) -> None:
        """Raises :class:`_Verdict` when rank 0 has named a lost process, or is gone itself."""
        while (message := self._control.poll()) is not None:
            if message.kind == Kind.LOST:
                raise _Verdict(PeerLost(*message.meta))
            if message.kind == Kind.BYE:
                self._bye = True
        if self._control.failure is not None:
            raise _Verdict(PeerLost(self._control.name, self._control.failure))

    def _lost_first(self, lost: PeerLost) -> PeerLost:
        """The process lost first, when this stage saw ``lost`` go: tells rank 0 and waits for its
        verdict (module docstring)."""
        try:
            self._reports.put(Message(Kind.LOST, (lost.peer, lost.detail)))
        except PeerLost:
            pass
        deadline = time.monotonic() + VERDICT_SECONDS
        while time.monotonic() < deadline:
            try:
                self._verdict()
            except _Verdict as verdict:
                return verdict.lost
            time.sleep(POLL_SECONDS / 4)
        return lost

    def _loop(self) -> None:
        while True:
            self._verdict()
            if self._stopping_since is not None and time.monotonic() - self._stopping_since > STOP_GRACE_SECONDS:
                raise PeerLost(stage_places(self.settings.plan)[0].name, f"no end of stream {STOP_GRACE_SECONDS:.0f} s after a stop signal")
            message = self._inbox.get(timeout=POLL_SECONDS)
            if message is None:
                continue
            if message.kind == Kind.WINDOW:
                self._learn(message)
            elif message.kind == Kind.CHECKPOINT:
                self._checkpoint(message.meta)
            elif message.kind == Kind.END:
                return

    def _learn(self, message: Message) -> None:
        meta: WindowMeta = message.meta
        window = meta.window(message.tensor)
        report = self.learner.step(window)
        tally = self.tally
        tally.windows_processed += 1
        tally.windows_dropped = self._inbox.dropped
        tally.compute_seconds += report.seconds
        tally.model_step = report.updates
        tally.windows_skipped_nonfinite = self.learner.windows_skipped_nonfinite
        for module in report.modules:
            if module.updated and math.isfinite(module.loss):
                self._losses[module.module].append(module.loss)
                if len(self._first[module.module]) < FINAL_LOSS_UPDATES:
                    self._first[module.module].append(module.loss)
        if self._out is not None and not report.skipped_nonfinite:
            self._out.put(next_window_message(meta.sequence, window, report.embeddings[-1]))
        modules = tuple(dataclasses.replace(m, stage=self.place.index) for m in report.modules)
        self._reports.put(Message(Kind.REPORT, StageReport(
            stage=self.place.index, sequence=meta.sequence, modules=modules, seconds=report.seconds,
            skipped=report.skipped_nonfinite, updates=report.updates, windows_dropped=self._inbox.dropped,
            probes=report.probes,
        )))

    def _checkpoint(self, number: int) -> None:
        if self._save is not None:
            self._save(number)
            self.tally.checkpoints_written += 1
            self._reports.put(Message(Kind.SAVED, (number, self.learner.updates)))
        if self._out is not None:
            self._out.put(Message(Kind.CHECKPOINT, number))

    def _finish(self) -> None:
        """Passes the end on, sends the final tally, and waits for rank 0's goodbye."""
        if self._out is not None:
            self._out.put(Message(Kind.END))
        self.tally.windows_dropped = self._inbox.dropped
        self.tally.windows_unsent = self._out.dropped if self._out is not None else 0
        self.tally.first_loss = {str(m): _mean(v) for m, v in self._first.items()}
        self.tally.final_loss = {str(m): _mean(v) for m, v in self._losses.items()}
        self._reports.put(Message(Kind.FINAL, self.tally))
        while not self._bye:
            self._verdict()
            time.sleep(POLL_SECONDS / 4)
        for link in (self._out, self._reports):
            if link is not None:
                link.flush(FLUSH_SECONDS)



class _Verdict(Exception):
    """Rank 0 named the process lost first (or is gone itself): ``lost``."""

    def __init__(self, lost: PeerLost) -> None:
        super().__init__(str(lost))
        self.lost = lost


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
