"""The synthetic speech corpus (issue 3, item 3): layout, labels, determinism, and that labels mean something."""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from online_gim.streams.corpora import espeak
from online_gim.streams.corpora.phones import ESPEAK_TO_PHONE, NUM_PHONES, PHONES, SILENCE, PhoneMapper

requires_espeak = pytest.mark.skipif(not espeak.available(), reason=f"espeak-ng missing ({espeak.INSTALL_HINT})")


def read_labels(labels_dir: Path) -> dict[str, np.ndarray]:
    labels = {}
    for line in (labels_dir / "converted_aligned_phones.txt").read_text().splitlines():
        utterance, *classes = line.split()
        labels[utterance] = np.array(classes, dtype=np.int64)
    return labels


def read_split(labels_dir: Path, name: str) -> list[str]:
    return (labels_dir / name).read_text().split()


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------
# phone set and mapping


def test_phone_set_has_40_classes_with_silence_first():
    assert NUM_PHONES == 40 and PHONES[0] == "sil" and SILENCE == 0
    assert len(set(PHONES)) == NUM_PHONES
    assert set(ESPEAK_TO_PHONE.values()) == set(range(NUM_PHONES))


def test_unknown_mnemonics_fall_back_and_are_counted():
    mapper = PhoneMapper()
    assert mapper("t") == PHONES.index("T") and not mapper.unknown
    assert mapper("_") == SILENCE
    assert mapper("E3") == PHONES.index("EH")  # modifier digit stripped
    assert mapper("@7") == PHONES.index("AH")
    assert mapper("k#9") == PHONES.index("K")
    assert mapper("%%weird") == PHONES.index("AH")
    assert mapper.unknown == {"E3": 1, "@7": 1, "k#9": 1, "%%weird": 1}


def _english_table_mnemonics(phontab: Path) -> set[str]:
    """Vowels and consonants defined by espeak-ng's English phoneme tables (en, en-us, en-sc, ...)."""
    data = phontab.read_bytes()
    count, position, names = data[0], 4, set()
    for _ in range(count):
        n_phonemes = data[position]
        position += 4
        table = data[position:position + 32].split(b"\0")[0].decode()
        position += 32
        for _ in range(n_phonemes):
            mnemonic, _flags, program, _code, kind = struct.unpack_from("<IIHBB", data, position)
            position += 16
            name = struct.pack("<I", mnemonic).rstrip(b"\0").decode("latin-1")
            if table.startswith("en") and program and 2 <= kind <= 8:  # vowel .. nasal, with a sound
                names.add(name)
    return names


@requires_espeak
def test_every_english_phoneme_of_espeak_maps_without_fallback():
    phontab = (espeak.data_path() or Path("/nonexistent")) / "phontab"
    if not phontab.is_file():
        pytest.skip("espeak-ng-data/phontab not found")
    names = _english_table_mnemonics(phontab)
    assert len(names) > 40
    assert sorted(n for n in names if n not in ESPEAK_TO_PHONE) == []


@requires_espeak
def test_whole_vocabulary_in_every_accent_maps_without_fallback():
    from online_gim.streams.corpora.synth import ACCENTS, WORDS

    mapper = PhoneMapper()
    text = ". ".join(" ".join(WORDS[i:i + 12]) for i in range(0, len(WORDS), 12)) + "."
    for accent in ACCENTS:
        for event in espeak.synthesize(text, voice=accent).phonemes:
            mapper(event.name)
    assert dict(mapper.unknown) == {}


# --------------------------------------------------------------------------------------------
# the binding


@requires_espeak
def test_isolated_synthesis_is_a_pure_function_and_events_are_ordered():
    with espeak.IsolatedSynthesizer() as synthesizer:
        first = synthesizer.synthesize("Seven quiet horses, and a boat.", voice="en-us+f2", rate=160, seed=3)
        synthesizer.synthesize("Something else in between.", voice="en-gb-scotland+m3", seed=1)
        again = synthesizer.synthesize("Seven quiet horses, and a boat.", voice="en-us+f2", rate=160, seed=3)
        with pytest.raises(espeak.EspeakError, match="no voice"):
            synthesizer.synthesize("x", voice="no-such-voice")
    assert first.sample_rate == 22050
    assert np.array_equal(first.samples, again.samples) and first.phonemes == again.phonemes
    starts = [p.sample for p in first.phonemes]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= len(first.samples)
    assert [p.name for p in first.phonemes][:3] == ["s", "E", "v"]
    assert 1.0 < first.seconds < 4.0


