"""``online-gim bench``: speed, memory and exactness of the online learner, all measured in one run.

Each ``measure_*`` function measures one thing; :func:`run_bench` runs them all and returns a
:class:`BenchResult` (``to_dict()`` is the JSON object of ``online-gim bench --json``). Speeds are
real-time factors: wall-clock seconds of compute per second of audio (below 1 keeps up with a live
stream). Timings use the process' torch thread settings and are as noisy as the machine is busy;
ratios against a baseline measured in the same run (``rtf_ratio_e2e_over_greedy``) are the numbers
to compare across machines. Memory is measured in fresh processes (:func:`run_in_fresh_process`),
so that one measurement's allocations cannot hide or inflate another's. Linux only (``/proc``).

Example::

    result = run_bench()                 # the shipped learner, LearnerConfig()
    print(result.rtf_learn, result.eprop_mem_ratio_t1024_t128)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from online_gim.config import EncoderConfig, LearnerConfig
from online_gim.eprop import StopGradientGRU, bptt_gradients, eprop_gradients
from online_gim.learner import OnlineLearner
from online_gim.report import StepReport
from online_gim.streams.corpora.phone_like import phone_like_stream
from online_gim.streams.window import SAMPLE_RATE, AudioWindow

if TYPE_CHECKING:
    from online_gim.video.config import VideoLearnerConfig

GRU_MEMORY_STEPS = (128, 1024)
"""Sequence lengths (steps = 10 ms frames) whose GRU-update memory is compared."""

WARMUP_SPARE_WINDOWS = 10
"""Windows read beyond the minimum warm-up, for a learner whose memories take longer to fill."""

MIB = 2**20

_GRU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
"""The processes of :func:`measure_gru_memory`: glibc mmaps allocations above 64 KiB and unmaps
them when freed, so that RSS follows the live tensors rather than what the heap kept from earlier
allocations; one thread (the same for every case), which a busy machine does not slow down."""


# ---------------------------------------------------------------------- audio


def cached_synth_corpus() -> Path | None:
    """The default synthetic espeak-ng corpus if it is already in the cache (never generates it)."""
    from online_gim.streams.corpora.synth import MANIFEST, cache_root, default_corpus_name

    path = cache_root() / default_corpus_name()
    return path if (path / MANIFEST).is_file() else None


def speech_windows(count: int, window: int, *, corpus_dir: Path | None) -> list[AudioWindow]:
    """``count`` consecutive windows of ``(window,)`` samples at 16 kHz of one stream.

    From the synthetic espeak-ng corpus at ``corpus_dir`` (replayed in its seeded shuffled order,
    with phone and speaker labels), or, when ``corpus_dir`` is ``None``, from
    :func:`~online_gim.streams.corpora.phone_like.phone_like_stream` (no labels).
    """
    if corpus_dir is None:
        return [
            AudioWindow(samples, start_sample=i * window, source_id="bench")
            for i, samples in enumerate(phone_like_stream(count, window))
        ]
    from online_gim.streams.sources.synth import SynthSource
    from online_gim.streams.ring_buffer import iter_windows

    with SynthSource(corpus_dir=corpus_dir, speed=None, loop=True) as source:
        return list(islice(iter_windows(source, window=window, hop=window, source_id="bench"), count))


# ---------------------------------------------------------------------- speed


@dataclass(frozen=True)
class LearnMeasurement:
    """How fast a learner learns, and what its modules look like on the timed windows.

    Attributes:
        rtf: median over the timed windows of ``step`` seconds / seconds of audio per window.
        warmup_windows: windows learned before timing (at least the minimum asked for, and until
            a window on which the learner learned: see :func:`learned`).
        timed_windows: windows timed.
        learned_fraction: fraction of the timed windows on which the learner learned.
        loss_ratio: per module, the mean of ``loss / chance_loss`` over the timed windows (about 1:
            nothing learned or collapsed); NaN for a module never scored (in ``e2e`` mode all but
            the top).
        dead_fraction_max: per module, the largest fraction of output units that were never
            positive in a timed window.
    """

    rtf: float
    warmup_windows: int
    timed_windows: int
    learned_fraction: float
    loss_ratio: tuple[float, ...]
    dead_fraction_max: tuple[float, ...]


def learned(report: StepReport, mode: Literal["greedy", "e2e"]) -> bool:
    """Whether a window updated the learner: every module (``greedy``), or the one top loss (``e2e``,
    which reports only the top module as updated)."""
    modules = report.modules if mode == "greedy" else report.modules[-1:]
    return bool(modules) and all(module.updated for module in modules)


def measure_learning(
    learners: Sequence[OnlineLearner], windows: Sequence[AudioWindow], *, min_warmup: int, timed: int
) -> list[LearnMeasurement]:
    """Times ``step`` (its own ``StepReport.seconds``) of several learners on the same windows.

    The learners take turns window by window, so that a change in the machine's load touches all
    of them alike and their ratios stay meaningful on a busy machine. All first learn
    ``min_warmup`` windows, and then more until every learner learned on the same window (the
    negative memories must hold entries before a module can update); those windows are not
    timed. Then ``timed`` windows are.

    Args:
        learners: learners with schedule ``all`` (every module updates on every window).
        windows: the stream, in order; enough for the warm-up and the timed windows.
        min_warmup: windows learned before timing, at least.
        timed: windows timed.
    Returns:
        One measurement per learner, in order.
    Raises:
        ValueError: a schedule is not ``all``, or the windows ran out before ``timed`` were timed.
    """
    for learner in learners:
        if learner.config.mode == "greedy" and learner.config.schedule != "all":
            raise ValueError(f"the benchmark times schedule 'all', not {learner.config.schedule!r}")
    stream = iter(windows)
    warmup = 0
    for window in stream:
        warmup += 1
        steps = [learned(learner.step(window), learner.config.mode) for learner in learners]  # every learner steps
        if all(steps) and warmup >= min_warmup:
            break
    reports = [[learner.step(window) for learner in learners] for window in islice(stream, timed)]
    if len(reports) < timed:
        raise ValueError(f"{len(windows)} windows: {warmup} went to the warm-up, fewer than {timed} were left to time")
    return [_measurement(learner, [row[index] for row in reports], warmup) for index, learner in enumerate(learners)]


def _measurement(learner: OnlineLearner, reports: list[StepReport], warmup: int) -> LearnMeasurement:
    """Summarises one learner's reports of the timed windows."""
    audio_seconds = learner.config.window / SAMPLE_RATE
    modules = range(learner.num_modules)
    return LearnMeasurement(
        rtf=statistics.median(report.seconds for report in reports) / audio_seconds,
        warmup_windows=warmup,
        timed_windows=len(reports),
        learned_fraction=sum(learned(report, learner.config.mode) for report in reports) / len(reports),
        loss_ratio=tuple(_mean_finite([r.modules[i].loss_ratio for r in reports]) for i in modules),
        dead_fraction_max=tuple(max(r.modules[i].dead_fraction for r in reports) for i in modules),
    )


