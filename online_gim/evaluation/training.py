"""Online training of a learner on a split, streamed at maximum speed for a budget of audio.

The split's utterances are replayed as one continuous stream (:class:`LibriSpeechReplay`, shuffled
by the seed, a new order on every pass, looping until the budget is spent) and cut into the
learner's windows by :func:`streams.windowing.iter_windows` (hop = window, nothing dropped), exactly
the windows a live ``online-gim listen`` run at full speed would see. The stream carries audio and
speakers only: learning is self-supervised, so no phone label is ever shown to the learner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from online_gim.learner import OnlineLearner
from streams.corpora.librispeech import LibriSpeechCorpus, Utterance
from streams.sources.librispeech import LibriSpeechReplay
from streams.window import SAMPLE_RATE
from streams.windowing import iter_windows

Checkpoint = Callable[[float], None]
"""Called with the seconds of audio streamed so far when a checkpoint is reached."""


def train_online(
    learner: OnlineLearner,
    utterances: Sequence[Utterance],
    *,
    seconds: float,
    seed: int,
    update: bool = True,
    checkpoints: Sequence[float] = (),
    on_checkpoint: Checkpoint | None = None,
) -> float:
    """Streams ``seconds`` of the utterances' audio through ``learner.step``.

    Args:
        learner: the learner to train (changed in place).
        utterances: the train split.
        seconds: budget: windows are stepped until at least this much audio went through.
        seed: seeds the replay order.
        update: ``False`` steps with no module scheduled (only normalisation statistics adapt).
        checkpoints: seconds of audio (ascending) after which ``on_checkpoint`` is called.
        on_checkpoint: called with the seconds streamed, once per checkpoint reached.
    Returns:
        Seconds of audio streamed (whole windows: at least ``seconds``).
    """
    window = learner.config.window
    windows = max(1, -(-round(seconds * SAMPLE_RATE) // window))
    corpus = LibriSpeechCorpus([u.path for u in utterances])
    replay = LibriSpeechReplay(corpus, order="shuffle", seed=seed, speed=None, loop=True, source_id="train")
    pending = sorted(checkpoints)
    streamed = 0
    modules = None if update else ()
    for count, item in enumerate(iter_windows(replay, window=window, hop=window, source_id="train"), start=1):
        learner.step(item, modules=modules)
        streamed += window
        while pending and streamed >= pending[0] * SAMPLE_RATE:
            pending.pop(0)
            if on_checkpoint is not None:
                on_checkpoint(streamed / SAMPLE_RATE)
        if count == windows:
            break
    replay.close()
    return streamed / SAMPLE_RATE