def test_parameters_are_range_checked():
    with pytest.raises(ValueError, match="rate"):
        espeak.synthesize("hello", rate=20)
    with pytest.raises(ValueError, match="pitch"):
        espeak.synthesize("hello", pitch=150)


# --------------------------------------------------------------------------------------------
# the corpus


def test_layout_transcripts_and_splits(synth_corpus, synth_corpus_dir):
    root = synth_corpus_dir
    speakers = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "labels")
    assert len(speakers) == 6 and all(s.isdigit() for s in speakers)
    labels_dir = root / "labels"
    labels = read_labels(labels_dir)
    all_ids = set()
    for speaker in speakers:
        chapters = [p for p in (root / speaker).iterdir()]
        assert len(chapters) == 1 and chapters[0].name.isdigit()
        chapter = chapters[0]
        flacs = sorted(chapter.glob("*.flac"))
        assert len(flacs) == 6
        trans = chapter / f"{speaker}-{chapter.name}.trans.txt"
        lines = trans.read_text().splitlines()
        ids = [line.split(" ", 1)[0] for line in lines]
        assert ids == [f.stem for f in flacs]
        for line in lines:
            words = line.split(" ", 1)[1]
            assert words == words.upper() and words.replace(" ", "").replace("'", "").isalpha()
        for flac in flacs:
            assert flac.stem.startswith(f"{speaker}-{chapter.name}-")
            info = sf.info(str(flac))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            assert 2.0 <= info.duration <= 6.5
        all_ids.update(ids)
    assert set(labels) == all_ids
    train, test = read_split(labels_dir, "train_split.txt"), read_split(labels_dir, "test_split.txt")
    assert set(train) | set(test) == all_ids and not set(train) & set(test)
    assert {u.split("-")[0] for u in train} == set(speakers) == {u.split("-")[0] for u in test}
    assert len(synth_corpus.utterances) == 36 and synth_corpus.unknown_phonemes == {}


def test_label_lengths_match_audio_within_two_frames(synth_corpus_dir):
    labels = read_labels(synth_corpus_dir / "labels")
    for flac in synth_corpus_dir.glob("*/*/*.flac"):
        frames = sf.info(str(flac)).frames // 160
        assert frames - 2 <= len(labels[flac.stem]) <= frames
        assert frames - len(labels[flac.stem]) in (1, 2)  # as in CPC's labels: one or two frames short


def test_labels_cover_the_phone_set_with_silence_at_the_edges(synth_corpus_dir):
    labels = read_labels(synth_corpus_dir / "labels")
    used = set(np.concatenate(list(labels.values())).tolist())
    assert len(used) >= 30 and used <= set(range(NUM_PHONES))
    for sequence in labels.values():
        assert sequence[0] == SILENCE and sequence[-1] == SILENCE
        assert (sequence[:5] == SILENCE).all() and (sequence[-5:] == SILENCE).all()
        assert (sequence != SILENCE).mean() > 0.5


def test_silence_labels_are_quiet_and_phone_labels_loud(synth_corpus_dir):
    """The labels sit on the audio: frames labelled silence are far quieter than speech frames."""
    labels = read_labels(synth_corpus_dir / "labels")
    silent, speech = [], []
    for flac in synth_corpus_dir.glob("*/*/*.flac"):
        audio, _ = sf.read(str(flac), dtype="float64")
        sequence = labels[flac.stem]
        covered = audio[len(audio) - 160 * len(sequence):]  # labels align to the end
        energy = 10 * np.log10(np.mean(covered.reshape(len(sequence), 160) ** 2, axis=1) + 1e-12)
        silent.append(np.median(energy[sequence == SILENCE][:3]))  # leading padding
        speech.append(np.median(energy[sequence != SILENCE]))
    assert np.median(speech) - np.median(silent) > 25


def _mfcc_frames(path: Path, n_labels: int) -> torch.Tensor:
    from online_gim.evaluation.mfcc import Mfcc, deltas

    audio, _ = sf.read(str(path), dtype="float32")
    mfcc = Mfcc(sample_rate=16000, coefficients=13, n_fft=400, hop=160, mels=40)(torch.from_numpy(audio))
    delta = deltas(mfcc)
    features = torch.cat([mfcc, delta, deltas(delta)]).T
    # label i covers samples N - (n_labels - i) * 160 ... (aligned to the end); MFCC frame f
    # (center=True) is centred on sample 160 f: take the frame nearest to each label's centre
    centres = len(audio) - (n_labels - torch.arange(n_labels)) * 160 + 80
    return features[torch.div(centres + 80, 160, rounding_mode="floor")]


