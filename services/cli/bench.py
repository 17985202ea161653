"""``online-gim bench``: measure the learner's speed, memory and e-prop exactness on this machine.

Examples::

    online-gim bench --json                  # one JSON object on stdout (`make bench`)
    online-gim bench --threads 1             # a table; torch limited to one intra-op thread

What each key means: ``docs/bench.md``; the measurements: :mod:`online_gim.bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.cli import CliError

DEFAULT_WINDOWS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure speed (real-time factors), memory and e-prop exactness on this machine",
        description="Time the learner (greedy CLAPP with the e-prop GRU, and the end-to-end BPTT baseline of the "
        "same stack), its forward pass and the video learner; measure peak memory in fresh processes and "
        "e-prop's gradient against BPTT. Takes about 35 s on two idle cores.",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                        help="the learner preset to measure (default: the shipped LearnerConfig)")
    parser.add_argument("--windows", type=int, default=DEFAULT_WINDOWS, metavar="N",
                        help=f"windows timed per learner (default {DEFAULT_WINDOWS})")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads (default: torch's, one per core); see docs/bench.md")
    parser.set_defaults(func=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    if args.windows < 1:
        raise CliError("--windows must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1")

    import torch

    from online_gim.bench import run_bench
    from online_gim.config import load_config

    try:
        config = load_config(args.config) if args.config is not None else None
    except ValueError as error:
        raise CliError(str(error)) from None
    if config is not None and config.mode == "greedy" and config.schedule != "all":
        raise CliError(f"the benchmark times schedule 'all'; {args.config} has schedule {config.schedule!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print("online-gim bench: measuring (about 35 s on two idle cores, minutes on a busy machine) ...", file=sys.stderr)
    result = run_bench(config, timed_windows=args.windows).to_dict()
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0


def _print_table(result: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="online-gim bench", show_header=True)
    table.add_column("key")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, _format(value))
    Console().print(table)


def _format(value: object) -> str:
    if isinstance(value, list):
        return " ".join(_format(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