def _mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else float("nan")


def measure_rtf_infer(learner: OnlineLearner, windows: Sequence[AudioWindow]) -> float:
    """Median over ``windows`` of the seconds of ``learner.embed`` / seconds of audio per window.

    "Forward only": every module's output for the window, without gradients, memory writes, probes,
    statistics or trace updates (what serving embeddings costs; the GRU starts from a zero state).
    """
    seconds = []
    for window in windows:
        started = time.perf_counter()
        learner.embed(window.samples)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) / (learner.config.window / SAMPLE_RATE)


def e2e_bptt_config(config: LearnerConfig) -> LearnerConfig:
    """The same stack trained end to end: mode ``e2e``, GRU ``bptt`` (the backprop baseline)."""
    data = config.model_dump()
    data["mode"] = "e2e"
    data["encoder"]["gru"] = "bptt"
    return LearnerConfig.model_validate(data)


# ---------------------------------------------------------------------- e-prop


def eprop_relative_error(input_size: int, hidden_size: int, *, steps: int = 256, chunk: int = 32, seed: int = 0) -> float:
    """Largest relative error ``|g_eprop - g_bptt| / |g_bptt|`` (Frobenius norms) over the four GRU
    parameters, float32, for a random ``(steps, input_size)`` sequence split into two windows and the
    loss ``sum_t <L_t, h_t>`` with random ``L``. Float32 rounding: about 1e-6."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    gru = StopGradientGRU(input_size, hidden_size)
    x = torch.randn(steps, input_size, generator=generator)
    signal = torch.randn(steps, hidden_size, generator=generator)
    expected = bptt_gradients(gru, x, signal)
    half = steps // 2
    got = eprop_gradients(gru, [x[:half], x[half:]], [signal[:half], signal[half:]], chunk=chunk)
    return max(float((e - g).norm() / e.norm()) for e, g in zip(expected, got))


def gru_update_peak_mib(
    method: Literal["eprop", "bptt"], steps: int, *, input_size: int, hidden_size: int, chunk: int, seed: int = 0
) -> float:
    """Peak memory (MiB) of computing one GRU weight gradient over a ``steps``-long sequence.

    Meant for a fresh process (:func:`measure_gru_memory`). The inputs ``(steps, input_size)`` and
    learning signals ``(steps, hidden_size)`` exist before the measurement; a warm-up update of
    ``chunk`` steps loads the libraries and their buffers. The peak resident set size is reset
    just before the update (``/proc/self/clear_refs``), and the result is the peak after it minus
    the resident size before it. ``eprop`` streams the sequence through the GRU in chunks of ``chunk`` steps
    (:func:`~online_gim.eprop.eprop_gradients`); ``bptt`` builds the autograd graph of all steps
    (:func:`~online_gim.eprop.bptt_gradients`).
    """
    torch.manual_seed(seed)
    gru = StopGradientGRU(input_size, hidden_size)

    def update(x: torch.Tensor, signal: torch.Tensor) -> list[torch.Tensor]:
        if method == "eprop":
            return eprop_gradients(gru, [x], [signal], chunk=chunk)
        return bptt_gradients(gru, x, signal)

    update(torch.randn(chunk, input_size), torch.randn(chunk, hidden_size))
    x, signal = torch.randn(steps, input_size), torch.randn(steps, hidden_size)
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_mib()
    update(x, signal)
    return _peak_rss_mib() - before


def _rss_mib() -> float:
    """Resident set size now, MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def _peak_rss_mib() -> float:
    """Peak resident set size of this process since it started or since the last clear_refs reset,
    MiB (``VmHWM``; ``getrusage``'s ``ru_maxrss`` would also count the parent's pages at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


@dataclass(frozen=True)
class GruMemory:
    """Peak memory (MiB) of one GRU update at the sequence lengths of :data:`GRU_MEMORY_STEPS`.

    Attributes:
        eprop_mib: e-prop at each length (should not depend on it).
        bptt_mib: autograd BPTT at each length (grows about linearly).
    """

    eprop_mib: tuple[float, float]
    bptt_mib: tuple[float, float]

    @property
    def eprop_ratio(self) -> float:
        """Long over short; NaN if the short one allocated nothing measurable (a tiny GRU)."""
        return _ratio(*reversed(self.eprop_mib))

    @property
    def bptt_ratio(self) -> float:
        """Long over short; NaN if the short one allocated nothing measurable."""
        return _ratio(*reversed(self.bptt_mib))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def measure_gru_memory(input_size: int, hidden_size: int, *, chunk: int) -> GruMemory:
    """:func:`gru_update_peak_mib` for e-prop and BPTT at both lengths, each in a fresh process
    (one thread, glibc returning freed memory: :data:`_GRU_MEMORY_ENV`)."""

    def peak(method: str, steps: int) -> float:
        kwargs = dict(method=method, steps=steps, input_size=input_size, hidden_size=hidden_size, chunk=chunk)
        return float(run_in_fresh_process("gru_update_peak_mib", kwargs, env=_GRU_MEMORY_ENV))

    eprop = tuple(peak("eprop", steps) for steps in GRU_MEMORY_STEPS)
    bptt = tuple(peak("bptt", steps) for steps in GRU_MEMORY_STEPS)
    return GruMemory(eprop_mib=eprop, bptt_mib=bptt)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- learner memory


def learner_peak_rss(config: dict, windows: int, corpus_dir: str | None) -> dict[str, float]:
    """Builds a learner and learns ``windows`` windows; meant for a fresh process.

    Args:
        config: ``LearnerConfig.model_dump(mode="json")``.
        windows: windows learned.
        corpus_dir: audio as in :func:`speech_windows` (``None``: the phone-like signal).
    Returns:
        ``baseline_mib``: resident set size with the libraries loaded and the audio read, before
        the learner is built; ``peak_mib``: the process' peak resident set size at the end;
        ``state_mib``: what the learner must hold between windows, counted tensor by tensor
        (:func:`learner_state_mib`). All in MiB.
    """
    learner_config = LearnerConfig.model_validate(config)
    stream = speech_windows(windows, learner_config.window, corpus_dir=Path(corpus_dir) if corpus_dir else None)
    baseline = _rss_mib()
    learner = OnlineLearner(learner_config)
    for window in stream:
        learner.step(window)
    return {"baseline_mib": baseline, "peak_mib": _peak_rss_mib(), "state_mib": learner_state_mib(learner)}


def learner_state_mib(learner: OnlineLearner) -> float:
    """MiB of the tensors a learner keeps between windows: every module's and head's parameters
    and the Adam moments of their optimisers (the floor of its memory at float32, whatever the
    libraries and a window's activations add). FAISS memories, traces and probes are not counted."""
    parameters = [p for stage in learner.stages for p in (*stage.module.parameters(), *stage.head.parameters())]
    moments = [
        value
        for optimizer in learner.optimizers
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.dim() > 0
    ]
    return sum(t.numel() * t.element_size() for t in (*parameters, *moments)) / MIB


# ---------------------------------------------------------------------- the published reference


REFERENCE_FLAGS = ("--subsample", "--num_epochs", "1000", "--learning_rate", "2e-4", "--start_epoch", "0",
                   "--batch_size", "1", "--model_splits", "6")
"""The reference's own command-line flags (its ``audio_traineval.sh``) at batch 1: GIM, six modules."""


def reference_rtf(reference: str, mode: Literal["train", "forward"], windows: int, warmup: int = 2, seed: int = 0) -> float:
    """Median seconds per window / 1.28 s of the published Greedy InfoMax audio code at batch 1.

    Meant for a fresh process. Builds the model and optimiser with the reference's own argument
    parser and loader (:data:`REFERENCE_FLAGS`) and times, on one random 20480-sample window, its
    training step (the sequence of ``GreedyInfoMax/audio/main_audio.py``'s ``train``: forward with
    the InfoNCE losses, backward, Adam step) or its forward pass through all six modules without
    gradients (``forward_through_n_layers``).

    Args:
        reference: a folder holding the ``GreedyInfoMax`` package of a snapshot of
            loeweX/Greedy_InfoMax (never part of this project; prepared as
            ``../shared/tools/gim_ref_bench/README.md`` says).
        mode: ``train`` or ``forward``.
        windows: windows timed (after ``warmup`` untimed ones).
    """
    sys.path.insert(0, reference)
    from GreedyInfoMax.audio.arg_parser import arg_parser
    from GreedyInfoMax.audio.models import load_audio_model

    sys.argv = ["main_audio", *REFERENCE_FLAGS]
    options = arg_parser.parse_args()
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        model, optimizer = load_audio_model.load_model_and_optimizer(options)
    x = torch.randn(1, 1, 20480)

    def train() -> None:
        loss = torch.mean(model(x, None, None, n=options.train_layer), 0)
        model.zero_grad()
        sum(loss).backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad():
            model.module.forward_through_n_layers(x, 5)

    step = train if mode == "train" else forward
    seconds = []
    for index in range(warmup + windows):
        started = time.perf_counter()
        step()
        if index >= warmup:
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) / (x.shape[-1] / SAMPLE_RATE)


