"""Per-module memory of past encodings in a FAISS index, the source of negatives."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from online_gim.config import MemoryConfig
from online_gim.finite import require_finite


@dataclass(frozen=True)
class MemoryHit:
    """One stored moment returned by :meth:`NegativeMemory.nearest`.

    Attributes:
        stream_seconds: stream time of the encoded frame, in seconds.
        source_id: the stream it came from.
        step: the model step (updates) at which it was written.
        score: inner product with the query.
        speaker_id: speaker of the frame when known.
        phone: phone class of the frame when known, else -1.
    """

    stream_seconds: float
    source_id: str
    step: int
    score: float
    speaker_id: str | None
    phone: int


DRAWS_PER_NEGATIVE = 2
"""Rows drawn per negative wanted by :meth:`NegativeMemory.sample_rows` before its exact fallback."""


def _repeats(draws: np.ndarray) -> np.ndarray:
    """``(m, d)`` bool: whether each draw repeats an earlier draw of its row."""
    order = np.argsort(draws, axis=1, kind="stable")  # equal values keep their draw order
    ordered = np.take_along_axis(draws, order, axis=1)
    repeated = np.zeros_like(draws, dtype=bool)
    np.put_along_axis(repeated, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    return repeated


class NegativeMemory:
    """A bounded FIFO of past encodings held in a ``faiss.IndexFlatIP``, each tagged with its stream
    position, stream id, the model step that wrote it and its labels when known. Only finite
    vectors are stored.

    Rows of the index are kept in write order, so FIFO eviction and eviction of stale entries
    (written more than ``max_age_updates`` updates ago) both remove a prefix. Negatives for an
    anchor are never entries of the same stream within ``exclusion_samples`` of the anchor (its
    true neighbours, false negatives).

    Thread safety: the learner's thread writes and samples; :meth:`nearest` may be called from
    any thread (it holds the lock for one FAISS search).

    Parameters:
        dim: length of the stored vectors.
        config: capacity, policy and ages.
        exclusion_samples: half-width of the exclusion zone around an anchor, in samples.
        seed: seeds the uniform sampler.
    """

    def __init__(self, dim: int, config: MemoryConfig, *, exclusion_samples: int, seed: int) -> None:
        self.dim = dim
        self.config = config
        self.exclusion_samples = exclusion_samples
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.index = faiss.IndexFlatIP(self.dim)
        self.positions = np.zeros(0, dtype=np.int64)
        self.sources = np.zeros(0, dtype=np.int32)
        self.steps = np.zeros(0, dtype=np.int64)
        self.phones = np.zeros(0, dtype=np.int16)
        self.speakers = np.zeros(0, dtype=object)
        self.source_names: list[str] = []

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def finite(self) -> bool:
        """Whether every stored vector is finite (a memory restored from a checkpoint written before
        :meth:`add` refused non-finite vectors may hold NaN)."""
        with self._lock:
            return bool(np.isfinite(self.index.reconstruct_n(0, len(self))).all()) if len(self) else True

    def clear(self) -> None:
        """Forgets every entry; the stream fills the memory again."""
        with self._lock:
            self._reset()

    def _source_code(self, source_id: str) -> int:
        if source_id not in self.source_names:
            self.source_names.append(source_id)
        return self.source_names.index(source_id)

    def add(
        self,
        vectors: torch.Tensor,
        positions: np.ndarray,
        *,
        source_id: str,
        step: int,
        speakers: list[str | None] | None = None,
        phones: np.ndarray | None = None,
    ) -> None:
        """Writes encodings, then evicts the oldest entries beyond capacity and the stale ones.

        Args:
            vectors: ``(n, dim)`` encodings (detached).
            positions: ``(n,)`` stream positions of the encoded frames, in samples.
            source_id: the stream.
            step: the model step of the writer.
            speakers: ``n`` speaker ids (``None`` where unknown), optional.
            phones: ``(n,)`` phone classes (-1 where unknown), optional.
        Raises:
            NonFiniteState: a vector holds NaN or Inf (nothing is written).
        """
        require_finite(vectors, "memory vectors")
        count = vectors.shape[0]
        data = np.ascontiguousarray(vectors.detach().to(torch.float32).numpy())
        code = self._source_code(source_id)
        with self._lock:
            self.index.add(data)
            self.positions = np.concatenate([self.positions, positions.astype(np.int64)])
            self.sources = np.concatenate([self.sources, np.full(count, code, dtype=np.int32)])
            self.steps = np.concatenate([self.steps, np.full(count, step, dtype=np.int64)])
            self.phones = np.concatenate(
                [self.phones, np.full(count, -1, np.int16) if phones is None else phones.astype(np.int16)]
            )
            new_speakers = np.empty(count, dtype=object)
            new_speakers[:] = speakers if speakers is not None else None
            self.speakers = np.concatenate([self.speakers, new_speakers])
            stale = int(np.searchsorted(self.steps, step - self.config.max_age_updates, side="left"))
            self._drop_oldest(max(stale, len(self) - self.config.capacity))

    def _drop_oldest(self, count: int) -> None:
        if count <= 0:
            return
        self.index.remove_ids(faiss.IDSelectorRange(0, count))
        self.positions = self.positions[count:]
        self.sources = self.sources[count:]
        self.steps = self.steps[count:]
        self.phones = self.phones[count:]
        self.speakers = self.speakers[count:]

    def _allowed(self, anchor_positions: np.ndarray, source_id: str, rows: np.ndarray | None = None) -> np.ndarray:
        """``(m, d)`` mask: whether entry ``rows[i, j]`` may serve as a negative of anchor ``i``
        (``rows``: ``(m, d)`` or ``(1, d)`` int; default every entry, ``d = n``)."""
        rows = np.arange(len(self))[None, :] if rows is None else rows
        code = self.source_names.index(source_id) if source_id in self.source_names else -1
        near = np.abs(self.positions[rows] - anchor_positions[:, None]) <= self.exclusion_samples
        return ~(near & (self.sources[rows] == code))

    def sample(self, anchor_positions: np.ndarray, count: int, *, source_id: str) -> torch.Tensor | None:
        """Draws ``count`` distinct negatives per anchor, uniformly among the allowed entries.

        Args:
            anchor_positions: ``(m,)`` stream positions (samples) of the anchors.
            count: negatives per anchor.
            source_id: the anchors' stream.
        Returns:
            ``(m, count, dim)`` negatives, or ``None`` while some anchor has fewer than ``count``
            allowed entries (the memory is still filling up).
        """
        rows = self.sample_rows(anchor_positions, count, source_id=source_id)
        if rows is None:
            return None
        return self.vectors(rows)

    def sample_rows(self, anchor_positions: np.ndarray, count: int, *, source_id: str) -> np.ndarray | None:
        """Row indices behind :meth:`sample`: ``(m, count)`` int64, or ``None``.

        Each anchor draws ``DRAWS_PER_NEGATIVE * count`` rows uniformly with replacement and keeps
        the first ``count`` distinct allowed ones (sampling without replacement by rejection: a
        uniform subset of the allowed entries); an anchor left short, as when most entries are
        excluded or the memory is nearly empty, is drawn from its whole allowed set instead."""
        entries = len(self)
        if entries == 0:
            return None
        draws = self._rng.integers(0, entries, size=(len(anchor_positions), DRAWS_PER_NEGATIVE * count))
        keep = self._allowed(anchor_positions, source_id, draws) & ~_repeats(draws)
        short = keep.sum(axis=1) < count
        first = np.argsort(~keep, axis=1, kind="stable")[:, :count]  # the first `count` kept, in draw order
        rows = np.take_along_axis(draws, first, axis=1)
        if short.any():
            allowed = self._allowed(anchor_positions[short], source_id)
            if int(allowed.sum(axis=1).min()) < count:
                return None
            keys = self._rng.random(allowed.shape)
            keys[~allowed] = -1.0
            rows[short] = np.argpartition(-keys, count - 1, axis=1)[:, :count]
        return rows.astype(np.int64)

    def hardest(
        self, queries: torch.Tensor, anchor_positions: np.ndarray, *, source_id: str
    ) -> torch.Tensor | None:
        """The allowed entry with the highest inner product for each query (hard negatives).

        Args:
            queries: ``(m, dim)`` predictions ``W_k c_t``; the entry that scores highest is the
                hardest negative.
            anchor_positions: ``(m,)`` stream positions (samples) of each query's anchor.
            source_id: the anchors' stream.
        Returns:
            ``(m, dim)`` negatives, or ``None`` while the memory cannot serve every query. Among
            the ``hard_pool`` best entries the best allowed one is taken; a query whose pool is
            all excluded gets a uniform draw instead.
        """
        rows = self.sample_rows(anchor_positions, 1, source_id=source_id)
        if rows is None:
            return None
        pool = min(self.config.hard_pool, len(self))
        data = np.ascontiguousarray(queries.detach().to(torch.float32).numpy())
        _, candidates = self.index.search(data, pool)
        safe = candidates >= 0
        clipped = np.where(safe, candidates, 0)
        allowed = safe & self._allowed(anchor_positions, source_id, clipped)
        first = allowed.argmax(axis=1)
        has_one = allowed[np.arange(len(first)), first]
        chosen = np.where(has_one, clipped[np.arange(len(first)), first], rows[:, 0])
        return self.vectors(chosen)

    def vectors(self, rows: np.ndarray) -> torch.Tensor:
        """The stored vectors of int64 ``rows`` (any shape): ``rows.shape + (dim,)`` float32."""
        flat = self.index.reconstruct_batch(rows.reshape(-1).astype(np.int64))
        return torch.from_numpy(flat).reshape(*rows.shape, self.dim)

    def nearest(self, query: torch.Tensor, k: int) -> list[MemoryHit]:
        """The ``k`` stored moments with the highest inner product with ``query`` ``(dim,)``."""
        if query.shape != (self.dim,):
            raise ValueError(f"query must have shape ({self.dim},), got {tuple(query.shape)}")
        data = np.ascontiguousarray(query.detach().to(torch.float32).numpy()[None, :])
        with self._lock:
            if len(self) == 0:
                return []
            scores, rows = self.index.search(data, min(k, len(self)))
            return [
                MemoryHit(
                    stream_seconds=float(self.positions[row]) / 16_000,
                    source_id=self.source_names[self.sources[row]],
                    step=int(self.steps[row]),
                    score=float(score),
                    speaker_id=self.speakers[row],
                    phone=int(self.phones[row]),
                )
                for score, row in zip(scores[0], rows[0])
                if row >= 0
            ]

    def state_dict(self) -> dict[str, object]:
        """Everything needed to restore the memory; the encodings as a ``(n, dim)`` float32 array
        (what the checkpoint codec stores packed), in the index' order."""
        with self._lock:
            return {
                "vectors": self.index.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim), np.float32),
                "positions": self.positions.copy(),
                "sources": self.sources.copy(),
                "steps": self.steps.copy(),
                "phones": self.phones.copy(),
                "speakers": [s for s in self.speakers],
                "source_names": list(self.source_names),
                "rng": self._rng.bit_generator.state,
            }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restores :meth:`state_dict`'s output (or that of earlier versions: FAISS' serialised ``index``)."""
        if "index" in state:
            index = faiss.deserialize_index(np.asarray(state["index"], dtype=np.uint8))
        else:
            vectors = np.ascontiguousarray(state["vectors"], dtype=np.float32)
            index = faiss.IndexFlatIP(vectors.shape[1] if vectors.ndim == 2 else self.dim)
            index.add(vectors.reshape(-1, index.d))
        if index.d != self.dim:
            raise ValueError(f"memory dimension {index.d} does not match the module's {self.dim}")
        speakers = np.empty(len(state["speakers"]), dtype=object)
        speakers[:] = state["speakers"]
        with self._lock:
            self.index = index
            self.positions = np.asarray(state["positions"], dtype=np.int64)
            self.sources = np.asarray(state["sources"], dtype=np.int32)
            self.steps = np.asarray(state["steps"], dtype=np.int64)
            self.phones = np.asarray(state["phones"], dtype=np.int16)
            self.speakers = speakers
            self.source_names = list(state["source_names"])
            self._rng.bit_generator.state = state["rng"]
