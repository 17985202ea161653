"""``online-gim listen --replicas N``: N learners, each on its own stream, averaging their weights.

Examples::

    online-gim listen --replicas 2 --shard-by-rank --source librispeech --root LibriSpeech --speed max \\
        --state runs/r --summary-json runs/r.json      # runs/r/replica-0, runs/r.rank0.json, ...
    online-gim listen --replicas 2 --source file --path 'mic-{rank}.wav' --average-every 50

Started by hand, the command re-executes itself under ``torchrun`` with N processes
(:func:`~online_gim.scale.launch.exec_torchrun`); under ``torchrun`` every process is one replica:
it joins the gloo group, watches its peers (:class:`~online_gim.scale.peers.PeerWatch`) and runs
the one-process listen path (``online_gim.services.cli.listen.listen_audio``) with a
:class:`~online_gim.scale.replicas.ReplicaAverager` as its first observer, so that the
checkpointer saves averaged weights.

What each replica (rank ``k`` of ``N``) gets of the options:

- its stream: with ``--shard-by-rank`` (librispeech, synth) every N-th utterance of the corpus'
  order from the ``k``-th (``source_id`` ``librispeech:shard<k>of<N>``); ``--source file``:
  ``{rank}`` in ``--path`` becomes ``k``. Otherwise every replica reads the same stream (the same
  corpus order for one ``--seed``, the same file, the same microphone of its machine).
- ``--state DIR``: its own ``DIR/replica-<k>`` (each resumes from its own checkpoints; a first
  averaging round makes their weights equal again);
- ``--summary-json`` and ``--record``: its own file, ``NAME.rank<k>.SUFFIX``;
- the side service (HTTP), the live status line and the printed summary: replica 0 only.

A replica whose peer is lost (killed, crashed) stops within seconds with a one-line message naming
the lost rank and exit code :data:`~online_gim.services.cli.EXIT_PEER_LOST`; checkpoints already
written stay, and the same command resumes every replica.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from online_gim.services.cli import EXIT_PEER_LOST, CliError
from online_gim.services.cli.listen_options import ListenOptions

if TYPE_CHECKING:
    from online_gim.config import LearnerConfig
    from online_gim.learner import OnlineLearner
    from online_gim.run.audio import ListenSession, ListenSummary
    from online_gim.run.state import Checkpointer
    from online_gim.scale.replicas import ReplicaAverager

ListenPath = Callable[[ListenOptions, "Replica"], int]
"""A single process' listen run (``listen._listen``, its signals and console bound) with a
scaled-out part: runs a replica's options, returns the exit code."""

SHARDED_SOURCES = ("librispeech", "synth")
"""Sources ``--shard-by-rank`` splits (a corpus of utterances)."""

PEER_LOST_GRACE_SECONDS = 3.0
"""After a peer is lost, how long a replica may take to stop cleanly (finish its window, save its
checkpoint) before it ends at once."""

RANK_PLACEHOLDER = "{rank}"
"""In ``--path``: replaced by each replica's rank."""


def run(options: ListenOptions, argv: list[str], listen: ListenPath) -> int:
    """Runs this process' replica under ``torchrun`` by ``listen``, or re-executes the command
    (``argv``, after the program's name) under ``torchrun``."""
    from online_gim.scale.group import launched

    check(options)
    if not launched():
        from online_gim.scale.launch import exec_torchrun

        exec_torchrun(options.scale.launch, "online_gim.services.cli", argv)
    from online_gim.scale.group import join, leave

    try:
        group = join(timeout_seconds=round_timeout(options))
    except RuntimeError as error:
        raise CliError(f"the replica group cannot form: {error}") from None
    if group.world_size != options.scale.replicas:
        raise CliError(f"--replicas {options.scale.replicas} but the launcher started {group.world_size} processes")
    replica = Replica(group.rank, group.world_size, options.scale.average_every)
    code = listen(for_rank(options, group.rank, group.world_size), replica)
    if code == EXIT_PEER_LOST:  # gloo's threads still wait on the lost peer: tearing the group down would abort
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    replica.watch.leave()
    leave()
    return code


def check(options: ListenOptions) -> None:
    """Options a replicated run cannot work with (a :class:`CliError`), before any process starts."""
    source = options.source
    if options.scale.shard_by_rank and source.kind not in SHARDED_SOURCES:
        hint = (
            f"give each replica its own file with {RANK_PLACEHOLDER} in --path" if source.kind == "file"
            else "without it each replica reads the microphone of the machine it runs on"
        )
        raise CliError(f"--shard-by-rank splits a corpus ({', '.join(SHARDED_SOURCES)}), not --source {source.kind}: {hint}")
    if RANK_PLACEHOLDER in (source.path or "") and source.kind != "file":
        raise CliError(f"{RANK_PLACEHOLDER} in --path names each replica's file: use it with --source file")


