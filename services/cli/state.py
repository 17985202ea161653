"""``online-gim export`` and ``online-gim embed``, and the ``--state`` options of ``online-gim listen``.

Examples::

    online-gim listen --source librispeech --root ../shared/data/librispeech-mini/LibriSpeech --speed max \\
        --state runs/a --checkpoint-every-windows 500       # again with the same --state DIR: resumes
    online-gim export --state runs/a --out model.pt         # the encoder of the newest intact checkpoint
    online-gim embed --model model.pt talk.wav song.mp3 --out-dir features/   # features/talk.npy, ...

The state directory and the checkpoint format are :mod:`online_gim.state`; this module turns their
errors into one-sentence CLI errors.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from online_gim.services.cli import CliError

if TYPE_CHECKING:
    from online_gim.run.contract import StreamLearner
    from online_gim.run.state import RunState

DEFAULT_EVERY_WINDOWS = 1000
DEFAULT_EVERY_SECONDS = 300.0
DEFAULT_KEEP = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="write the encoder of a state directory's newest checkpoint to a model file",
        description="Write the encoder (config, module weights, normalisation and input statistics) of the "
        "newest intact checkpoint in a listen state directory, for `online-gim embed` or torch.load(weights_only=True).",
    )
    export.add_argument("--state", type=Path, required=True, metavar="DIR", help="a state directory of `online-gim listen --state`")
    export.add_argument("--out", type=Path, required=True, metavar="FILE.pt", help="the model file to write")
    export.set_defaults(func=run_export)

    embed = subparsers.add_parser(
        "embed",
        help="write the features of audio files as .npy, with an exported encoder",
        description="Encode whole audio files (anything FFmpeg decodes) with an exported encoder and write one "
        ".npy array (frames x channels, float32) per file, named after the file.",
    )
    embed.add_argument("--model", type=Path, required=True, metavar="FILE.pt", help="a model file of `online-gim export`")
    embed.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files")
    embed.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                       help="where to write <name>.npy (default: next to each input file)")
    embed.add_argument("--module", type=int, default=None, metavar="N",
                       help="the module whose output to write: 0 = the bottom conv module (default: the top module)")
    embed.set_defaults(func=run_embed)


# ---------------------------------------------------------------------- listen --state


def add_listen_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--state``, ``--checkpoint-every-windows``, ``--checkpoint-every-seconds`` and ``--keep``."""
    group = parser.add_argument_group("durable state (checkpoints and resume)")
    group.add_argument("--state", type=Path, default=None, metavar="DIR",
                       help="keep the learner's state here: checkpoint periodically and at the end, and resume "
                       "from the newest intact checkpoint when it exists (--source av: the video learner's in DIR/video)")
    group.add_argument("--checkpoint-every-windows", type=int, default=DEFAULT_EVERY_WINDOWS, metavar="N",
                       help=f"checkpoint after every N windows (0 = off; default {DEFAULT_EVERY_WINDOWS})")
    group.add_argument("--checkpoint-every-seconds", type=float, default=DEFAULT_EVERY_SECONDS, metavar="T",
                       help=f"checkpoint when T seconds (wall clock) have passed since the last one "
                       f"(0 = off; default {DEFAULT_EVERY_SECONDS:.0f})")
    group.add_argument("--keep", type=int, default=DEFAULT_KEEP, metavar="K",
                       help=f"checkpoints to keep (default {DEFAULT_KEEP})")


@dataclass(frozen=True)
class StateOptions:
    """``--state DIR`` and its schedule: checkpoint every ``every_windows`` windows and every
    ``every_seconds`` seconds (0 = off), keep ``keep`` checkpoints."""

    directory: Path
    every_windows: int = DEFAULT_EVERY_WINDOWS
    every_seconds: float = DEFAULT_EVERY_SECONDS
    keep: int = DEFAULT_KEEP


def from_args(args: argparse.Namespace) -> StateOptions | None:
    """The state options (``None`` without ``--state``).

    Raises:
        CliError: negative periods, or ``--keep`` below 1.
    """
    if args.state is None:
        return None
    if args.checkpoint_every_windows < 0 or not args.checkpoint_every_seconds >= 0:
        raise CliError("--checkpoint-every-windows and --checkpoint-every-seconds must be >= 0 (0 = off)")
    if args.keep < 1:
        raise CliError("--keep must be at least 1")
    return StateOptions(args.state, args.checkpoint_every_windows, args.checkpoint_every_seconds, args.keep)


