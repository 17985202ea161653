"""The synthetic speech corpus: English sentences spoken by espeak-ng "speakers", labelled exactly.

``synthesize_corpus(out_dir, speakers=24, utterances_per_speaker=20, seed=0)`` writes

* LibriSpeech's layout: ``<out>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` (16 kHz mono,
  16-bit FLAC) and ``<out>/<spk>/<chapter>/<spk>-<chapter>.trans.txt`` (``<utt-id> WORDS ...``);
* a GIM/CPC label folder ``<out>/labels/``: ``converted_aligned_phones.txt`` (``<utt-id> <class>
  ...``, one class of ``phones.PHONES`` per 10 ms frame = 160 samples), ``train_split.txt`` and
  ``test_split.txt`` (one utterance id per line; every speaker in both);
* ``<out>/synth_corpus.json``: the speakers' settings, per-utterance facts and versions.

How it is made (choices written down, as METHOD.md asks):

* Text: sentences from small templates over an embedded list of about 400 common English words
  (no downloads), seeded; each utterance is one or two sentences, sized for about 2-6 s of speech
  at its speaker's rate (re-drawn shorter/longer when the synthesised length falls outside).
* Speakers: distinct combinations of an espeak-ng voice variant (``m1``..``m8``, ``f1``..``f5``,
  then other human-sounding variants installed in ``espeak-ng-data/voices/!v``; robotic, whisper
  and novelty variants are never used), an English accent (``en-us``, ``en``, ``en-gb-scotland``,
  ``en-029``, ``en-gb-x-rp``, ``en-us-nyc``, ``en-gb-x-gbclan``, ``en-gb-x-gbcwmd``), base pitch,
  pitch range, speaking rate, loudness and a noise floor; pitch, range and rate are spread evenly
  over their ranges and dealt to speakers by a seeded permutation, so no two speakers share them.
  Each utterance jitters rate (+-4 %) and pitch (+-3) a little.
* Audio: espeak-ng output (22050 Hz) -> float -> band-limited resampling to 16 kHz
  (:mod:`online_gim.streams.resample`, torchaudio's Kaiser-windowed sinc, width 16, rolloff 0.945) -> leading
  and trailing silence of 0.15-0.45 s -> scaled to the speaker's speech RMS level -> Gaussian noise
  floor of the speaker's level (-66..-54 dBFS) -> 16-bit.
* Labels: espeak-ng phoneme events give each phoneme's first sample; a phoneme lasts until the
  next one starts. As in CPC's real labels the list is one or two frames (seeded) shorter than
  ``floor(samples / 160)``, and it is aligned to the END of the audio, the convention of METHOD.md
  section 7 and of this project's readers (``online_gim.streams.chunk.expand_frame_labels``): of ``L``
  labels for ``N`` samples, label ``i`` covers samples ``N - (L - i) * 160 .. N - (L - 1 - i) *
  160 - 1`` and holds the phoneme under that span's centre sample, mapped by
  ``phones.ESPEAK_TO_PHONE``; padding and pauses are silence (0). So the labels are exact to the
  sample under that reading (under a start-aligned reading they would be off by ``N mod 160``
  samples, less than one frame).
* Reproducibility: synthesis runs through ``espeak.IsolatedSynthesizer`` (a fresh fork per
  utterance), noise is drawn from ``numpy.random.default_rng((seed, speaker, utterance))``, so the
  same seed gives byte-identical files with the same espeak-ng, torch and libsndfile;
  worker count and scheduling do not matter.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from online_gim.streams.corpora import espeak
from online_gim.streams.corpora.phones import NUM_PHONES, PHONES, SILENCE, PhoneMapper
from online_gim.streams.progress import ProgressCallback

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 160
CORPUS_VERSION = 2
"""Bumped whenever the generator's output for a given seed changes (it names the default cache)."""

DEFAULT_SPEAKERS = 24
DEFAULT_UTTERANCES = 20
DEFAULT_SEED = 0