def round_timeout(options: ListenOptions) -> float:
    """Seconds a collective of the group may wait for a peer: the group's default, plus the
    stream time of two averaging intervals (a replica whose stream ended waits in a round for the
    others' next one, ``--average-every`` windows away at the stream's pace)."""
    from online_gim.scale.group import GROUP_TIMEOUT_SECONDS

    hop = options.hop or options.learner.window
    interval = options.scale.average_every * hop / 16_000 / (options.source.speed or 1.0)
    return GROUP_TIMEOUT_SECONDS + 2 * interval


def for_rank(options: ListenOptions, rank: int, world_size: int) -> ListenOptions:
    """The options of replica ``rank`` of ``world_size`` (module docstring)."""
    source = options.source
    if options.scale.shard_by_rank:
        source = dataclasses.replace(source, shard=(rank, world_size))
    if source.path is not None and RANK_PLACEHOLDER in source.path:
        source = dataclasses.replace(source, path=source.path.replace(RANK_PLACEHOLDER, str(rank)))
    run = dataclasses.replace(
        options.run, summary_json=_rank_file(options.run.summary_json, rank), record=_rank_file(options.run.record, rank),
        quiet=options.run.quiet or rank > 0,
    )
    state = options.state
    if state is not None:
        state = dataclasses.replace(state, directory=state.directory / f"replica-{rank}")
    return dataclasses.replace(options, source=source, run=run, state=state, service=options.service if rank == 0 else None)


def _rank_file(path: Path | None, rank: int) -> Path | None:
    return None if path is None else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


class Replica:
    """This process' part in the group (a :class:`~online_gim.services.cli.listen.ScaledRun`): the
    :class:`~online_gim.scale.peers.PeerWatch` from the start, and the
    :class:`~online_gim.scale.replicas.ReplicaAverager` once the learner is resumed."""

    module_budget = True

    def __init__(self, rank: int, world_size: int, average_every: int) -> None:
        from online_gim.scale.peers import PeerWatch

        self.rank = rank
        self.world_size = world_size
        self.average_every = average_every
        self.averager: ReplicaAverager | None = None
        self._session: ListenSession | None = None
        self._announcing = threading.Lock()
        self._announced = False
        self.watch = PeerWatch(self._peer_lost)

    def learner(self, config: LearnerConfig, *, paced: bool) -> OnlineLearner:
        from online_gim.learner import OnlineLearner

        return OnlineLearner(config)

    def attach(self, session: ListenSession, checkpointer: Checkpointer | None) -> None:
        """Puts the averager first among the session's observers, so that its last round (when the
        session closes them) comes before the checkpointer's last save; then the first round."""
        from online_gim.scale.replicas import ReplicaAverager

        self._session = session
        self.averager = ReplicaAverager(session.learner, every=self.average_every, stop=session.stop)
        session.observers.insert(0, self.averager)
        if self.watch.lost is not None:
            session.stop("peer_lost")
            return
        self.averager.start()

    def run(self, session: ListenSession) -> ListenSummary:
        return session.run()

    def finish(self, document: dict[str, Any]) -> int | None:
        """Adds ``replicas`` to the summary; :data:`EXIT_PEER_LOST` (after saying so) when a peer was lost."""
        document["replicas"] = self._summary()
        if self.lost_message() is None:
            return None
        self.announce()
        return EXIT_PEER_LOST

    def _summary(self) -> dict[str, Any]:
        averager = self.averager
        return {
            "rank": self.rank,
            "replicas": self.world_size,
            "average_every": self.average_every,
            "averaging_rounds": averager.rounds if averager else 0,
            "averaging_seconds": round(averager.round_seconds, 3) if averager else 0.0,
            "averaged_bytes_per_round": averager.bytes_per_round if averager else 0,
            "peer_lost": self.watch.lost,
        }

    def lost_message(self) -> str | None:
        """The one line that says this replica ended because of a peer, ``None`` if it did not."""
        failure = self.averager.failure if self.averager is not None else None
        if self.watch.lost is None and failure is None:
            return None
        what = (
            f"replica rank {self.watch.lost} was lost (its process ended without leaving the group: killed or crashed)"
            if self.watch.lost is not None else f"an averaging round failed ({failure})"
        )
        return (f"online-gim listen: error: {what}; replica {self.rank} stopped (exit code {EXIT_PEER_LOST}); "
                "run the same command again to resume every replica from its --state")

    def announce(self) -> None:
        """Prints :meth:`lost_message` on stderr, once."""
        with self._announcing:
            if not self._announced:
                self._announced = True
                print(self.lost_message(), file=sys.stderr, flush=True)

    def _peer_lost(self, peer: int) -> None:
        """From the watch's thread: say so, stop the session, and end the process if it has not
        stopped within :data:`PEER_LOST_GRACE_SECONDS`."""
        self.announce()
        if self._session is not None:
            self._session.stop("peer_lost")
        threading.Timer(PEER_LOST_GRACE_SECONDS, os._exit, args=(EXIT_PEER_LOST,)).start()
