"""``online-gim bench``: measure the learner's speed, memory and e-prop exactness on this machine.

Examples::

    online-gim bench --json                  # one JSON object on stdout (`make bench`)
    online-gim bench --threads 1             # a table; torch limited to one intra-op thread
    online-gim bench --json --reference REF --listen-root ../shared/data/speechocean762-dev/LibriSpeech

What each key means: ``docs/bench.md``; the measurements: :mod:`online_gim.bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from online_gim.services.cli import CliError

DEFAULT_WINDOWS = 10
DEFAULT_LISTEN_WINDOWS = 60

DEFAULT_PIPELINE_WINDOWS = 40
"""Windows of each run of the pipeline measurement (one process, then ``--pipeline 2``)."""


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
    parser.add_argument("--reference", type=Path, default=None, metavar="DIR",
                        help="a prepared snapshot of the published Greedy InfoMax code (docs/bench.md): also time its "
                        "batch-1 training step and forward pass in this run")
    parser.add_argument("--listen-root", type=Path, default=None, metavar="DIR",
                        help="a LibriSpeech-layout tree: also run `listen --speed max` on it and report the learner's "
                        "real-time factor there (rtf_learn_listen)")
    parser.add_argument("--listen-windows", type=int, default=DEFAULT_LISTEN_WINDOWS, metavar="N",
                        help=f"windows of that listen run (default {DEFAULT_LISTEN_WINDOWS})")
    parser.add_argument("--pipeline-windows", type=int, default=DEFAULT_PIPELINE_WINDOWS, metavar="N",
                        help=f"windows of the runs that measure pipeline_speedup_2 (one process, then a 2-stage "
                        f"pipeline on the same cores; default {DEFAULT_PIPELINE_WINDOWS}; 0: not measured)")
    parser.set_defaults(func=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    if args.windows < 1:
        raise CliError("--windows must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1")
    if args.reference is not None and not (args.reference / "GreedyInfoMax").is_dir():
        raise CliError(f"--reference {args.reference} holds no GreedyInfoMax package (see docs/bench.md)")
    if args.listen_root is not None and not args.listen_root.is_dir():
        raise CliError(f"--listen-root {args.listen_root} is not a folder")
    if args.listen_windows < 1:
        raise CliError("--listen-windows must be at least 1")
    if args.pipeline_windows < 0:
        raise CliError("--pipeline-windows must be 0 (not measured) or more")

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
    result = run_bench(config, timed_windows=args.windows, reference=args.reference).to_dict()
    if args.listen_root is not None:
        result["rtf_learn_listen"], result["rtf_learn_listen_mean"] = listen_rtf(
            args.listen_root, args.listen_windows, args.config, torch.get_num_threads()
        )
        result["rtf_ratio_listen_over_bench"] = result["rtf_learn_listen"] / result["rtf_learn"]
    if args.pipeline_windows:
        from online_gim.scale.bench import pipeline_bench

        try:
            result.update(pipeline_bench(args.pipeline_windows, threads=torch.get_num_threads(), config=args.config))
        except RuntimeError as error:
            raise CliError(f"the pipeline measurement failed: {error}") from None
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0


def listen_rtf(root: Path, windows: int, config: Path | None, threads: int) -> tuple[float, float]:
    """The learner's real-time factor in a real ``online-gim listen --source librispeech --speed max``
    run of ``windows`` windows over ``root`` (a fresh process, ``threads`` torch threads): the
    median of its ``step`` seconds per window (its summary's ``step_seconds_median``, the
    statistic of ``rtf_learn``) and the mean (``compute_seconds`` over every window, the first
    ones included), each over the seconds of audio of a window.

    Raises:
        CliError: the listen run failed.
    """
    from online_gim.config import LearnerConfig, load_config

    with tempfile.TemporaryDirectory() as folder:
        summary = Path(folder) / "summary.json"
        command = [sys.executable, "-c", "import sys; from online_gim.services.cli import main; sys.exit(main())", "listen",
                   "--source", "librispeech", "--root", str(root), "--speed", "max", "--max-windows", str(windows),
                   "--no-http", "--quiet", "--summary-json", str(summary)]
        command += ["--config", str(config)] if config is not None else []
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not summary.is_file():
            raise CliError(f"the listen run for rtf_learn_listen failed: {done.stderr.strip()[-500:]}")
        run = json.loads(summary.read_text())
    window_seconds = (load_config(config) if config is not None else LearnerConfig()).window / 16000
    return run["step_seconds_median"] / window_seconds, run["compute_seconds"] / (run["windows_processed"] * window_seconds)


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
