"""``online-gim eval``: the seeds' method comparison with linear probes (METHOD.md section 6).

Examples::

    online-gim eval --corpus ~/.cache/online-gim/synth-v2-s24-u20-seed0 --train-minutes 20 \\
        --json eval.json --markdown eval.md --plot eval.png
    online-gim eval --corpus ../shared/data/librispeech-mini \\
        --labels ../shared/data/librispeech-mini/LibriSpeech100_labels_split \\
        --methods random,mfcc,clapp_eprop --train-minutes 1 --json mini.json
    online-gim eval --corpus ../shared/data/speechocean762-dev --learner-state runs/a --json a.json

For each method (a preset in ``configs/``, plus ``mfcc``): train its learner online on the train
split streamed at maximum speed for ``--train-minutes`` of audio, freeze it, fit linear probes on
the train split's features (phones per 10 ms frame; speakers per frame and per utterance) and
report their test accuracy, per module too; ``--learner-state DIR`` probes the learner a
``listen --state DIR`` run saved instead of training one. See :mod:`online_gim.evaluation`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from online_gim.services.cli import CliError
from online_gim.services.cli.replay_options import add_replay_arguments, replay_config

LABEL_FOLDERS = ("labels", "LibriSpeech100_labels_split")
"""Label folders looked for inside ``--corpus`` when ``--labels`` is not given."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from online_gim.evaluation.methods import DEFAULT_METHODS  # no torch: a plain import

    parser = subparsers.add_parser(
        "eval",
        help="compare methods by linear probes on a labelled corpus (phones, speakers, per module)",
        description="Train each method's learner online on the corpus' train split for --train-minutes of audio, "
        "then fit linear probes on frozen features and report test accuracy (JSON, Markdown, plot). "
        "Deterministic for a seed.",
    )
    parser.add_argument("--corpus", required=True, type=Path, metavar="DIR", help="a LibriSpeech-layout tree")
    parser.add_argument(
        "--labels", type=Path, default=None, metavar="DIR",
        help="GIM/CPC label folder (converted_aligned_phones.txt, optional train_split.txt/test_split.txt); "
        f"default: {' or '.join(f'DIR/{name}' for name in LABEL_FOLDERS)} if present, else speakers only",
    )
    parser.add_argument("--methods", default=None, metavar="LIST",
                        help=f"comma-separated methods: mfcc or preset names in --presets (default: {','.join(DEFAULT_METHODS)}; "
                        "none with --learner-state)")
    parser.add_argument(
        "--learner-state", action="append", type=Path, default=[], metavar="DIR",
        help="also probe the learner of the newest checkpoint of this `listen --state DIR` (a replica of "
        "`listen --replicas`: DIR/replica-0), as it is, instead of training one (repeat for several; "
        "--train-minutes does not apply to it)",
    )
    parser.add_argument("--train-minutes", type=float, default=20.0, metavar="M",
                        help="minutes of audio each learner is trained on (default: 20)")
    parser.add_argument("--json", required=True, type=Path, metavar="OUT", help="write the results here (JSON)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="OUT", help="also write the tables here (Markdown)")
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                        help="also draw the per-module and learning-curve figure")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the split, the learners, the stream order and the frame subsets (default: 0)")
    parser.add_argument("--presets", type=Path, default=None, metavar="DIR",
                        help="folder of the method presets (default: the presets shipped with online-gim, configs/ in the repository)")
    parser.add_argument("--max-frames", type=int, default=50_000, metavar="N",
                        help="frames per split for the frame-level probes, a seeded subset (default: 50000)")
    parser.add_argument("--curve-methods", default="clapp_eprop", metavar="LIST",
                        help="methods whose learning curve is measured (default: clapp_eprop; '' for none)")
    parser.add_argument("--curve-points", type=int, default=4, metavar="N",
                        help="points per learning curve, evenly spaced over the budget (default: 4)")
    parser.add_argument("--curve-every", type=int, default=4, metavar="K",
                        help="the learning curve's points probe every K-th utterance of each split, the same at "
                        "every point (default: 4; 1: the whole splits, each point as dear as the final probe)")
    parser.add_argument("--train-corpus", type=Path, default=None, metavar="DIR",
                        help="learn from all the audio of this LibriSpeech-layout tree instead of --corpus' train split "
                        "(transfer: e.g. learn on LibriSpeech, probe on another corpus)")
    parser.add_argument("--probe-modules", choices=("all", "top"), default="all",
                        help="probe every module of a learner (default) or only its top module (faster)")
    add_replay_arguments(parser, "replayed updates per stream window of every trained learner, from a store of "
                         "recent windows (listen --replay; default 0)")
    parser.add_argument("--no-cache", action="store_true",
                        help="compute the baselines (mfcc, random) even when the evaluation cache holds them")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run_eval)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _labels_folder(args: argparse.Namespace) -> Path | None:
    if args.labels is not None:
        if not args.labels.is_dir():
            raise CliError(f"--labels {args.labels} is not a folder")
        return args.labels
    return next((args.corpus / name for name in LABEL_FOLDERS if (args.corpus / name).is_dir()), None)


