"""One module's local objective: predictions, positives, negatives from memory, and the loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from online_gim.config import LossConfig, MemoryConfig
from online_gim.losses import LossParts, PredictionHead, clapp_hinge, distance_hinge, gather_positives, infonce
from online_gim.memory import NegativeMemory


@dataclass(frozen=True)
class WindowPool:
    """The current window's encodings in the target space: negatives from the same stretch of
    stream (``MemoryConfig.window_negatives``).

    Attributes:
        frames: ``(T, C_z)`` the window's target encodings, detached.
        anchors: ``(S,)`` int64 each anchor's frame index in ``frames``.
    """

    frames: torch.Tensor
    anchors: torch.Tensor


class LocalObjective:
    """Scores a module's contexts against its future targets and negatives from its memory (and,
    with ``window_negatives``, from the current window).

    A share ``window_negatives`` of the negative terms (each drawn independently) take a frame of
    the current window instead of a memory entry, never within ``exclusion`` frames of the anchor
    (its true neighbours): the contrast then has to be made within one utterance and one speaker,
    on what changes inside the window (CPC's ablation: negatives from the current sequence beat
    negatives from other sequences only, by 7 points of phone accuracy).

    Parameters:
        loss: which loss and its settings.
        memory_config: the negative policy (``uniform`` or ``hard``).
        head: the module's prediction matrices.
        memory: where negatives come from (encodings in the target space).
        generator: draws the CLAPP positive/negative choices and the window negatives.
        exclusion: half-width, in frames of the target sequence, of the zone around an anchor from
            which no window negative is drawn.
    """

    def __init__(
        self,
        loss: LossConfig,
        memory_config: MemoryConfig,
        head: PredictionHead,
        memory: NegativeMemory,
        generator: torch.Generator,
        *,
        exclusion: int = 0,
    ) -> None:
        if memory_config.policy == "hard" and loss.kind == "infonce":
            raise ValueError("memory policy 'hard' draws one negative per prediction: use it with the hinge losses")
        self.loss = loss
        self.policy = memory_config.policy
        self.window_share = memory_config.window_negatives
        self.exclusion = exclusion
        self.head = head
        self.memory = memory
        self.generator = generator

    def __call__(
        self,
        context: torch.Tensor,
        targets: torch.Tensor,
        anchors: torch.Tensor,
        anchor_positions: np.ndarray,
        *,
        source_id: str,
        pool: WindowPool | None = None,
    ) -> LossParts | None:
        """The local loss of ``S`` anchors.

        Args:
            context: ``(S, C_c)`` contexts ``c_t`` of the anchors (with the graph to train).
            targets: ``(T, C_z)`` the target sequence ``z``; ``targets[anchors + k]`` are the
                positives, so ``anchors + K < T``.
            anchors: ``(S,)`` int64 frame indices into ``targets``.
            anchor_positions: ``(S,)`` stream positions of the anchors, in samples (for the
                memory's exclusion of the anchor's neighbours).
            source_id: the stream.
            pool: the current window's encodings (window negatives; ignored when the share is 0).
        Returns:
            The loss parts, or ``None`` while the memory cannot yet provide the negatives.
        """
        steps = self.loss.prediction_steps
        positives = gather_positives(targets, anchors, steps)
        if self.head.weight_c is None:
            pred = self.head.predict(context)
            negatives = self._negatives(pred, anchor_positions, source_id, pool)
            return None if negatives is None else self._loss(pred, positives, negatives)
        pred_z = self.head.predict(context.detach(), side="z")
        negatives = self._negatives(pred_z, anchor_positions, source_id, pool)
        if negatives is None:
            return None
        part_z = self._loss(pred_z, positives, negatives)
        part_c = self._loss(self.head.predict(context, side="c"), positives.detach(), negatives)
        return LossParts(
            loss=0.5 * (part_z.loss + part_c.loss),
            loss_pos=0.5 * (part_z.loss_pos + part_c.loss_pos),
            loss_neg=0.5 * (part_z.loss_neg + part_c.loss_neg),
            active_fraction=0.5 * (part_z.active_fraction + part_c.active_fraction),
            chance=part_z.chance,
        )

    def _negatives(
        self, pred: torch.Tensor, anchor_positions: np.ndarray, source_id: str, pool: WindowPool | None
    ) -> torch.Tensor | None:
        anchors, steps, dim = pred.shape
        count = self.loss.negatives if self.loss.kind == "infonce" else steps
        if self.window_share > 0 and pool is not None and self.policy != "hard":
            return self._mixed_negatives(anchor_positions, count, source_id, pool)
        if self.loss.kind == "infonce":
            return self.memory.sample(anchor_positions, count, source_id=source_id)
        if self.policy == "hard":
            flat = self.memory.hardest(
                pred.detach().reshape(anchors * steps, dim), np.repeat(anchor_positions, steps), source_id=source_id
            )
            return None if flat is None else flat.view(anchors, steps, dim)
        return self.memory.sample(anchor_positions, steps, source_id=source_id)

    def _mixed_negatives(
        self, anchor_positions: np.ndarray, count: int, source_id: str, pool: WindowPool
    ) -> torch.Tensor | None:
        """``(S, count, C)`` negatives: each from the window with probability ``window_share``, else
        from the memory; ``None`` while the memory cannot serve (unless every one is from the window).
        Both sources are drawn for every term (the draws do not depend on which source a term
        takes), and only the chosen vectors are gathered."""
        shape = (len(pool.anchors), count)
        window = self._window_frames(pool, shape)
        if window is None:
            return None if self.window_share >= 1 else self.memory.sample(anchor_positions, count, source_id=source_id)
        if self.window_share >= 1:
            return pool.frames[window]
        rows = self.memory.sample_rows(anchor_positions, count, source_id=source_id)
        if rows is None:
            return None
        from_window = torch.rand(shape, generator=self.generator) < self.window_share
        negatives = pool.frames.new_empty((*shape, pool.frames.shape[1]))
        negatives[from_window] = pool.frames[window[from_window]]
        from_memory = ~from_window
        negatives[from_memory] = self.memory.vectors(rows[from_memory.numpy()])
        return negatives

    def _window_frames(self, pool: WindowPool, shape: tuple[int, int]) -> torch.Tensor | None:
        """``shape`` int64 indices of frames of the window drawn uniformly outside each anchor's
        exclusion zone ``[anchor - exclusion, anchor + exclusion]``; ``None`` if the zone covers the
        window."""
        frames = pool.frames.shape[0]
        anchors = pool.anchors[:, None]
        first = (anchors - self.exclusion).clamp(min=0)
        excluded = (anchors + self.exclusion).clamp(max=frames - 1) - first + 1
        allowed = frames - excluded
        if int(allowed.min()) <= 0:
            return None
        draw = (torch.rand(shape, generator=self.generator) * allowed).long()
        return draw + (draw >= first) * excluded

    def _loss(self, pred: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> LossParts:
        kind = self.loss.kind
        if kind in ("clapp", "clapp_s"):
            return clapp_hinge(pred, positives, negatives, both=kind == "clapp_s", generator=self.generator)
        if kind == "infonce":
            return infonce(pred, positives, negatives)
        return distance_hinge(
            pred,
            positives,
            negatives,
            margin_pos=self.loss.margin_pos,
            margin_neg=self.loss.margin_neg,
            scale=self.head.scale,
        )
