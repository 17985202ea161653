"""``online-gim listen``: learn from a live or replayed stream, window by window.

Examples::

    online-gim listen                                   # the synthetic speech stream, real time
    online-gim listen --source librispeech --root ../shared/data/librispeech-mini/LibriSpeech \\
        --labels ../shared/data/librispeech-mini/LibriSpeech100_labels_split --speed max
    online-gim listen --source file --path talk.mp3 --speed 2
    online-gim listen --source video --path clip.mp4 --speed max --loop --max-windows 100
    online-gim listen --source av --path clip.mp4          # audio and video learners, one decoder
    online-gim listen --source video --camera /dev/video0  # a camera (v4l2)
    online-gim listen --source mic --device pulse --duration 60 --summary-json run.json
    online-gim listen --list-devices

This is where a run is wired together, the one place: the command line becomes typed options at
its edge (:class:`~online_gim.services.cli.listen_options.ListenOptions`), and from them this module builds the
source (:mod:`online_gim.services.cli.sources`), the learner, the session
(:class:`~online_gim.run.audio.ListenSession`; the video branches: :mod:`online_gim.services.cli.listen_video`)
and its observers: the checkpointer (``--state``), the recorder (``--record``), the side service's
board (``--http``) and a one-line live status (rich, on a terminal). It stops cleanly on Ctrl-C or
SIGTERM (summary, exit 0) and writes the summary JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from online_gim.services.cli import EXIT_PEER_LOST, CliError, listen_video, scale_options, service_options, sources
from online_gim.services.cli import state as state_options
from online_gim.services.cli.listen_options import ListenOptions, RunOptions
from online_gim.services.cli.replay_options import add_replay_arguments

if TYPE_CHECKING:
    from rich.console import Console

    from online_gim.config import LearnerConfig
    from online_gim.learner import OnlineLearner
    from online_gim.report import StepReport
    from online_gim.run.audio import AudioRecorder, ListenSession, ListenSummary
    from online_gim.run.state import Checkpointer
    from online_gim.services.http import ServiceHandle
    from online_gim.services.live import LiveBoard
    from online_gim.services.progress import ProgressReporter
    from online_gim.streams.counters import StreamCounters
    from online_gim.streams.window import AudioWindow

SOURCES = ("synth", "librispeech", "file", "mic", "video", "av")
SCHEDULES = ("auto", "all", "random", "round_robin")

log = logging.getLogger("online_gim.listen")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "listen",
        help="learn from a stream: synthetic speech (default), LibriSpeech replay, a file or the microphone",
        description="Run source -> ring buffer -> learner until the stream ends, --duration or --max-windows "
        "is reached, or Ctrl-C / SIGTERM (clean stop with a summary, exit 0).",
    )
    source = parser.add_argument_group("source")
    source.add_argument("--source", choices=SOURCES, default="synth", help="where the audio comes from (default: synth, the embedded synthetic speech stream)")
    source.add_argument(
        "--root", action="append", type=Path, default=None, metavar="DIR",
        help="librispeech: a LibriSpeech tree (any subset; repeat for several); "
        "synth: an existing synthetic corpus (default: the cached default corpus, generated on first use)",
    )
    source.add_argument("--labels", type=Path, default=None, metavar="DIR",
                        help="librispeech: GIM/CPC label folder (converted_aligned_phones.txt, optional splits)")
    source.add_argument("--split", choices=("train", "test"), default=None,
                        help="librispeech/synth: only the utterances of this split of the label folder")
    source.add_argument("--order", choices=("sorted", "shuffle"), default=None,
                        help="utterance order (default: sorted for librispeech, shuffled by --seed for synth)")
    source.add_argument("--path", default=None, metavar="FILE|URL", help="file: any audio file or URL FFmpeg opens; video: a video file or URL; av: a file with audio and video")
    source.add_argument("--speed", default="1.0", metavar="1.0|N|max",
                        help="replay pace in multiples of real time; max = as fast as the learner goes, nothing dropped (default: 1.0)")
    source.add_argument("--loop", action="store_true", help="librispeech/file/video/av: start over at the end (synth always loops)")
    source.add_argument("--device", default=None, metavar="NAME|INDEX",
                        help="mic: input device (default: the system's default input)")
    source.add_argument("--list-devices", action="store_true", help="list the audio input devices and exit")

    learn = parser.add_argument_group("learner")
    learn.add_argument("--config", type=Path, default=None, metavar="FILE.yaml", help="learner configuration preset")
    learn.add_argument("--seed", type=int, default=None, help="seeds the learner and the utterance order")
    learn.add_argument("--window", type=int, default=None, metavar="N", help="samples per window (default: the config's, 20480)")
    learn.add_argument("--hop", type=int, default=None, metavar="N", help="samples between window starts (default: = window)")
    learn.add_argument(
        "--schedule", choices=SCHEDULES, default=None,
        help="modules updated per window: auto = all while the learner keeps up with the stream, fewer "
        "(round-robin) when it falls behind; all; random (one); round_robin (one). Default: auto, or the "
        "config's schedule when it sets one",
    )
    learn.add_argument("--buffer-seconds", type=float, default=None, metavar="S",
                       help="ring buffer size in seconds of audio (default: 8 windows)")
    add_replay_arguments(learn, "learn again from up to R stored windows of the recent past after each live "
                         "window, only in time the stream leaves idle (always at --speed max); default 0 "
                         "(docs/replay.md)")

    run = parser.add_argument_group("run")
    run.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds of source audio")
    run.add_argument("--max-windows", type=int, default=None, metavar="N", help="stop after N windows")
    run.add_argument("--summary-json", type=Path, default=None, metavar="PATH", help="write the final summary here")
    run.add_argument("--record", type=Path, default=None, metavar="FILE.wav",
                     help="also write the audio the learner processed (16 kHz mono) to this file")
    run.add_argument("--quiet", action="store_true", help="no live status line and no printed summary")
    listen_video.add_arguments(parser)
    service_options.add_arguments(parser)
    state_options.add_listen_arguments(parser)
    scale_options.add_arguments(parser)
    parser.set_defaults(func=run_listen)


# ---------------------------------------------------------------------- building the parts


def _list_devices() -> int:
    from online_gim.streams.sources.mic import MicrophoneUnavailable, input_devices

    try:
        devices = input_devices()
    except MicrophoneUnavailable as error:
        raise CliError(str(error)) from None
    if not devices:
        print("no audio input devices")
        return 0
    for d in devices:
        mark = "*" if d["default"] else " "
        print(f"{mark} {d['index']:>3}  {d['name']}  ({d['hostapi']}, {d['channels']} in, {d['samplerate']:.0f} Hz)")
    return 0


# ---------------------------------------------------------------------- the live status line


class StatusLine:
    """A :class:`~online_gim.run.contract.StepObserver` that shows the run's progress through a
    :class:`~online_gim.services.progress.ProgressReporter` (seconds of audio processed), with a status: source
    time, windows, drops, real-time factor, module updates and per-module loss. With the audio the
    run will process known (:func:`audio_to_process`), a bar and the time left on a terminal, a
    plain line every few seconds otherwise; without, the status alone."""

    def __init__(self, reporter: ProgressReporter, hop: int, counters: StreamCounters) -> None:
        self._reporter = reporter
        self._counters = counters
        self._hop_seconds = hop / 16_000
        self._compute = 0.0
        self._windows = 0
        self._slots = 0
        self._updates = 0
        self._first_sample: int | None = None

    def on_step(self, window: AudioWindow, report: StepReport) -> None:
        counters = self._counters
        self._windows += 1
        self._compute += report.seconds
        self._slots += len(report.modules)
        self._updates += sum(m.updated for m in report.modules)
        if self._first_sample is None:
            self._first_sample = window.start_sample
        processed = (window.start_sample + int(window.samples.shape[-1]) - self._first_sample) / 16_000
        rtf = self._compute / (self._windows * self._hop_seconds)
        losses = " ".join("-" if not math.isfinite(m.loss) else f"{m.loss:.2f}" for m in report.modules)
        share = self._updates / self._slots if self._slots else 1.0
        self._reporter.update(
            processed,
            status=f"t={counters.source_seconds:.1f}s  win {self._windows}  drop {counters.samples_dropped / 16000:.1f}s"
            f"  rtf {rtf:.2f}  upd {share:.0%}  loss {losses}",
        )

    def close(self) -> None:
        self._reporter.close()


def audio_to_process(run: RunOptions, source: object, window: int, hop: int) -> float | None:
    """Seconds of audio the windows of this run will span when it ends by itself: the least of
    ``--duration``, ``--max-windows`` and what a one-pass replay or file holds (less the remainder
    shorter than a window); ``None`` for an endless stream (a microphone, a looping replay) without
    either option."""
    from online_gim.streams.sources.base import AudioSource

    def windows_span(windows: int) -> float:
        return (window + (windows - 1) * hop) / 16_000 if windows > 0 else 0.0

    def span_of(seconds: float) -> float:
        samples = round(seconds * 16_000)
        return windows_span((samples - window) // hop + 1 if samples >= window else 0)

    remaining = source.remaining_seconds() if isinstance(source, AudioSource) else None  # else a live push source
    limits = [span_of(seconds) for seconds in (remaining, run.duration) if seconds is not None]
    if run.max_windows is not None:
        limits.append(windows_span(run.max_windows))
    return min(limits) if limits else None


# ---------------------------------------------------------------------- the command


class _Interrupted(Exception):
    """A stop signal arrived before the loop started."""


class _Signals:
    """SIGINT/SIGTERM: before the loop, abort the set-up; during it, stop the session cleanly;
    a second signal while stopping ends the process at once."""

    def __init__(self) -> None:
        self.session = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        session = self.session
        if session is None:
            raise _Interrupted(name)
        if session.stopping:
            print(f"online-gim listen: {name} again, stopping at once", file=sys.stderr)
            os._exit(128 + signum)
        session.stop(f"signal:{name}")


def run_listen(args: argparse.Namespace) -> int:
    if args.list_devices:
        return _list_devices()
    options = ListenOptions.from_args(args)
    from rich.console import Console

    console = Console(stderr=True)
    interactive = console.is_terminal and not options.run.quiet
    _configure_logging(console)
    with _Signals() as signals:
        try:
            if options.scale.pipeline is not None:
                return _listen_pipeline(options, signals, console, interactive, args.argv)
            if options.scale.replicas > 1:
                from online_gim.services.cli import listen_replicas

                return listen_replicas.run(
                    options, args.argv, lambda replica_options, replica: _listen(replica_options, signals, console, interactive, replica)
                )
            return _listen(options, signals, console, interactive)
        except _Interrupted as stop:
            print(f"online-gim listen: {stop} before listening started; nothing learned", file=sys.stderr)
            return 0


def _listen_pipeline(options: ListenOptions, signals: _Signals, console: Console, interactive: bool, argv: list[str]) -> int:
    """``--pipeline``: re-executes under torchrun when no launcher started this process; under one,
    rank 0 runs the stream with a pipeline head (:mod:`online_gim.services.cli.listen_pipeline`),
    every other rank a stage."""
    from online_gim.scale import group, launch
    from online_gim.services.cli import listen_pipeline

    if not group.launched():
        launch.exec_torchrun(options.scale.launch, "online_gim.services.cli", argv)
    try:
        place = group.join()
    except (RuntimeError, ValueError) as error:
        raise CliError(f"cannot join the pipeline's process group: {error}") from None
    try:
        if place.rank > 0:
            code = listen_pipeline.run_stage(options, signals)
        else:
            code = _listen(options, signals, console, interactive, scaled=listen_pipeline.HeadRun(options))
    except BaseException:
        group.leave()
        raise
    if code == EXIT_PEER_LOST:  # gloo's threads still wait on the lost peer: tearing the group down would abort
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    group.leave()
    return code


class ScaledRun(Protocol):
    """What one process of a scaled-out run adds to a single process' listen run: rank 0 of a
    pipeline (:class:`~online_gim.services.cli.listen_pipeline.HeadRun`), a replica
    (:class:`~online_gim.services.cli.listen_replicas.Replica`).

    ``module_budget``: whether ``--schedule auto`` may update fewer modules when the stream runs ahead
    (a replica holds the whole stack; a pipeline head only stage 0's, whose pace the stages set)."""

    module_budget: bool

    def learner(self, config: LearnerConfig, *, paced: bool) -> OnlineLearner:
        """The learner this process runs (before it is resumed)."""

    def attach(self, session: ListenSession, checkpointer: Checkpointer | None) -> None:
        """Adds what it observes to the session, once the learner is resumed and the checkpointer made."""

    def run(self, session: ListenSession) -> ListenSummary:
        """Runs the session."""

    def finish(self, document: dict[str, Any]) -> int | None:
        """Adds its entries to the summary; the exit code when a peer was lost, else ``None``."""


def _listen(
    options: ListenOptions, signals: _Signals, console: Console, interactive: bool, scaled: ScaledRun | None = None
) -> int:
    """One listen run; ``scaled``: one process of a scaled-out run (rank 0 of a pipeline, a
    replica: its learner, observers, run and summary)."""
    run = options.run
    if options.source.kind == "video":
        document, failed = listen_video.listen_video(options, signals)
        _write_summary(run, document)
        if not run.quiet:
            listen_video.print_summary(document)
        if failed:
            print(f"online-gim listen: error: {document['video_error']}", file=sys.stderr)
        return state_options.not_saved(options.state, document) or (1 if failed else 0)
    state = state_options.open_listen_state(options.state) if options.state is not None else None
    try:
        source = sources.audio_source(options.source, options.video, start=state.replay_start if state is not None else None)
        if state is not None and not state.continues(source):
            source.close()
            source = sources.audio_source(options.source, options.video, start=state.fresh_start)
    except BaseException:
        if state is not None:
            state.close()
        raise
    service = board = None
    try:
        from online_gim.learner import OnlineLearner
        from online_gim.run.audio import ListenSession

        config = options.learner
        paced = options.source.kind == "mic" or options.source.speed is not None  # as the session's stream will be
        learner = scaled.learner(config, paced=paced) if scaled is not None else OnlineLearner(config)
        budget = scaled is None or scaled.module_budget
        if state is not None:
            state_options.restore(state, learner)
        session = ListenSession(
            source, learner, window=config.window, hop=options.hop, capacity=options.capacity,
            auto_schedule=options.schedule == "auto" and budget, max_seconds=run.duration, max_windows=run.max_windows,
            schedule_name=options.schedule if budget or options.schedule != "auto" else "all",
            origin=state.origin if state is not None else 0, replay=options.replay,
        )
        hop = session.summary.hop
        checkpointer = None
        if state is not None:
            checkpointer = state.checkpointer(
                learner, source=source, hop=hop, every_windows=options.state.every_windows,
                every_seconds=options.state.every_seconds, stop=session.stop,
            )
            session.add_observer(checkpointer)
        if scaled is not None:
            scaled.attach(session, checkpointer)
        if run.record is not None:
            session.add_observer(_recorder(run.record))
        if options.service is not None:
            service, board = _side_service(options, session, learner)
            if checkpointer is not None:
                board.attach_checkpointer(checkpointer)
        if not run.quiet:
            total = audio_to_process(run, source, config.window, hop)
            if interactive or total is not None:  # off a terminal, lines only when there is an end to estimate
                from online_gim.services.progress import ProgressReporter

                reporter = ProgressReporter("online-gim listen", total, unit="s of audio", console=console)
                session.add_observer(StatusLine(reporter, hop, session.counters))
        video = listen_video.BesideAudio(options, source, session, board=board) if options.source.kind == "av" else None
    except BaseException:
        if service is not None:
            service.stop()
        source.close()
        if state is not None:
            state.close()
        raise
    if video is not None:
        video.start()
    signals.session = video or session
    from online_gim.streams.sources.mic import MicrophoneUnavailable

    try:
        summary = scaled.run(session) if scaled is not None else session.run()
    except MicrophoneUnavailable as error:
        raise CliError(str(error)) from None
    finally:
        if service is not None:
            service.stop()
    document = summary.to_dict()
    lost = scaled.finish(document) if scaled is not None else None
    if video is not None:
        document.update(video.finish())
    if state is not None:
        document.update(state.summary_fields())
    _write_summary(run, document)
    if not run.quiet:
        _print_summary(document)
        if video is not None:
            listen_video.print_summary(document)
    if summary.stop_reason == "source_error":
        print(f"online-gim listen: error: {summary.error}", file=sys.stderr)
    return lost or state_options.not_saved(options.state, document) or (1 if summary.stop_reason == "source_error" else 0)


def _write_summary(run: RunOptions, document: dict[str, Any]) -> None:
    if run.summary_json is not None:
        try:
            run.summary_json.parent.mkdir(parents=True, exist_ok=True)
            run.summary_json.write_text(json.dumps(document, indent=2) + "\n")
        except OSError as error:
            raise CliError(f"cannot write the summary to {run.summary_json}: {error.strerror or error}") from None


def _recorder(path: Path) -> AudioRecorder:
    from online_gim.run.audio import AudioRecorder

    try:
        return AudioRecorder(path)
    except (OSError, RuntimeError, TypeError, ValueError) as error:  # soundfile's LibsndfileError is a RuntimeError
        raise CliError(f"cannot record to {path}: {error}") from None


def _side_service(options: ListenOptions, session: ListenSession, learner: OnlineLearner) -> tuple[ServiceHandle, LiveBoard]:
    """Starts the HTTP service with a LiveBoard observing the session; returns the service's handle
    and the board."""
    from online_gim.services.live import LiveBoard

    board = LiveBoard(
        source=session.summary.source, config=options.learner.model_dump(mode="json"),
        phone_names=sources.phone_names(options.source),
    )
    board.attach_learner(learner)
    board.attach_stream(session.stream)
    service = service_options.start(options.service, board)  # raises CliError (address in use, ...)
    session.add_observer(board)
    board.set_source_state(open=True)
    print(f"online-gim listen: serving {service.url} (dashboard, /docs, /metrics)", file=sys.stderr)
    return service, board


def _configure_logging(console) -> None:
    """Warnings (a skipped file, a lost device) on stderr: through rich on a terminal, so that they
    print above the status line; plain lines otherwise."""
    root = logging.getLogger()
    if root.handlers:
        return
    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("online-gim listen: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _print_summary(d: dict[str, Any]) -> None:
    def number(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    losses = " ".join(number(v, ".3f") for v in d["final_loss"].values())
    lines = [
        f"stopped: {d['stop_reason']}   source: {d['source']}   schedule: {d['schedule']}",
        f"windows {d['windows_processed']} (dropped {d['windows_dropped']}, non-finite {d['windows_skipped_nonfinite']})"
        f"   audio {d['seconds_of_audio']:.1f} s in {d['wall_seconds']:.1f} s"
        f"   samples in {d['samples_in']}, dropped {d['samples_dropped']}, remainder {d['samples_remainder']}"
        f"   files skipped {d['files_skipped']}",
        f"real-time factor {number(d['real_time_factor'], '.3f')}"
        + (f" (compute RTF with {d['replayed_windows']} replayed windows, {d['replayed_per_window']:.2f} per window: "
           f"{number(d['compute_rtf'], '.3f')})" if d.get("replayed_windows") else "")
        + f"   module updates skipped {d['module_updates_skipped_fraction']:.1%}   final loss per module: {losses}",
    ]
    if d.get("probe_phone_accuracy") is not None or d.get("probe_speaker_accuracy") is not None:
        lines.append(
            f"online probes (prequential): phones {number(d.get('probe_phone_accuracy'), '.1%')}"
            f"   speakers per window {number(d.get('probe_speaker_accuracy'), '.1%')}"
            f", per frame {number(d.get('probe_speaker_frame_accuracy'), '.1%')}"
        )
    if "checkpoints_written" in d:
        lines.append(
            f"state: resumed from model step {d['resumed_from_step']}, checkpoints written {d['checkpoints_written']}"
            f" (failed {d['checkpoints_failed']}), windows not saved {d['windows_not_saved']}"
            + (f", reset (not finite): {', '.join(d['state_repaired'])}" if d["state_repaired"] else "")
        )
    if d.get("device"):
        dev = d["device"]
        lines.append(
            f"device {dev['device']!r} at {dev['input_rate']} Hz: overflows {d['overflows']}, "
            f"lost {dev['device_losses']}x, reopened {dev['reopens']}x"
        )
    print("\n".join(lines))