def open_listen_state(options: StateOptions, *, video: bool = False, directory: Path | None = None) -> RunState:
    """The listen state in ``directory`` (default: ``options.directory``): a
    :class:`~online_gim.run.audio_state.ListenState`, or with ``video`` a
    :class:`~online_gim.run.video_state.VideoListenState`.

    Prints where the run resumes from. Raises :class:`CliError` on a locked or unusable directory,
    no intact checkpoint, another format version, or another learner's checkpoints.
    """
    from online_gim.run.audio_state import ListenState
    from online_gim.run.video_state import VideoListenState
    from online_gim.state.store import CheckpointError

    directory = options.directory if directory is None else directory
    try:
        state = (VideoListenState if video else ListenState)(directory, keep=options.keep)
    except CheckpointError as error:
        raise CliError(str(error)) from None
    if state.checkpoint is None:
        print(f"online-gim listen: state {directory}: no checkpoint yet, starting afresh", file=sys.stderr)
    else:
        print(
            f"online-gim listen: state {directory}: resuming from {state.checkpoint.entry.file} "
            f"(model step {state.resumed_from_step}, {state.describe()})",
            file=sys.stderr,
        )
    return state


def restore(state: RunState, learner: StreamLearner) -> None:
    """Loads the checkpoint into ``learner``; a checkpoint of another config, or one whose learned
    weights are not finite, is a :class:`CliError`."""
    from online_gim.finite import NonFiniteState

    try:
        state.restore(learner)
    except NonFiniteState as error:
        raise CliError(
            f"cannot resume from {state.store.directory / state.checkpoint.entry.file}: {error}; "
            "move the state directory away to start afresh"
        ) from None
    except ValueError as error:
        raise CliError(
            f"cannot resume from {state.store.directory / state.checkpoint.entry.file}: {error} "
            "(use the configuration it was written with, or another --state DIR)"
        ) from None


def not_saved(options: StateOptions | None, document: dict) -> int | None:
    """The exit code :data:`~online_gim.services.cli.EXIT_NOT_SAVED` when the listen summary ``document`` says
    that learning of this run could not be saved (its checkpoints failed), after telling so on
    stderr; ``None`` otherwise."""
    from online_gim.services.cli import EXIT_NOT_SAVED

    lost = {key: document[key] for key in ("windows_not_saved", "video_windows_not_saved") if document.get(key)}
    if not lost or options is None:
        return None
    print(
        f"online-gim listen: error: checkpoints could not be written to {options.directory}: "
        + ", ".join(f"{count} {'video ' if key.startswith('video') else ''}windows" for key, count in lost.items())
        + " learned by this run are not saved",
        file=sys.stderr,
    )
    return EXIT_NOT_SAVED


# ---------------------------------------------------------------------- export


def run_export(args: argparse.Namespace) -> int:
    from online_gim.finite import NonFiniteState
    from online_gim.run.audio_state import newest_learner_checkpoint
    from online_gim.state.export import export_encoder

    try:
        checkpoint = newest_learner_checkpoint(args.state)
    except ValueError as error:
        raise CliError(str(error)) from None
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        export_encoder(checkpoint.state["learner"], args.out)
    except NonFiniteState as error:
        raise CliError(
            f"nothing written: {error} in {checkpoint.entry.file} (resume it with `online-gim listen --state "
            f"{args.state}`, which resets them, and export again)"
        ) from None
    except OSError as error:
        raise CliError(f"cannot write {args.out}: {error.strerror or error}") from None
    stages = len(checkpoint.state["learner"]["stages"])
    print(
        f"wrote {args.out}: the encoder ({stages} modules) of {checkpoint.entry.file}, "
        f"model step {checkpoint.state['learner']['counters']['updates']}"
    )
    return 0


# ---------------------------------------------------------------------- embed


def run_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from online_gim.audio_files import embed_file
    from online_gim.state.export import Encoder, EncoderFileError

    outputs = [(args.out_dir or path.parent) / f"{path.stem}.npy" for path in args.files]
    if len(set(outputs)) < len(outputs):
        raise CliError("two input files have the same name: their features would overwrite each other (embed them separately)")
    try:
        encoder = Encoder.load(args.model)
    except (FileNotFoundError, EncoderFileError) as error:
        raise CliError(str(error)) from None
    module = encoder.num_modules - 1 if args.module is None else args.module
    if not 0 <= module < encoder.num_modules:
        raise CliError(f"--module must be between 0 and {encoder.num_modules - 1}")
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path, out in zip(args.files, outputs):
        try:
            features = embed_file(encoder, path, module)
            np.save(out, features)
        except (OSError, ValueError) as error:  # missing, undecodable, non-finite, too short, unwritable
            print(f"online-gim embed: error: {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{out}: {features.shape[0]} frames x {features.shape[1]} (module {module})")
    return 1 if failed else 0