LABEL_DIR = "labels"
LABEL_FILE = "converted_aligned_phones.txt"
TRAIN_SPLIT = "train_split.txt"
TEST_SPLIT = "test_split.txt"
MANIFEST = "synth_corpus.json"

ACCENTS: tuple[str, ...] = (
    "en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)
"""espeak-ng English voices (accents), in the order speakers cycle through them."""

PREFERRED_VARIANTS: tuple[str, ...] = (
    "m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "f5", "m6", "Annie", "m7", "belinda",
    "m8", "steph", "klatt", "Andrea", "klatt3", "Alicia", "Michael", "shelby", "john", "linda",
    "paul", "grandma", "travis", "anika", "rob", "aunty", "victor", "klatt2", "quincy", "steph3",
    "Andy", "Gene", "Jacky", "Lee", "Mike", "Alex", "david", "edward", "benjamin", "norbert",
    "pablo", "pedro", "Denis", "Diogo", "Hugo", "Henrique", "Marco", "antonio", "ed", "grandpa",
    "gustave", "iven", "marcelo", "michel", "miguel", "robert", "max", "boris", "Gene2", "Mario",
    "iven2", "iven3", "iven4", "steph2", "edward2", "klatt4", "klatt5", "klatt6", "zac",
)
"""Human-sounding voice variants in the order speakers take them (alternating male and female
where possible); those not installed are skipped."""

EXCLUDED_VARIANTS = frozenset({
    "Demonic", "UniRobot", "anikaRobot", "robosoft", "robosoft2", "robosoft3", "robosoft4",
    "robosoft5", "robosoft6", "robosoft7", "robosoft8", "whisper", "whisperf", "croak", "Storm",
    "Tweaky", "Mr serious", "RicishayMax", "RicishayMax2", "RicishayMax3", "caleb", "announcer",
    "AnxiousAndy", "kaukovalta", "adam", "fast", "sandro",
})
"""Robotic, whispered, unvoiced or novelty variants: never used."""

PITCH_RANGE = (22, 78)
PITCH_SPREAD_RANGE = (20, 90)
RATE_RANGE = (135, 205)
LEVEL_DB_RANGE = (-27.0, -19.0)
NOISE_DB_RANGE = (-66.0, -54.0)
PAD_SECONDS = (0.15, 0.45)
UTTERANCE_SECONDS = (2.0, 6.0)

# --------------------------------------------------------------------------------------------
# Words (embedded, no downloads): about 400 common English words by part of speech.

_DETERMINERS = "the a this that every one some no each another my your his her our their".split()
_ADJECTIVES = (
    "big small old young new good bad long short high low early late hot cold warm cool dark "
    "bright green red blue white black brown yellow quiet loud happy sad strong weak quick slow "
    "clean dirty soft hard heavy light rich poor full empty deep wide narrow busy free safe "
    "strange simple real true open close fine fresh sweet bitter tall tiny huge gentle brave "
    "proud calm wild kind clever careful honest famous hungry tired lucky lonely friendly thin "
    "thick usual noisy"
).split()
_NOUNS = (
    "man woman child boy girl friend father mother brother sister family doctor teacher farmer "
    "king queen captain soldier student driver city town village house home room door window "
    "table chair bed floor wall garden street road river lake sea island mountain hill forest "
    "tree flower field stone rock sand water fire wind rain snow sun moon star sky cloud morning "
    "evening night day week year summer winter spring autumn book letter paper story song "
    "picture word name question answer idea plan reason problem money price market shop "
    "office school church station train ship boat car horse dog cat bird fish cow sheep apple "
    "bread cheese milk coffee tea dinner breakfast box bag key clock watch phone ring coat hat "
    "shoe glass cup plate knife bottle basket bridge tower castle kitchen corner voice music "
    "party game team class lesson map thing path mouth month truth earth north south toy coin "
    "oil noise point treasure television garage pleasure vision decision measure"
).split()
_VERBS_PAST = (
    "saw found took made gave left kept held brought bought sold sent read wrote heard met "
    "knew told showed opened closed carried watched followed helped called asked needed wanted "
    "liked loved hated moved painted cleaned washed fixed built broke lost won caught threw "
    "pushed pulled touched visited remembered forgot answered covered filled finished started "
    "changed checked counted dropped reached passed turned"
).split()
_VERBS_INTRANSITIVE = (
    "laughed smiled waited listened slept walked ran jumped danced sang worked played arrived "
    "stopped rested shouted whispered stayed returned began fell rose"
).split()
_ADVERBS = (
    "slowly quickly quietly loudly happily sadly carefully suddenly finally often never always "
    "soon again today yesterday together almost nearly gently early later"
).split()
_PREPOSITIONS = "in on under over near behind beside across along through into from with without after before around".split()
_PRONOUNS = "he she they we you i".split()
_CONJUNCTIONS = "and but so because while when although until".split()
_NUMBERS = "two three four five six seven ten twelve twenty thirty".split()
_PLURALS = (
    "books letters trees flowers birds horses boats cars apples stones houses friends children "
    "students windows doors songs stories questions days years hours minutes people"
).split()

WORDS: tuple[str, ...] = tuple(sorted(set(
    _DETERMINERS + _ADJECTIVES + _NOUNS + _VERBS_PAST + _VERBS_INTRANSITIVE + _ADVERBS + _PREPOSITIONS
    + _PRONOUNS + _CONJUNCTIONS + _NUMBERS + _PLURALS
)))
"""The embedded vocabulary (every word the corpus can say)."""


def _noun_phrase(rng: np.random.Generator) -> list[str]:
    kind = rng.integers(0, 6)
    if kind == 0:
        return [str(rng.choice(_NUMBERS)), str(rng.choice(_PLURALS))]
    if kind == 1:
        return ["the", str(rng.choice(_NOUNS))]
    if kind == 2:
        return [str(rng.choice(_DETERMINERS)), str(rng.choice(_NOUNS))]
    return [str(rng.choice(_DETERMINERS)), str(rng.choice(_ADJECTIVES)), str(rng.choice(_NOUNS))]


def _clause(rng: np.random.Generator) -> list[str]:
    subject = [str(rng.choice(_PRONOUNS))] if rng.random() < 0.35 else _noun_phrase(rng)
    if rng.random() < 0.3:
        words = subject + [str(rng.choice(_VERBS_INTRANSITIVE))]
    else:
        words = subject + [str(rng.choice(_VERBS_PAST))] + _noun_phrase(rng)
    if rng.random() < 0.5:
        words += [str(rng.choice(_PREPOSITIONS))] + _noun_phrase(rng)
    if rng.random() < 0.3:
        words.append(str(rng.choice(_ADVERBS)))
    return words


def make_sentences(rng: np.random.Generator, target_words: int) -> str:
    """Seeded English text of about ``target_words`` words: sentences of one or two clauses."""
    sentences: list[str] = []
    count = 0
    while count < max(3, target_words):
        words = _clause(rng)
        if count + len(words) < target_words - 3 and rng.random() < 0.5:
            words = words + [","] + [str(rng.choice(_CONJUNCTIONS))] + _clause(rng)
        count += sum(1 for w in words if w != ",")
        text = " ".join(words).replace(" ,", ",")
        text = text[0].upper() + text[1:]
        sentences.append(text + ("?" if rng.random() < 0.1 else "."))
    text = " ".join(sentences)
    return text.replace(" i ", " I ").replace(", i ", ", I ")


def transcript(text: str) -> str:
    """LibriSpeech-style transcript: upper case words, no punctuation."""
    return " ".join("".join(c for c in word if c.isalpha() or c == "'").upper() for word in text.split())


# --------------------------------------------------------------------------------------------
# Speakers


@dataclass(frozen=True)
class SpeakerConfig:
    """One synthetic speaker: an espeak-ng voice and its settings.

    Attributes:
        speaker_id: LibriSpeech-style numeric id (the first path component).
        chapter_id: the speaker's single chapter (the second path component).
        accent: espeak-ng English voice (``"en-us"``, ``"en-gb-scotland"``, ...).
        variant: voice variant (``"m3"``, ``"f2"``, ...).
        pitch: base pitch 0..100 (espeak's scale, 50 = the variant's normal).
        pitch_range: 0..100 (0 = monotone).
        rate: words per minute.
        level_db: RMS level of the speech in dBFS.
        noise_db: RMS level of the noise floor in dBFS.
    """

    speaker_id: str
    chapter_id: str
    accent: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int
    level_db: float
    noise_db: float

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


def available_variants() -> list[str]:
    """Usable voice variants, preferred ones first, then the other installed ones (sorted)."""
    installed = set(espeak.list_variants())
    if not installed:  # unknown data path: trust the preferred list
        return list(PREFERRED_VARIANTS)
    ordered = [v for v in PREFERRED_VARIANTS if v in installed]
    ordered += sorted(installed - set(ordered) - EXCLUDED_VARIANTS)
    return ordered


def make_speakers(count: int, seed: int, variants: list[str] | None = None) -> list[SpeakerConfig]:
    """``count`` distinct speakers; deterministic for ``(count, seed)`` and the installed variants."""
    if count < 1:
        raise ValueError("need at least one speaker")
    variants = variants if variants is not None else available_variants()
    if not variants:
        raise espeak.EspeakError("espeak-ng has no usable voice variants")
    rng = np.random.default_rng([seed, 0x5EA4E5])

    def spread(low: float, high: float) -> np.ndarray:
        values = np.linspace(low, high, count) if count > 1 else np.array([(low + high) / 2])
        return values[rng.permutation(count)]

    pitches = spread(*PITCH_RANGE)
    ranges = spread(*PITCH_SPREAD_RANGE)
    rates = spread(*RATE_RANGE)
    levels = spread(*LEVEL_DB_RANGE)
    noises = spread(*NOISE_DB_RANGE)
    speakers = []
    for index in range(count):
        variant = variants[index % len(variants)]
        # accents cycle; a second pass over the variants shifts the accent so pairs stay distinct
        accent = ACCENTS[(index + index // len(variants) * 3) % len(ACCENTS)]
        speakers.append(SpeakerConfig(
            speaker_id=str(1000 + index),
            chapter_id=str(20000 + index),
            accent=accent,
            variant=variant,
            pitch=int(round(pitches[index])),
            pitch_range=int(round(ranges[index])),
            rate=int(round(rates[index])),
            level_db=round(float(levels[index]), 2),
            noise_db=round(float(noises[index]), 2),
        ))
    return speakers


# --------------------------------------------------------------------------------------------
# Corpus


@dataclass(frozen=True)
class UtteranceInfo:
    """One written utterance."""

    utterance_id: str
    speaker_id: str
    path: Path
    text: str
    samples: int
    num_labels: int
    split: str


@dataclass
class SynthCorpus:
    """What ``synthesize_corpus`` wrote.

    Attributes:
        root: the LibriSpeech-layout root (``<root>/<spk>/<chapter>/*.flac``).
        labels_dir: the GIM/CPC label folder (``converted_aligned_phones.txt`` and the splits).
        speakers: the speakers, in id order.
        utterances: every utterance, in id order.
        phone_frames: frames per phone class (index = class), over all labels.
        unknown_phonemes: espeak mnemonics that needed ``phones``' fallback, with counts.
        seed: the seed.
        wall_seconds: time the generation took.
    """

    root: Path
    labels_dir: Path
    speakers: list[SpeakerConfig]
    utterances: list[UtteranceInfo]
    phone_frames: list[int]
    unknown_phonemes: dict[str, int]
    seed: int
    wall_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Seconds of audio."""
        return sum(u.samples for u in self.utterances) / SAMPLE_RATE

    @property
    def phone_classes_used(self) -> int:
        return sum(1 for n in self.phone_frames if n > 0)

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "labels": str(self.labels_dir),
            "speakers": len(self.speakers),
            "utterances": len(self.utterances),
            "seconds_of_audio": round(self.seconds, 2),
            "phone_classes_used": self.phone_classes_used,
            "phone_classes": NUM_PHONES,
            "unknown_phonemes": self.unknown_phonemes,
            "wall_seconds": round(self.wall_seconds, 2),
            "seed": self.seed,
        }


@dataclass(frozen=True)
class _Plan:
    speaker_index: int
    utterance_index: int
    speaker: SpeakerConfig
    utterance_id: str


def _resampler():  # noqa: ANN202
    import torch

    from online_gim.streams.resample import resample as sinc_resample

    def resample(wave: np.ndarray, rate: int) -> np.ndarray:
        if rate == SAMPLE_RATE:
            return wave.astype(np.float32)
        tensor = torch.from_numpy(wave.astype(np.float32))
        return sinc_resample(tensor, rate, SAMPLE_RATE, lowpass_filter_width=16, rolloff=0.945, window="kaiser").numpy()

    return resample


def frame_labels(
    phoneme_starts: np.ndarray, phoneme_classes: np.ndarray, native_rate: int, native_length: int,
    lead: int, total: int, num_labels: int,
) -> np.ndarray:
    """``num_labels`` phone classes, one per 10 ms frame, for a padded 16 kHz utterance.

    The frames are aligned to the END of the ``total`` samples, as every reader of CPC labels
    in this project aligns them (``online_gim.streams.chunk.expand_frame_labels``): label ``i`` covers samples
    ``total - (num_labels - i) * 160 .. total - (num_labels - 1 - i) * 160 - 1`` and takes the
    phoneme under its centre sample. ``phoneme_starts`` are native-rate sample indices (ascending)
    where each phoneme starts; the speech occupies 16 kHz samples ``lead .. lead + native_length *
    16000 / native_rate``; outside it, and before the first phoneme, is silence.
    """
    centres = total - (num_labels - np.arange(num_labels)) * FRAME_SAMPLES + FRAME_SAMPLES // 2
    native = (centres - lead) * (native_rate / SAMPLE_RATE)
    labels = np.full(num_labels, SILENCE, dtype=np.int64)
    inside = (native >= 0) & (native < native_length)
    if len(phoneme_starts):
        index = np.searchsorted(phoneme_starts, native, side="right") - 1
        has = inside & (index >= 0)
        labels[has] = phoneme_classes[index[has]]
    return labels


class _Generator:
    def __init__(self, seed: int, workers: int) -> None:
        self.seed = seed
        self.mapper = PhoneMapper()
        self.mapper_lock = threading.Lock()
        self.resample = _resampler()
        self.pool = [espeak.IsolatedSynthesizer() for _ in range(workers)]
        self.free = list(self.pool)
        self.free_lock = threading.Condition()

    def close(self) -> None:
        for synthesizer in self.pool:
            synthesizer.close()

    def _synthesize(self, text: str, **options) -> espeak.Synthesis:
        with self.free_lock:
            while not self.free:
                self.free_lock.wait()
            synthesizer = self.free.pop()
        try:
            return synthesizer.synthesize(text, **options)
        finally:
            with self.free_lock:
                self.free.append(synthesizer)
                self.free_lock.notify()

    def utterance(self, plan: _Plan) -> tuple[str, np.ndarray, np.ndarray]:
        """Text, int16 16 kHz audio and (shortened) labels of one planned utterance."""
        speaker = plan.speaker
        rng = np.random.default_rng([self.seed, plan.speaker_index, plan.utterance_index])
        rate = int(np.clip(round(speaker.rate * rng.uniform(0.96, 1.04)), espeak.RATE_MINIMUM, espeak.RATE_MAXIMUM))
        pitch = int(np.clip(speaker.pitch + rng.integers(-3, 4), 0, 100))
        target_seconds = rng.uniform(2.3, 5.0)
        lead_s, tail_s = rng.uniform(*PAD_SECONDS, size=2)
        drop = int(rng.integers(1, 3))  # labels one or two frames shorter than the audio
        words_per_second = rate / 60.0
        target_words = max(3, int(round(target_seconds * words_per_second * 0.85)))
        text_rng = np.random.default_rng([self.seed, plan.speaker_index, plan.utterance_index, 1])
        speech_max = UTTERANCE_SECONDS[1] - lead_s - tail_s
        speech_min = UTTERANCE_SECONDS[0] - lead_s - tail_s
        for attempt in range(8):
            text = make_sentences(text_rng, target_words)
            synthesis = self._synthesize(
                text, voice=speaker.voice, rate=rate, pitch=pitch, pitch_range=speaker.pitch_range,
                seed=int(rng.integers(0, 2**31 - 1)),
            )
            if synthesis.seconds > speech_max:
                target_words = max(3, int(target_words * 0.75))
            elif synthesis.seconds < speech_min:
                target_words = int(target_words * 1.3) + 1
            else:
                break
        native = synthesis.samples.astype(np.float32) / 32768.0
        speech = self.resample(native, synthesis.sample_rate).astype(np.float64)
        rms = float(np.sqrt(np.mean(speech**2))) if len(speech) else 0.0
        if rms > 0:
            speech *= 10 ** (speaker.level_db / 20) / rms
        lead = int(round(lead_s * SAMPLE_RATE))
        tail = int(round(tail_s * SAMPLE_RATE))
        audio = np.zeros(lead + len(speech) + tail)
        audio[lead:lead + len(speech)] = speech
        audio += rng.standard_normal(len(audio)) * 10 ** (speaker.noise_db / 20)
        pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)

        with self.mapper_lock:
            classes = np.array([self.mapper(p.name) for p in synthesis.phonemes], dtype=np.int64)
        starts = np.array([p.sample for p in synthesis.phonemes], dtype=np.float64)
        native_length = len(synthesis.samples)
        num_labels = len(pcm) // FRAME_SAMPLES - drop
        labels = frame_labels(starts, classes, synthesis.sample_rate, native_length, lead, len(pcm), num_labels)
        return text, pcm, labels


def _write_flac(path: Path, pcm: np.ndarray) -> None:
    import soundfile as sf

    sf.write(str(path), pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")


def synthesize_corpus(
    out_dir: str | os.PathLike,
    *,
    speakers: int = DEFAULT_SPEAKERS,
    utterances_per_speaker: int = DEFAULT_UTTERANCES,
    seed: int = DEFAULT_SEED,
    workers: int | None = None,
    test_fraction: float = 0.2,
    progress: ProgressCallback | None = None,
) -> SynthCorpus:
    """Write a labelled synthetic corpus into ``out_dir`` (created; existing files are overwritten).

    Args:
        out_dir: the corpus root (LibriSpeech layout inside, labels in ``out_dir/labels``).
        speakers: number of distinct speakers.
        utterances_per_speaker: utterances per speaker (at least 2, so that every speaker is in
            both splits).
        seed: everything random derives from it; same seed -> byte-identical files.
        workers: parallel synthesis processes (default: CPU count, at most 8); no effect on output.
        test_fraction: share of each speaker's utterances in ``test_split.txt`` (at least one).
        progress: called with ``(utterances written, utterances in all)`` as they are written.

    Raises:
        espeak.EspeakNotAvailable: espeak-ng is not installed.
    """
    if utterances_per_speaker < 2:
        raise ValueError("utterances_per_speaker must be at least 2 (every speaker is in both splits)")
    start = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    labels_dir = root / LABEL_DIR
    labels_dir.mkdir(exist_ok=True)
    speaker_configs = make_speakers(speakers, seed)
    plans = [
        _Plan(i, j, spk, f"{spk.speaker_id}-{spk.chapter_id}-{j:04d}")
        for i, spk in enumerate(speaker_configs)
        for j in range(utterances_per_speaker)
    ]
    workers = workers or min(8, os.cpu_count() or 1)
    generator = _Generator(seed, max(1, min(workers, len(plans))))

    def make(plan: _Plan):  # noqa: ANN202
        text, pcm, labels = generator.utterance(plan)
        folder = root / plan.speaker.speaker_id / plan.speaker.chapter_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{plan.utterance_id}.flac"
        _write_flac(path, pcm)
        return text, path, len(pcm), labels

    try:
        results = []
        with ThreadPoolExecutor(max_workers=len(generator.pool)) as executor:
            for result in executor.map(make, plans):
                results.append(result)
                if progress is not None:
                    progress(len(results), len(plans))
    finally:
        generator.close()

    split_rng = np.random.default_rng([seed, 0x5B117])
    n_test = max(1, int(round(utterances_per_speaker * test_fraction)))
    n_test = min(n_test, utterances_per_speaker - 1)
    test_index = {i: set(split_rng.permutation(utterances_per_speaker)[:n_test].tolist()) for i in range(speakers)}

    utterances: list[UtteranceInfo] = []
    phone_frames = np.zeros(NUM_PHONES, dtype=np.int64)
    label_lines, train, test = [], [], []
    transcripts: dict[Path, list[str]] = {}
    for plan, (text, path, samples, labels) in zip(plans, results):
        split = "test" if plan.utterance_index in test_index[plan.speaker_index] else "train"
        (test if split == "test" else train).append(plan.utterance_id)
        label_lines.append(plan.utterance_id + " " + " ".join(map(str, labels.tolist())))
        phone_frames += np.bincount(labels, minlength=NUM_PHONES)
        transcripts.setdefault(path.parent / f"{plan.speaker.speaker_id}-{plan.speaker.chapter_id}.trans.txt", []).append(
            f"{plan.utterance_id} {transcript(text)}"
        )
        utterances.append(UtteranceInfo(plan.utterance_id, plan.speaker.speaker_id, path, text, samples, len(labels), split))
    for trans_path, lines in transcripts.items():
        trans_path.write_text("\n".join(lines) + "\n")
    (labels_dir / LABEL_FILE).write_text("\n".join(label_lines) + "\n")
    (labels_dir / TRAIN_SPLIT).write_text("\n".join(train) + "\n")
    (labels_dir / TEST_SPLIT).write_text("\n".join(test) + "\n")

    corpus = SynthCorpus(
        root=root,
        labels_dir=labels_dir,
        speakers=speaker_configs,
        utterances=utterances,
        phone_frames=phone_frames.tolist(),
        unknown_phonemes=dict(sorted(generator.mapper.unknown.items())),
        seed=seed,
    )
    manifest = {
        "generator": "online-gim synthetic corpus",
        "version": CORPUS_VERSION,
        "seed": seed,
        "sample_rate": SAMPLE_RATE,
        "frame_samples": FRAME_SAMPLES,
        "phones": list(PHONES),
        "espeak_ng": generator.pool[0].version if generator.pool else espeak.library_version(),
        "speakers": [asdict(s) for s in speaker_configs],
        "utterances": [
            {"id": u.utterance_id, "speaker": u.speaker_id, "samples": u.samples, "labels": u.num_labels,
             "split": u.split, "text": u.text}
            for u in utterances
        ],
        "phone_frames": corpus.phone_frames,
        "unknown_phonemes": corpus.unknown_phonemes,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    corpus.wall_seconds = time.perf_counter() - start
    return corpus


# --------------------------------------------------------------------------------------------
# The default corpus (cached)


def cache_root() -> Path:
    """``$ONLINE_GIM_CACHE`` or ``~/.cache/online-gim``."""
    env = os.environ.get("ONLINE_GIM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "online-gim"


def default_corpus_name(speakers: int = DEFAULT_SPEAKERS, utterances: int = DEFAULT_UTTERANCES, seed: int = DEFAULT_SEED) -> str:
    return f"synth-v{CORPUS_VERSION}-s{speakers}-u{utterances}-seed{seed}"


def default_corpus(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the default corpus (24 speakers x 20 utterances, seed 0), generated on first use.

    Generated into a temporary folder next to its final place and renamed into place, so a
    crashed or concurrent generation never leaves a half-written corpus under the final name
    (when two processes race, the first rename wins and the other's copy is discarded).
    """
    parent = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    final = parent / default_corpus_name()
    if (final / MANIFEST).is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        synthesize_corpus(temporary, speakers=DEFAULT_SPEAKERS, utterances_per_speaker=DEFAULT_UTTERANCES, seed=DEFAULT_SEED)
        try:
            os.rename(temporary, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return final
