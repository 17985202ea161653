"""Reading a GIM/CPC frame-level phone label file (``converted_aligned_phones.txt``), line by line.

Format: one line per utterance, ``<utt-id> <class> <class> ...``, one integer phone class in
``0..40`` (41 classes, 0 = silence) per 10 ms frame, aligned to the END of the audio and one or two
frames shorter than it (:func:`online_gim.streams.chunk.expand_frame_labels` does the alignment).

A malformed line (an id without labels, a label that is not an integer, a class outside
``0..classes - 1``, however large, an id already labelled on an earlier line) is reported once, as
``FILE:LINE: what is wrong; line skipped``, and skipped: the utterance plays without labels (or
with those of its first line). A file of which most lines are malformed is not a label file: one
:class:`LabelFileError` says so. Whether the labels fit the audio's length is known only once the
audio is decoded: :func:`length_problem` says when they are far from it.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "converted_aligned_phones.txt"
    >>> _ = path.write_text("a-1-1 0 0 3\\na-1-2 0 99\\na-1-3 4 4\\n")
    >>> labels = read_phone_labels(path)
    >>> sorted(labels), labels["a-1-3"].classes.tolist(), labels["a-1-3"].line
    (['a-1-1', 'a-1-3'], [4, 4], 3)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from online_gim.streams.chunk import PHONE_DTYPE
from online_gim.streams.window import FRAME_SAMPLES

log = logging.getLogger(__name__)

PHONE_CLASSES = 41
"""Classes of the GIM/CPC labels (0..40)."""

LENGTH_TOLERANCE_FRAMES = 10
"""Label frames (0.1 s) by which labels may differ from their audio's frames before they are far
from it (GIM's are one or two frames shorter)."""


class LabelFileError(ValueError):
    """A label file of which most lines are malformed (not a GIM/CPC phone label file)."""


@dataclass(frozen=True)
class PhoneLabels:
    """One utterance's labels.

    Attributes:
        classes: ``(frames,)`` int16 phone class per 10 ms frame.
        line: the line of the label file they are on (1-based).
    """

    classes: np.ndarray
    line: int


def _parse_line(tokens: list[str], classes: int) -> tuple[np.ndarray | None, str | None]:
    """The labels of one line (its tokens after the id), or what is wrong with them."""
    if not tokens:
        return None, "no labels after the utterance id"
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):  # not an integer, or one beyond int64
        return None, _first_bad_token(tokens, classes)
    outside = values[(values < 0) | (values >= classes)]
    if outside.size:
        return None, f"phone class {int(outside[0])} is outside 0..{classes - 1}"
    return values.astype(PHONE_DTYPE), None


def _first_bad_token(tokens: list[str], classes: int) -> str:
    for token in tokens:
        try:
            value = int(token)
        except ValueError:
            return f"label {token!r} is not an integer phone class"
        if not 0 <= value < classes:
            return f"phone class {value} is outside 0..{classes - 1}"
    return "the labels cannot be read"


def read_phone_labels(path: str | Path, *, classes: int = PHONE_CLASSES) -> dict[str, PhoneLabels]:
    """Reads a label file, reporting (a warning each) and skipping its malformed lines.

    Args:
        path: the label file.
        classes: phone classes, ``0..classes - 1``.
    Returns:
        The labels of every well-formed line, by utterance id (blank lines are ignored).
    Raises:
        OSError: the file cannot be read.
        LabelFileError: more than half of its non-blank lines are malformed (or it is not text).
    """
    path = Path(path)
    labels: dict[str, PhoneLabels] = {}
    problems: list[tuple[int, str]] = []
    lines = 0
    try:
        with path.open(encoding="utf-8") as file:
            for number, text in enumerate(file, start=1):
                if not text.strip():
                    continue
                uid, *tokens = text.split()
                lines += 1
                values, problem = _parse_line(tokens, classes)
                if problem is None and uid in labels:
                    problem = f"utterance {uid} is already labelled on line {labels[uid].line}"
                if problem is not None:
                    problems.append((number, problem))
                    continue
                labels[uid] = PhoneLabels(values, number)
    except UnicodeDecodeError:
        raise LabelFileError(f"{path} is not a GIM/CPC phone label file: it is not UTF-8 text") from None
    if problems and 2 * len(problems) > lines:
        number, problem = problems[0]
        raise LabelFileError(
            f"{path} is not a GIM/CPC phone label file (<utt-id> <class 0..{classes - 1}> ...): "
            f"{len(problems)} of its {lines} lines are malformed, the first one line {number}: {problem}"
        )
    for number, problem in problems:
        log.warning("%s:%d: %s; line skipped", path, number, problem)
    return labels


def length_problem(label_frames: int, num_samples: int) -> str | None:
    """What is wrong when ``label_frames`` labels are far (more than
    :data:`LENGTH_TOLERANCE_FRAMES`) from the 10 ms frames of ``num_samples`` samples of audio."""
    audio_frames = num_samples // FRAME_SAMPLES
    if abs(label_frames - audio_frames) <= LENGTH_TOLERANCE_FRAMES:
        return None
    return f"{label_frames} label frames for {audio_frames} frames ({num_samples / 16_000:.2f} s) of audio"
