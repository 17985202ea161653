"""``online-gim corpus synth``: write a labelled synthetic speech corpus (espeak-ng).

Example::

    online-gim corpus synth --out /tmp/synth --speakers 24 --utterances 20 --seed 0

writes LibriSpeech's layout plus a GIM/CPC label folder (``<out>/labels``); see
``online_gim.streams.corpora.synth``. Read it back with ``online-gim listen --source librispeech --root <out>
--labels <out>/labels``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from online_gim.services.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("corpus", help="make speech corpora (synthetic, labelled)")
    commands = parser.add_subparsers(dest="corpus_command", metavar="KIND")
    synth = commands.add_parser(
        "synth",
        help="synthesise a labelled English corpus with espeak-ng (LibriSpeech layout + GIM/CPC labels)",
        description="Synthesise English speech with espeak-ng: <out>/<spk>/<chapter>/*.flac (16 kHz), "
        "*.trans.txt, and <out>/labels/{converted_aligned_phones,train_split,test_split}.txt "
        "with one phone class (40, 0 = silence) per 10 ms frame. Deterministic for a seed.",
    )
    synth.add_argument("--out", required=True, type=Path, help="output folder (must be empty or absent)")
    synth.add_argument("--speakers", type=int, default=24, help="number of distinct speakers (default 24)")
    synth.add_argument("--utterances", type=int, default=20, help="utterances per speaker, at least 2 (default 20)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files (default 0)")
    synth.add_argument("--workers", type=int, default=None, help="parallel synthesis processes (default: CPUs, at most 8)")
    synth.add_argument("--overwrite", action="store_true", help="delete a non-empty --out folder first")
    synth.add_argument("--json", action="store_true", help="print the summary as JSON")
    synth.set_defaults(func=run_synth)
    parser.set_defaults(func=lambda args: _missing_kind(parser))


def _missing_kind(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_synth(args: argparse.Namespace) -> int:
    if args.speakers < 1:
        raise CliError("--speakers must be at least 1")
    if args.utterances < 2:
        raise CliError("--utterances must be at least 2, so that every speaker is in both splits")
    if args.workers is not None and args.workers < 1:
        raise CliError("--workers must be at least 1")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            raise CliError(f"{out} is not empty; choose another --out or pass --overwrite to replace it")
        shutil.rmtree(out)

    from online_gim.services.progress import ProgressReporter
    from online_gim.streams.corpora import espeak
    from online_gim.streams.corpora.synth import synthesize_corpus

    try:
        with ProgressReporter("online-gim corpus synth: synthesising", unit="utterances") as progress:
            corpus = synthesize_corpus(
                out, speakers=args.speakers, utterances_per_speaker=args.utterances, seed=args.seed,
                workers=args.workers, progress=progress,
            )
    except espeak.EspeakNotAvailable:
        raise CliError(f"espeak-ng is not installed; install it with `{espeak.INSTALL_HINT}`") from None
    except OSError as error:
        raise CliError(f"cannot write the corpus to {out}: {error.strerror or error}") from None
    summary = corpus.summary()
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        unknown = sum(corpus.unknown_phonemes.values())
        print(
            f"wrote {summary['utterances']} utterances, {summary['seconds_of_audio']:.1f} s of audio, "
            f"{summary['speakers']} speaker{'s' if summary['speakers'] != 1 else ''}, {summary['phone_classes_used']}/{summary['phone_classes']} phone classes used"
            + (f", {unknown} phonemes mapped by fallback" if unknown else "")
            + f" in {summary['wall_seconds']:.1f} s"
        )
        print(f"  audio:  {corpus.root}  (LibriSpeech layout, 16 kHz FLAC)")
        print(f"  labels: {corpus.labels_dir}  (converted_aligned_phones.txt, train_split.txt, test_split.txt)")
    return 0