# ---------------------------------------------------------------------- processes


def run_in_fresh_process(function: str, kwargs: dict, *, env: dict[str, str] | None = None, timeout: float = 300.0):
    """Calls ``online_gim.bench.<function>(**kwargs)`` in a new Python process and returns its result.

    ``kwargs`` and the result must be JSON values. The child's environment is this process', with
    ``OMP_NUM_THREADS`` set to this process' torch thread count, updated by ``env``.

    Raises:
        RuntimeError: the child failed (its stderr's end is in the message).
    """
    code = "import json, sys; from online_gim import bench; print(json.dumps(getattr(bench, sys.argv[1])(**json.loads(sys.argv[2]))))"
    child_env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **(env or {})}
    completed = subprocess.run(
        [sys.executable, "-c", code, function, json.dumps(kwargs)],
        env=child_env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.{function} failed in a fresh process: {completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- the whole bench


@dataclass(frozen=True)
class BenchResult:
    """Everything ``online-gim bench`` measures (see ``docs/bench.md`` for each key).

    Real-time factors are seconds of compute per second of audio; memory in MiB (2**20 bytes).
    """

    rtf_learn: float
    rtf_infer: float
    rtf_learn_e2e_bptt: float
    rtf_ratio_e2e_over_greedy: float
    eprop_max_rel_err: float
    eprop_mem_mib_t128: float
    eprop_mem_mib_t1024: float
    bptt_mem_mib_t128: float
    bptt_mem_mib_t1024: float
    eprop_mem_ratio_t1024_t128: float
    bptt_mem_ratio_t1024_t128: float
    peak_rss_mib_learn: float
    rss_mib_before_learner: float
    learner_state_mib: float
    loss_ratio_final: tuple[float, ...]
    dead_fraction_max: tuple[float, ...]
    learned_fraction: float
    learned_fraction_e2e: float
    warmup_windows: int
    timed_windows: int
    video_fps_learn: float
    audio: str
    threads: int
    omp_wait_policy: str | None
    cpu_count: int
    torch_version: str
    bench_seconds: float
    reference_rtf_train: float | None = None
    reference_rtf_forward: float | None = None
    speedup_learn_over_reference: float | None = None
    speedup_infer_over_reference: float | None = None

    def to_dict(self) -> dict[str, object]:
        """The result as JSON values (NaN, e.g. a module never scored, becomes ``None``)."""
        return {key: _json_value(value) for key, value in asdict(self).items()}


def _json_value(value: object) -> object:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_bench(
    config: LearnerConfig | None = None,
    *,
    timed_windows: int = 10,
    min_warmup: int = 3,
    rss_windows: int = 4,
    gru: EncoderConfig | None = None,
    video_config: VideoLearnerConfig | None = None,
    video_windows: int = 10,
    reference: Path | None = None,
) -> BenchResult:
    """Runs every measurement once, in this process and in fresh child processes.

    Args:
        config: the learner (default ``LearnerConfig()``: greedy, e-prop GRU, 20480-sample
            windows); the e2e baseline is :func:`e2e_bptt_config` of it.
        timed_windows: windows timed per learner (and for inference).
        min_warmup: windows learned before timing, at least.
        rss_windows: windows learned by the fresh process whose peak memory is measured.
        gru: the encoder whose GRU (input: its top conv's channels; ``gru_hidden`` units; chunks
            of ``eprop_chunk`` steps) e-prop's exactness and memory are measured on (default:
            ``config.encoder``; the memory of a tiny GRU is below what RSS resolves).
        video_config: the video learner of ``video_fps_learn`` (``None``: its default).
        video_windows: video windows timed.
        reference: a prepared snapshot of the published Greedy InfoMax code: also time its
            training step and forward pass (:func:`reference_rtf`, fresh processes, this
            process' thread count) right after the learner; ``None``: not measured.
    """
    from online_gim.video.bench import measure_video_fps_learn  # PyAV: only when measured

    started = time.perf_counter()
    config = config or LearnerConfig()
    corpus = cached_synth_corpus()
    windows = speech_windows(min_warmup + WARMUP_SPARE_WINDOWS + timed_windows, config.window, corpus_dir=corpus)
    learner = OnlineLearner(config)
    greedy, e2e = measure_learning(
        [learner, OnlineLearner(e2e_bptt_config(config))], windows, min_warmup=min_warmup, timed=timed_windows
    )
    rtf_infer = measure_rtf_infer(learner, windows[-timed_windows:])
    del learner
    references = {
        mode: run_in_fresh_process("reference_rtf", dict(reference=str(reference), mode=mode, windows=timed_windows))
        for mode in ("train", "forward")
    } if reference is not None else {}
    gru = gru or config.encoder
    gru_sizes = dict(input_size=gru.convs[-1].channels, hidden_size=gru.gru_hidden, chunk=gru.eprop_chunk)
    memory = measure_gru_memory(**gru_sizes)
    rss = run_in_fresh_process(
        "learner_peak_rss",
        dict(config=config.model_dump(mode="json"), windows=rss_windows, corpus_dir=str(corpus) if corpus else None),
    )
    return BenchResult(
        rtf_learn=greedy.rtf,
        rtf_infer=rtf_infer,
        rtf_learn_e2e_bptt=e2e.rtf,
        rtf_ratio_e2e_over_greedy=e2e.rtf / greedy.rtf,
        eprop_max_rel_err=eprop_relative_error(**gru_sizes),
        eprop_mem_mib_t128=memory.eprop_mib[0],
        eprop_mem_mib_t1024=memory.eprop_mib[1],
        bptt_mem_mib_t128=memory.bptt_mib[0],
        bptt_mem_mib_t1024=memory.bptt_mib[1],
        eprop_mem_ratio_t1024_t128=memory.eprop_ratio,
        bptt_mem_ratio_t1024_t128=memory.bptt_ratio,
        peak_rss_mib_learn=rss["peak_mib"],
        rss_mib_before_learner=rss["baseline_mib"],
        learner_state_mib=rss["state_mib"],
        loss_ratio_final=greedy.loss_ratio,
        dead_fraction_max=greedy.dead_fraction_max,
        learned_fraction=greedy.learned_fraction,
        learned_fraction_e2e=e2e.learned_fraction,
        warmup_windows=greedy.warmup_windows,
        timed_windows=timed_windows,
        video_fps_learn=measure_video_fps_learn(video_config, windows=video_windows),
        audio=f"synth:{corpus.name}" if corpus else "phone_like",
        threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        cpu_count=os.cpu_count() or 0,
        torch_version=torch.__version__,
        bench_seconds=time.perf_counter() - started,
        reference_rtf_train=references.get("train"),
        reference_rtf_forward=references.get("forward"),
        speedup_learn_over_reference=references["train"] / greedy.rtf if references else None,
        speedup_infer_over_reference=references["forward"] / rtf_infer if references else None,
    )
