"""A label-free check of a video encoder: frame retrieval by nearest neighbour (pure functions).

For every query frame, the nearest gallery frame by cosine similarity of their encodings is a
*hit* when it shows the same scene (when scenes are known) or lies within ``hit_within`` seconds of
the query in the same stream. Frames too close to the query in time (``exclude_within``) can be
left out of its gallery, so that the trivial answer (the neighbouring frame, almost the same
pixels) does not count. The hit rate is compared with the chance rate (a random allowed gallery
frame) and, in use, with the hit rate of an untrained encoder.

Examples:
    >>> import torch
    >>> queries = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    >>> gallery = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.2]])
    >>> nearest_neighbours(queries, gallery).tolist()
    [0, 1]
    >>> result = same_scene_retrieval(queries, np.array([0, 1]), gallery, np.array([0, 1, 1]))
    >>> result.hit_rate, round(result.chance, 3)
    (1.0, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RetrievalResult:
    """How often the nearest neighbour was a hit.

    Attributes:
        hit_rate: share of the queries whose nearest allowed gallery frame is a hit.
        chance: expected hit rate of a gallery frame drawn uniformly among the allowed ones.
        queries: number of queries scored (those with at least one allowed gallery frame).
    """

    hit_rate: float
    chance: float
    queries: int


def nearest_neighbours(queries: torch.Tensor, gallery: torch.Tensor, *, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the most cosine-similar gallery vector for every query.

    Args:
        queries: ``(Q, C)``.
        gallery: ``(G, C)``.
        allowed: ``(Q, G)`` bool, which gallery entries each query may pick (default: all).
    Returns:
        ``(Q,)`` int64 indices into ``gallery`` (-1 for a query with no allowed entry).
    """
    similarity = F.normalize(queries.to(torch.float32), dim=1) @ F.normalize(gallery.to(torch.float32), dim=1).T
    if allowed is not None:
        similarity = similarity.masked_fill(~allowed, float("-inf"))
    best = similarity.argmax(dim=1)
    if allowed is not None:
        best = torch.where(allowed.any(dim=1), best, torch.full_like(best, -1))
    return best


def retrieval_hit_rate(
    queries: torch.Tensor, gallery: torch.Tensor, hits: torch.Tensor, *, allowed: torch.Tensor | None = None
) -> RetrievalResult:
    """Hit rate of nearest-neighbour retrieval.

    Args:
        queries: ``(Q, C)`` query encodings.
        gallery: ``(G, C)`` gallery encodings.
        hits: ``(Q, G)`` bool, gallery entry ``g`` is a correct answer for query ``q``.
        allowed: ``(Q, G)`` bool, entries query ``q`` may pick (default: all).
    """
    if hits.shape != (queries.shape[0], gallery.shape[0]):
        raise ValueError(f"hits must be (queries, gallery) = {(queries.shape[0], gallery.shape[0])}, got {tuple(hits.shape)}")
    allowed = torch.ones_like(hits) if allowed is None else allowed
    best = nearest_neighbours(queries, gallery, allowed=allowed)
    scored = best >= 0
    if not bool(scored.any()):
        return RetrievalResult(float("nan"), float("nan"), 0)
    rows = torch.nonzero(scored)[:, 0]
    hit = hits[rows, best[rows]].float()
    chance = ((hits & allowed).sum(dim=1).float() / allowed.sum(dim=1).clamp(min=1).float())[rows]
    return RetrievalResult(float(hit.mean()), float(chance.mean()), int(rows.numel()))


def same_scene_retrieval(
    queries: torch.Tensor, query_scenes: np.ndarray, gallery: torch.Tensor, gallery_scenes: np.ndarray
) -> RetrievalResult:
    """Retrieval where a hit is a gallery frame of the query's scene (e.g. held-out views of the
    scenes against the frames learned from).

    Args:
        queries: ``(Q, C)``; query_scenes: ``(Q,)`` scene of every query.
        gallery: ``(G, C)``; gallery_scenes: ``(G,)``.
    """
    hits = torch.from_numpy(np.asarray(query_scenes)[:, None] == np.asarray(gallery_scenes)[None, :])
    return retrieval_hit_rate(queries, gallery, hits)


def temporal_retrieval(
    encodings: torch.Tensor, times: np.ndarray, query_indices: np.ndarray, *, exclude_within: float, hit_within: float
) -> RetrievalResult:
    """Retrieval within one stream where a hit is a frame within ``hit_within`` seconds of the
    query; the frames within ``exclude_within`` seconds (the query itself included) are not in its
    gallery, nor are the other queries (held-out frames).

    Args:
        encodings: ``(N, C)`` every frame of the stream.
        times: ``(N,)`` stream time of every frame, in seconds.
        query_indices: ``(Q,)`` the held-out frames used as queries.
        exclude_within, hit_within: seconds, ``exclude_within < hit_within``.
    """
    if not 0 <= exclude_within < hit_within:
        raise ValueError(f"need 0 <= exclude_within < hit_within, got {exclude_within}, {hit_within}")
    query_indices = np.asarray(query_indices)
    gallery_mask = np.ones(len(times), dtype=bool)
    gallery_mask[query_indices] = False
    gallery_indices = np.nonzero(gallery_mask)[0]
    distance = np.abs(np.asarray(times)[query_indices][:, None] - np.asarray(times)[gallery_indices][None, :])
    return retrieval_hit_rate(
        encodings[torch.from_numpy(query_indices)],
        encodings[torch.from_numpy(gallery_indices)],
        torch.from_numpy(distance <= hit_within),
        allowed=torch.from_numpy(distance > exclude_within),
    )