def _linear_probe(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, classes: int) -> float:
    torch.manual_seed(0)
    mean, std = x.mean(0), x.std(0) + 1e-5
    x, x_test = (x - mean) / std, (x_test - mean) / std
    linear = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), y) + 1e-4 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (linear(x_test).argmax(1) == y_test).float().mean().item()



def test_linear_mfcc_probe_beats_chance_and_labels_sit_where_the_phones_are(synth_corpus_dir, one_torch_thread):
    """MFCC (13 + deltas + delta-deltas, 10 ms hop) linear probes on held-out utterances.

    Phones per frame and speakers per frame beat chance clearly; and the phone probe is best with
    the labels where they are: moving them 3 frames (30 ms) either way costs accuracy.
    """
    labels_dir = synth_corpus_dir / "labels"
    labels = read_labels(labels_dir)
    test_ids = set(read_split(labels_dir, "test_split.txt"))
    speakers = sorted(p.name for p in synth_corpus_dir.iterdir() if p.is_dir() and p.name != "labels")
    speaker_index = {s: i for i, s in enumerate(speakers)}
    utterances = []
    for flac in sorted(synth_corpus_dir.glob("*/*/*.flac")):
        phones = torch.from_numpy(labels[flac.stem])
        utterances.append((flac.stem in test_ids, _mfcc_frames(flac, len(phones)), phones, speaker_index[flac.stem.split("-")[0]]))

    def probe(target: str, shift: int = 0) -> tuple[float, float]:
        data = {True: ([], []), False: ([], [])}
        for is_test, features, phones, speaker in utterances:
            n = len(phones) - abs(shift)
            x = features[max(0, shift):][:n]
            y = phones[max(0, -shift):][:n] if target == "phone" else torch.full((n,), speaker)
            data[is_test][0].append(x)
            data[is_test][1].append(y)
        (x, y), (xt, yt) = ([torch.cat(t) for t in data[k]] for k in (False, True))
        chance = (yt == torch.bincount(y).argmax()).float().mean().item() if target == "phone" else 1 / len(speakers)
        return _linear_probe(x, y, xt, yt, NUM_PHONES if target == "phone" else len(speakers)), chance

    phone_accuracy, phone_chance = probe("phone")
    speaker_accuracy, speaker_chance = probe("speaker")
    early, _ = probe("phone", -3)
    late, _ = probe("phone", 3)
    print(f"MFCC probe: phones {phone_accuracy:.3f} (majority {phone_chance:.3f}; labels 30 ms early "
          f"{early:.3f}, late {late:.3f}), speakers per frame {speaker_accuracy:.3f} (chance {speaker_chance:.3f})")
    assert phone_accuracy > phone_chance + 0.25
    assert speaker_accuracy > 2.5 * speaker_chance
    assert phone_accuracy > max(early, late) + 0.03


# --------------------------------------------------------------------------------------------
# determinism


@requires_espeak
def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path):
    from online_gim.streams.corpora.synth import synthesize_corpus

    synthesize_corpus(tmp_path / "a", speakers=2, utterances_per_speaker=2, seed=5, workers=1)
    synthesize_corpus(tmp_path / "b", speakers=2, utterances_per_speaker=2, seed=5, workers=2)
    synthesize_corpus(tmp_path / "c", speakers=2, utterances_per_speaker=2, seed=6, workers=2)
    a, b, c = (tree_digest(tmp_path / name) for name in "abc")
    assert len(a) == 2 * 2 + 2 + 3 + 1  # flacs, trans, label files, manifest
    assert a == b
    flacs = [name for name in a if name.endswith(".flac")]
    assert all(a[name] != c.get(name) for name in flacs)


@requires_espeak
def test_speakers_are_distinct():
    from online_gim.streams.corpora.synth import make_speakers

    speakers = make_speakers(24, seed=0)
    assert len({s.speaker_id for s in speakers}) == 24
    assert len({(s.accent, s.variant) for s in speakers}) == 24
    for attribute in ("pitch", "pitch_range", "rate"):
        assert len({getattr(s, attribute) for s in speakers}) >= 20
    assert make_speakers(24, seed=0) == speakers
    assert len(make_speakers(200, seed=1)) == 200