def _stage_progress(description: str, total: float, unit: str):
    """A progress display of one stage of the evaluation (``StageProgress``)."""
    from online_gim.services.progress import ProgressReporter

    return ProgressReporter(f"online-gim eval: {description}", total, unit=unit)


def _check_outputs(*paths: Path | None) -> None:
    for path in paths:
        if path is not None and not path.resolve().parent.is_dir():
            raise CliError(f"cannot write {path}: folder {path.resolve().parent} does not exist")


def run_eval(args: argparse.Namespace) -> int:
    if not args.corpus.is_dir():
        raise CliError(f"--corpus {args.corpus} is not a folder")
    if not args.train_minutes > 0:
        raise CliError("--train-minutes must be positive")
    if args.max_frames < 1 or args.curve_points < 1 or args.curve_every < 1:
        raise CliError("--max-frames, --curve-points and --curve-every must be at least 1")
    if args.train_corpus is not None and not args.train_corpus.is_dir():
        raise CliError(f"--train-corpus {args.train_corpus} is not a folder")
    replay = replay_config(args)
    _check_outputs(args.json, args.markdown, args.plot)
    labels = _labels_folder(args)

    from online_gim.evaluation.cache import ResultCache, default_folder
    from online_gim.evaluation.markdown import markdown_tables
    from online_gim.evaluation.methods import DEFAULT_METHODS, PRESETS_DIR, resolve_methods, state_method
    from online_gim.evaluation.plot import plot_report
    from online_gim.evaluation.run import Evaluation, EvaluationSettings, no_progress
    from online_gim.streams.corpora.librispeech import LibriSpeechCorpus

    presets = args.presets or PRESETS_DIR
    names = _names(args.methods) if args.methods is not None else ([] if args.learner_state else list(DEFAULT_METHODS))
    try:
        methods = resolve_methods(names, seed=args.seed, presets=presets) if names else []
        methods += [state_method(directory) for directory in args.learner_state]
    except ValueError as error:
        raise CliError(str(error).replace("\n", " ")) from None
    if not methods:
        raise CliError("no methods given")
    try:
        corpus = LibriSpeechCorpus(args.corpus, labels)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from None
    if len(corpus) == 0:
        raise CliError(f"no utterances (<speaker>-<chapter>-<utt>.flac/.wav) under {args.corpus}")
    train_corpus = None
    if args.train_corpus is not None:
        train_corpus = LibriSpeechCorpus(args.train_corpus)
        if len(train_corpus) == 0:
            raise CliError(f"no utterances (<speaker>-<chapter>-<utt>.flac/.wav) under {args.train_corpus}")
    settings = EvaluationSettings(
        train_minutes=args.train_minutes, seed=args.seed, max_frames=args.max_frames,
        curve_methods=tuple(_names(args.curve_methods)), curve_points=args.curve_points, curve_every=args.curve_every,
        probe_modules=args.probe_modules, replay=replay,
    )
    log = None if args.quiet else (lambda line: print(f"online-gim eval: {line}", file=sys.stderr, flush=True))
    progress = no_progress if args.quiet else _stage_progress
    try:
        evaluation = Evaluation(
            corpus, settings, log=log, progress=progress, train_corpus=train_corpus,
            cache=None if args.no_cache else ResultCache(default_folder()),
        )
    except ValueError as error:
        raise CliError(str(error)) from None
    report = evaluation.run(methods)
    report.write_json(args.json)
    tables = markdown_tables(report)
    if args.markdown is not None:
        args.markdown.write_text(tables)
    if args.plot is not None:
        plot_report(report, args.plot)
    if not args.quiet:
        print(tables)
    return 0
