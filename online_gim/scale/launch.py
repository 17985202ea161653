"""Starting a scaled-out run: ``online-gim listen --pipeline ...`` or ``--replicas N`` started
by hand re-executes itself under ``torchrun`` (PyTorch's elastic launcher: it starts one process
per rank, gives each its rank and the rendezvous, forwards signals, and stops every rank when one
fails), unless a launcher already started it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchOptions:
    """Where the ranks run.

    Attributes:
        processes: ranks on this machine (``--nproc-per-node``).
        nodes: machines taking part (``--nnodes``); 1: this machine alone (``--standalone``).
        node_rank: this machine's place among them (``--node-rank``).
        rendezvous: ``HOST:PORT`` every machine can reach, where the group meets (``--rdzv-endpoint``;
            with more than one node).
        run_id: names the run at the rendezvous (``--rdzv-id``).
    """

    processes: int
    nodes: int = 1
    node_rank: int = 0
    rendezvous: str | None = None
    run_id: str = "online-gim"

    def __post_init__(self) -> None:
        if self.processes < 1 or self.nodes < 1:
            raise ValueError(f"processes and nodes must be at least 1, got {self.processes} and {self.nodes}")
        if self.nodes > 1 and not self.rendezvous:
            raise ValueError("a run over several machines needs a rendezvous endpoint HOST:PORT that every machine reaches")


def torchrun_command(options: LaunchOptions, module: str, arguments: list[str]) -> list[str]:
    """The ``torchrun`` command line that runs ``python -m module *arguments`` as every rank."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={options.processes}"]
    if options.nodes == 1:
        command.append("--standalone")
    else:
        command += [  # static rendezvous: the node ranks given decide the ranks (rank 0 on node 0, with the source)
            f"--nnodes={options.nodes}", f"--node-rank={options.node_rank}", "--rdzv-backend=static",
            f"--rdzv-endpoint={options.rendezvous}", f"--rdzv-id={options.run_id}",
        ]
    return [*command, "-m", module, *arguments]


def exec_torchrun(options: LaunchOptions, module: str, arguments: list[str]) -> None:
    """Replaces this process by ``torchrun`` running ``module`` as every rank (signals then reach
    the launcher directly). Does not return."""
    command = torchrun_command(options, module, arguments)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