@requires_espeak
def test_default_corpus_is_generated_once_atomically(tmp_path, monkeypatch):
    from online_gim.streams.corpora import synth

    calls = []

    def small(out_dir, **kwargs):
        calls.append(Path(out_dir))
        assert Path(out_dir).name.startswith(".")  # built under a temporary name
        return real(out_dir, speakers=2, utterances_per_speaker=2, seed=0)

    real = synth.synthesize_corpus
    monkeypatch.setattr(synth, "synthesize_corpus", small)
    monkeypatch.setenv("ONLINE_GIM_CACHE", str(tmp_path / "cache"))
    first = synth.default_corpus()
    second = synth.default_corpus()
    assert first == second == tmp_path / "cache" / synth.default_corpus_name()
    assert len(calls) == 1 and (first / "labels" / "converted_aligned_phones.txt").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temporary left
    assert synth.default_corpus(tmp_path / "elsewhere").parent == tmp_path / "elsewhere"


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_writes_a_corpus_and_refuses_a_non_empty_folder(tmp_path, capsys):
    if not espeak.available():
        pytest.skip(f"espeak-ng missing ({espeak.INSTALL_HINT})")
    from online_gim.services.cli import main

    out = tmp_path / "corpus"
    assert main(["corpus", "synth", "--out", str(out), "--speakers", "2", "--utterances", "2", "--seed", "1"]) == 0
    printed = capsys.readouterr()
    assert "4 utterances" in printed.out and "2 speakers" in printed.out and "phone classes" in printed.out
    assert "online-gim corpus synth: synthesising: 4/4 utterances (100%), done in " in printed.err  # the progress
    assert len(list(out.glob("*/*/*.flac"))) == 4
    assert main(["corpus", "synth", "--out", str(out), "--speakers", "2", "--utterances", "2"]) == 2
    error = capsys.readouterr().err
    assert "not empty" in error and "--overwrite" in error and "Traceback" not in error
    assert main(["corpus", "synth", "--out", str(out), "--speakers", "1", "--utterances", "2", "--overwrite"]) == 0
    assert len(list(out.glob("*/*/*.flac"))) == 2


def test_cli_says_how_to_install_espeak_when_missing(tmp_path, capsys, monkeypatch):
    """As if libespeak-ng.so.1 were absent: one sentence naming the packages, exit code 2."""
    from online_gim.services.cli import main

    def missing():
        raise espeak.EspeakNotAvailable("the espeak-ng library (libespeak-ng.so.1) is not installed")

    monkeypatch.setattr(espeak, "_LIBRARY", None)
    monkeypatch.setattr(espeak, "_load_library", missing)
    assert not espeak.available()
    assert main(["corpus", "synth", "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert "apt-get install espeak-ng libespeak-ng1" in error and len(error.splitlines()) == 1
    assert "Traceback" not in error


# --------------------------------------------------------------------------------------------
# read back through the LibriSpeech reader (another developer's module)


@pytest.mark.skipif(
    importlib.util.find_spec("online_gim.streams.corpora.librispeech") is None, reason="online_gim.streams.corpora.librispeech not written yet"
)
def test_librispeech_reader_reads_the_corpus_with_labels(synth_corpus, synth_corpus_dir):
    from online_gim.streams.corpora.librispeech import LibriSpeechCorpus

    labels_dir = synth_corpus_dir / "labels"
    corpus = LibriSpeechCorpus(synth_corpus_dir, labels=labels_dir)
    assert len(corpus) == 36 and corpus.labels_without_audio == 0
    assert corpus.speakers == tuple(sorted(s.speaker_id for s in synth_corpus.speakers))
    assert len(corpus.labelled) == 36
    written = read_labels(labels_dir)
    for utterance in corpus:
        assert np.array_equal(utterance.phones, written[utterance.id])
        audio = utterance.load()
        assert audio.dtype == np.float32 and len(audio) // 160 - len(utterance.phones) in (1, 2)
        per_sample = utterance.sample_phones(len(audio))
        assert per_sample[-1] == utterance.phones[-1] == 0
        known = per_sample[per_sample >= 0]
        assert len(known) == 160 * len(utterance.phones)
        assert np.array_equal(known[80::160], utterance.phones)
    train, test = corpus.split("train"), corpus.split("test")
    assert len(train) + len(test) == 36 and set(train.speakers) == set(test.speakers) == set(corpus.speakers)
