"""Local contrastive losses on prediction scores (functional layer; shapes in every docstring).

A module's context ``c_t`` predicts its future targets ``z_{t+k}``, k = 1..K, through a
:class:`PredictionHead`. Every loss here takes the predictions, the positive targets and the
negatives and returns :class:`LossParts`; its gradient is what trains the module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LossParts:
    """A local loss and the numbers the step report shows.

    Attributes:
        loss: scalar to minimise (has a graph).
        loss_pos: mean positive part (hinge losses), NaN otherwise.
        loss_neg: mean negative part (hinge losses), NaN otherwise.
        active_fraction: fraction of hinge terms with non-zero gradient, NaN for InfoNCE.
        chance: the loss of an encoder that predicts nothing (see ``ModuleReport.chance_loss``).
    """

    loss: torch.Tensor
    loss_pos: float
    loss_neg: float
    active_fraction: float
    chance: float


class PredictionHead(nn.Module):
    """The prediction matrices ``W_k`` (k = 1..K) of one module, score ``u = z^T W_k c / sqrt(C_z)``.

    The ``1/sqrt(C_z)`` score scale keeps initial scores of order 1 (ReLU features of
    standardised units have ``|z|^2 ~ C_z / 2``), so the hinges start active rather than
    saturated; ``W_k`` start orthogonal (CLAPP's code uses a delta-orthogonal init).
    With ``split``: two independent sets, ``W_pred_z`` (its scores train the target side only)
    and ``W_pred_c`` (the context side only), CLAPP Appendix C.

    Parameters:
        context_dim: C_c.
        target_dim: C_z.
        steps: K.
        split: keep two independent matrices (no weight transport).
        generator: seeds the orthogonal initialisation.
        product_dtype: the number type of ``W_k c`` and of its two gradient products
            (``torch.bfloat16``: inputs rounded to bfloat16, sums in float32, result float32).
    """

    def __init__(
        self,
        context_dim: int,
        target_dim: int,
        steps: int,
        *,
        split: bool,
        generator: torch.Generator,
        product_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.steps = steps
        self.product_dtype = product_dtype
        self.target_dim = target_dim
        self.scale = 1.0 / math.sqrt(target_dim)
        self.weight_z = nn.Parameter(self._orthogonal(context_dim, target_dim, steps, generator))
        self.weight_c = nn.Parameter(self._orthogonal(context_dim, target_dim, steps, generator)) if split else None

    @staticmethod
    def _orthogonal(rows: int, cols: int, steps: int, generator: torch.Generator) -> torch.Tensor:
        blocks = []
        for _ in range(steps):
            q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=generator))
            blocks.append(q if rows >= cols else q.T)
        return torch.cat(blocks, dim=1)  # (C_c, K * C_z)

    def predict(self, context: torch.Tensor, *, side: str = "z") -> torch.Tensor:
        """``(S, C_c)`` contexts -> ``(S, K, C_z)`` predictions ``W_k c_t``, already score-scaled.

        ``side`` selects the matrix under ``split`` (``z`` or ``c``).
        """
        weight = self.weight_c if side == "c" and self.weight_c is not None else self.weight_z
        if self.product_dtype != weight.dtype:
            product = (context.to(self.product_dtype) @ weight.to(self.product_dtype)).to(weight.dtype)
        else:
            product = context @ weight
        return product.view(context.shape[0], self.steps, self.target_dim) * self.scale


def product_dtype(precision: str) -> torch.dtype:
    """The number type of products for ``LearnerConfig.precision`` on this CPU (``auto``: bfloat16
    where oneDNN multiplies it natively)."""
    if precision == "auto":
        return torch.bfloat16 if bfloat16_is_native() else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def bfloat16_is_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def gather_positives(targets: torch.Tensor, anchors: torch.Tensor, steps: int) -> torch.Tensor:
    """``(T, C)`` targets, ``(S,)`` anchor frames -> ``(S, K, C)`` with ``[s, k-1] = targets[anchors[s] + k]``."""
    offsets = torch.arange(1, steps + 1, device=targets.device)
    return targets[anchors[:, None] + offsets[None, :]]


def _mean_or_nan(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else float("nan")


def clapp_hinge(
    pred: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, *, both: bool, generator: torch.Generator
) -> LossParts:
    """CLAPP's hinge (eq. 2): ``max(0, 1 - u_pos)`` and ``max(0, 1 + u_neg)``.

    Args:
        pred: ``(S, K, C)`` predictions (score-scaled).
        positives: ``(S, K, C)`` true futures ``z_{t+k}``.
        negatives: ``(S, K, C)`` one negative per term.
        both: ``clapp_s``, apply the positive and the negative term every time (chance 2);
            otherwise each term is a positive OR a negative with probability 1/2 (chance 1).
        generator: draws the positive/negative choice.
    Returns:
        The loss is the sum of the applied hinge values over the ``S*K`` terms, divided by ``S*K``.
        Without ``both`` only the chosen term's score is computed (one product per term, not two).
    """
    if both:
        hinge_pos = torch.relu(1 - (pred * positives).sum(-1))
        hinge_neg = torch.relu(1 + (pred * negatives).sum(-1))
        loss = hinge_pos.mean() + hinge_neg.mean()
        applied_pos, applied_neg = hinge_pos, hinge_neg
        chance = 2.0
    else:
        choose_pos = torch.rand(pred.shape[:-1], generator=generator) < 0.5
        scored = torch.where(choose_pos[..., None], positives, negatives)
        sign = torch.where(choose_pos, -1.0, 1.0)  # 1 - u for a positive, 1 + u for a negative
        hinge = torch.relu(1 + sign * (pred * scored).sum(-1))
        loss = hinge.mean()
        applied_pos, applied_neg = hinge[choose_pos], hinge[~choose_pos]
        chance = 1.0
    applied = torch.cat([applied_pos.detach().reshape(-1), applied_neg.detach().reshape(-1)])
    return LossParts(
        loss=loss,
        loss_pos=_mean_or_nan(applied_pos.detach()),
        loss_neg=_mean_or_nan(applied_neg.detach()),
        active_fraction=float((applied > 0).float().mean()),
        chance=chance,
    )


def infonce(pred: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> LossParts:
    """GIM's InfoNCE: softmax of the positive score against N negatives per anchor.

    Args:
        pred: ``(S, K, C)`` predictions (score-scaled).
        positives: ``(S, K, C)``.
        negatives: ``(S, N, C)``, shared by the K predictions of an anchor.
    Returns:
        Mean cross-entropy over the ``S*K`` terms; chance ``log(N + 1)``.
    """
    u_pos = (pred * positives).sum(-1, keepdim=True)  # (S, K, 1)
    u_neg = torch.einsum("skc,snc->skn", pred, negatives)
    logits = torch.cat([u_pos, u_neg], dim=-1).reshape(-1, 1 + negatives.shape[1])
    loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))
    nan = float("nan")
    return LossParts(loss=loss, loss_pos=nan, loss_neg=nan, active_fraction=nan, chance=math.log(negatives.shape[1] + 1))


def distance_hinge(
    pred: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, *, margin_pos: float, margin_neg: float, scale: float
) -> LossParts:
    """The contrastive hinge on distances (bioplausible-ssl-hinge paper): positives are pulled
    in only while farther than ``margin_pos``, negatives pushed out only while closer than
    ``margin_neg``; distances are mean squared differences per channel.

    Args:
        pred: ``(S, K, C)`` predictions, score-scaled (divided by ``scale`` here to compare
            them with the targets in the targets' units).
        positives, negatives: ``(S, K, C)``.
        scale: the head's score scale.
    Returns:
        Mean of both hinges over the ``S*K`` terms; chance (collapse: every distance 0) is
        ``margin_neg``.
    """
    pred = pred / scale
    d_pos = (pred - positives).pow(2).mean(-1)
    d_neg = (pred - negatives).pow(2).mean(-1)
    hinge_pos = torch.relu(d_pos - margin_pos)
    hinge_neg = torch.relu(margin_neg - d_neg)
    applied = torch.cat([hinge_pos.detach().reshape(-1), hinge_neg.detach().reshape(-1)])
    return LossParts(
        loss=hinge_pos.mean() + hinge_neg.mean(),
        loss_pos=float(hinge_pos.detach().mean()),
        loss_neg=float(hinge_neg.detach().mean()),
        active_fraction=float((applied > 0).float().mean()),
        chance=margin_neg,
    )
