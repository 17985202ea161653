"""Many streams, one model: replicas of a learner, each on its own stream, averaging their weights.

Every replica (one process, one rank of the default process group) runs the ordinary session loop
on its own stream with a :class:`ReplicaAverager` among its observers. Every ``every`` live windows
the replicas meet in an averaging round and all leave it holding the same weights: the mean of
theirs (local SGD / model averaging, as ``torch.distributed.algorithms.model_averaging`` does it,
weighted by who learned since the last round, below).

What is averaged and what stays local:

- averaged: the learned weights of every module and of every module's prediction head, one
  flattened float32 buffer per round (:func:`averaged_parameters`);
- local, Adam's moments: they are per-parameter statistics of a replica's own gradients, which
  follow its own stream; averaging them too would triple the bytes of every round (two moments
  per weight) and buy nothing the averaged weights do not carry: after a round each replica steps
  from the common weights with its own gradient, scaled by its own recent gradient magnitudes
  (local SGD with a local adaptive optimiser);
- local, the negative memories: a memory holds encodings of its replica's own stream, which are
  the negatives of that stream's loss (and its exclusion zones are positions in that stream);
- local, the running statistics (the input level, ``time`` norm's per-channel mean and variance,
  ``window`` norm's newest window, the centred skip path's running mean): they describe the replica's own stream and device, like a
  microphone's gain; they are not learned by gradients, and the default ``window`` norm keeps only
  the statistics of the window being learned;
- local, the online probes and the GRU's state and traces: a readout of, and the recurrent state
  of, the replica's own stream.

Streams that end at different times: a replica whose stream ended (or that was stopped) keeps
joining rounds from :meth:`ReplicaAverager.close` until every replica has ended; a round's first
collective tells every replica how many are still streaming and how many learned since the last
round. Only those that learned contribute to the mean (a replica that ended holds the previous
mean: counting it again would pull the others back); the round in which no replica is streaming
any more is the last, and every replica leaves it with the same weights.

A peer that dies makes a round's collective raise (gloo: "Connection closed by peer"); the averager
then stops its session (``stop("peer_lost")``) and joins no more rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from online_gim.report import StepReport
from online_gim.stack_learner import StackLearner


def averaged_parameters(learner: StackLearner) -> list[torch.Tensor]:
    """The tensors a replica group averages: every module's and every prediction head's
    parameters, bottom to top (each once)."""
    tensors: dict[int, torch.Tensor] = {}
    for stage in learner.stages:
        for parameter in (*stage.module.parameters(), *stage.head.parameters()):
            tensors.setdefault(id(parameter), parameter)
    return list(tensors.values())


class ReplicaAverager:
    """A :class:`~online_gim.run.contract.StepObserver` that averages a learner's weights with the
    other replicas' every ``every`` live windows (module docstring).

    Parameters:
        learner: this replica's learner.
        every: live windows between two averaging rounds.
        stop: asks this replica's session to stop (``Session.stop``); called with ``"peer_lost"``
            when a round fails because a peer is gone.
        group: the process group of the replicas (default: the default group).

    Attributes:
        rounds: averaging rounds joined so far.
        round_seconds: wall seconds spent in them (waiting for slower replicas included).
        failure: why the last round failed (gloo's message), ``None`` while none did.
    """

    def __init__(
        self,
        learner: StackLearner,
        *,
        every: int,
        stop: Callable[[str], None] | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 window, got {every}")
        self.parameters = averaged_parameters(learner)
        self.every = every
        self._stop = stop
        self._group = group
        self._windows = 0
        self._learned = True  # a fresh or resumed replica counts in the first round
        self.rounds = 0
        self.round_seconds = 0.0
        self.failure: str | None = None

    @property
    def bytes_per_round(self) -> int:
        """Bytes of weights one round reduces (float32), the buffer every replica sends and receives
        about twice over in gloo's all-reduce (plus 8 bytes of flags)."""
        return sum(p.numel() * p.element_size() for p in self.parameters)

    def start(self) -> None:
        """A first round before the stream starts: replicas resumed from checkpoints written at
        different moments start from the same weights (fresh replicas of one seed already do)."""
        self._round(streaming=True)

    def on_step(self, window: object, report: StepReport) -> None:
        self._windows += 1
        self._learned = True
        if self._windows % self.every == 0 and self.failure is None:
            self._round(streaming=True)

    def close(self) -> None:
        """Joins rounds until no replica streams any more; the last one leaves every replica with
        the same weights."""
        while self.failure is None and self._round(streaming=False) > 0:
            pass

    def _round(self, *, streaming: bool) -> int:
        """One averaging round; returns how many replicas are still streaming (0 after a failure)."""
        started = time.monotonic()
        try:
            flags = torch.tensor([float(streaming), float(self._learned)])
            dist.all_reduce(flags, group=self._group)
            streaming_ranks, contributors = int(flags[0]), int(flags[1])
            if contributors:
                self._average(contributors)
        except RuntimeError as error:  # gloo: a peer's connection closed, or the group's timeout passed
            self.failure = str(error).splitlines()[0]
            if self._stop is not None:
                self._stop("peer_lost")
            return 0
        finally:
            self.round_seconds += time.monotonic() - started
        self.rounds += 1
        self._learned = False
        return streaming_ranks

    @torch.no_grad()
    def _average(self, contributors: int) -> None:
        """Sets every parameter to the mean over the ``contributors`` replicas that learned since
        the last round (the others add zeros)."""
        flat = torch.cat([p.reshape(-1) for p in self.parameters])
        if not self._learned:
            flat.zero_()
        dist.all_reduce(flat, group=self._group)
        flat /= contributors
        offset = 0
        for parameter in self.parameters:
            parameter.copy_(flat[offset : offset + parameter.numel()].view_as(parameter))
            offset += parameter.numel()
