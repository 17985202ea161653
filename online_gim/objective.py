"""One module's local objective: predictions, positives, negatives from memory, and the loss."""

from __future__ import annotations

import numpy as np
import torch

from online_gim.config import LossConfig, MemoryConfig
from online_gim.losses import LossParts, PredictionHead, clapp_hinge, distance_hinge, gather_positives, infonce
from online_gim.memory import NegativeMemory


class LocalObjective:
    """Scores a module's contexts against its future targets and negatives from its memory.

    Parameters:
        loss: which loss and its settings.
        memory_config: the negative policy (``uniform`` or ``hard``).
        head: the module's prediction matrices.
        memory: where negatives come from (encodings in the target space).
        generator: draws the CLAPP positive/negative choices.
    """

    def __init__(
        self,
        loss: LossConfig,
        memory_config: MemoryConfig,
        head: PredictionHead,
        memory: NegativeMemory,
        generator: torch.Generator,
    ) -> None:
        if memory_config.policy == "hard" and loss.kind == "infonce":
            raise ValueError("memory policy 'hard' draws one negative per prediction: use it with the hinge losses")
        self.loss = loss
        self.policy = memory_config.policy
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
        Returns:
            The loss parts, or ``None`` while the memory cannot yet provide the negatives.
        """
        steps = self.loss.prediction_steps
        positives = gather_positives(targets, anchors, steps)
        if self.head.weight_c is None:
            pred = self.head.predict(context)
            negatives = self._negatives(pred, anchor_positions, source_id)
            return None if negatives is None else self._loss(pred, positives, negatives)
        pred_z = self.head.predict(context.detach(), side="z")
        negatives = self._negatives(pred_z, anchor_positions, source_id)
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

    def _negatives(self, pred: torch.Tensor, anchor_positions: np.ndarray, source_id: str) -> torch.Tensor | None:
        anchors, steps, dim = pred.shape
        if self.loss.kind == "infonce":
            return self.memory.sample(anchor_positions, self.loss.negatives, source_id=source_id)
        if self.policy == "hard":
            flat = self.memory.hardest(
                pred.detach().reshape(anchors * steps, dim), np.repeat(anchor_positions, steps), source_id=source_id
            )
            return None if flat is None else flat.view(anchors, steps, dim)
        return self.memory.sample(anchor_positions, steps, source_id=source_id)

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
