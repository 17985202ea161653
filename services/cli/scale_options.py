"""The scale-out options of ``online-gim listen`` (``--pipeline``, ``--replicas`` and where their
processes run), typed as :class:`ScaleOptions`. docs: README "Scaling out"."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from online_gim.scale.launch import LaunchOptions
from online_gim.services.cli import CliError

DEFAULT_AVERAGE_EVERY = 20
"""Windows between two weight averagings of a replica group (``--average-every``)."""


@dataclass(frozen=True)
class ScaleOptions:
    """How a run spreads over processes.

    Attributes:
        pipeline: ``--pipeline``: stage boundaries (``"0-2,3-5"``) or a number of balanced stages
            (``"2"``); ``None``: one process holds every module.
        pipeline_sync: ``--pipeline-sync``: every stage learns every window before the next one
            starts (the single process' weights, for tests); default: asynchronous.
        replicas: ``--replicas N``: N learners on N streams averaging their weights; 1: none.
        average_every: windows between two averagings of the replicas.
        shard_by_rank: ``--shard-by-rank``: replica ``r`` of ``N`` takes every N-th utterance from the
            ``r``-th (LibriSpeech and synthetic corpora).
        launch: the launcher's settings (processes on this machine, nodes, rendezvous).
    """

    pipeline: str | None = None
    pipeline_sync: bool = False
    replicas: int = 1
    average_every: int = DEFAULT_AVERAGE_EVERY
    shard_by_rank: bool = False
    launch: LaunchOptions | None = None

    @property
    def distributed(self) -> bool:
        """Whether the run has more than one process."""
        return self.pipeline is not None or self.replicas > 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale-out (torch.distributed; see README 'Scaling out')")
    group.add_argument(
        "--pipeline", default=None, metavar="A-B,C-D|N",
        help="run the module stack as a pipeline of processes: stage boundaries by module index (0-2,3-5), "
        "or N balanced stages by measured cost; started under torchrun (one process per stage)",
    )
    group.add_argument("--pipeline-sync", action="store_true",
                       help="every stage learns every window before the next one starts (equals one process; for tests)")
    group.add_argument("--replicas", type=int, default=1, metavar="N",
                       help="N processes, each learning from its own stream, averaging their weights (default 1)")
    group.add_argument("--average-every", type=int, default=DEFAULT_AVERAGE_EVERY, metavar="M",
                       help=f"replicas: windows between weight averagings (default {DEFAULT_AVERAGE_EVERY})")
    group.add_argument("--shard-by-rank", action="store_true",
                       help="replicas: replica r of N takes every N-th utterance of the corpus, from the r-th")
    group.add_argument("--nnodes", type=int, default=1, metavar="N", help="machines taking part (default 1: this one)")
    group.add_argument("--node-rank", type=int, default=0, metavar="K", help="this machine's place among them")
    group.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                       help="where the machines meet (with --nnodes above 1; every machine must reach it)")


def from_args(args: argparse.Namespace, *, source: str) -> ScaleOptions:
    """The typed options; an option that cannot work is a :class:`CliError`."""
    if args.replicas < 1:
        raise CliError("--replicas must be at least 1")
    if args.average_every < 1:
        raise CliError("--average-every must be at least 1 window")
    if args.pipeline is not None and args.replicas > 1:
        raise CliError("--pipeline and --replicas cannot be combined yet: choose one")
    if args.pipeline is not None and args.replay > 0:
        raise CliError("--replay needs the whole stack in one process: it cannot be combined with --pipeline")
    if args.pipeline_sync and args.pipeline is None:
        raise CliError("--pipeline-sync needs --pipeline")
    if args.shard_by_rank and args.replicas == 1:
        raise CliError("--shard-by-rank needs --replicas N (N above 1)")
    if (args.pipeline is not None or args.replicas > 1) and source in ("video", "av"):
        raise CliError("--pipeline and --replicas run the audio learner: use them with an audio source")
    launch = None
    if args.pipeline is not None or args.replicas > 1:
        from online_gim.scale.plan import stage_count

        try:
            processes = args.replicas if args.pipeline is None else stage_count(args.pipeline)
            if processes % args.nnodes:
                raise ValueError(f"{processes} processes cannot be shared evenly by --nnodes {args.nnodes}")
            launch = LaunchOptions(
                processes=processes // args.nnodes, nodes=args.nnodes, node_rank=args.node_rank, rendezvous=args.rdzv_endpoint,
            )
        except ValueError as error:
            raise CliError(str(error)) from None
    return ScaleOptions(
        pipeline=args.pipeline, pipeline_sync=args.pipeline_sync, replicas=args.replicas, average_every=args.average_every,
        shard_by_rank=args.shard_by_rank, launch=launch,
    )
