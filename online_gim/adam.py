"""Adam for the learner's modules and probes, with its moments kept as torch keeps them or compactly.

``float32`` moments: exactly ``torch.optim.Adam(fused=True)`` (the same ATen kernel) and the same
``state_dict`` layout. ``compact`` moments keep a quarter of that memory (measured by
``online-gim bench``'s ``learner_state_mib``):

- the first moment ``m`` in bfloat16 (its update weight ``1 - beta1 = 0.1`` is far above bfloat16's
  rounding step of 2**-8, so the rounding does not bias the average);
- the second moment ``v`` of a matrix (every parameter of two or more dimensions, viewed as
  ``(shape[0], -1)``) factored as in Adafactor (Shazeer & Stern 2018): the running means of ``g**2``
  over each row and each column, ``v_ij ~ r_i c_j / mean(r)``, exact for gradients whose squares
  have rank one (for a prediction head, ``g = c^T d``, the product of context and target energies).
  Vectors keep their full ``v``.

A parameter update is a deterministic function of the stored state and the gradient, so a learner
restored from a checkpoint of this state continues exactly as it would have.

This module does not use ``torch.optim``: importing it loads ``torch._dynamo`` (and with a CUDA
build of torch, Triton), about 150 MiB of a learning process' memory.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

import torch

MomentStorage = Literal["float32", "compact"]


_BLOCK_ELEMENTS = 1 << 18
"""Elements of a matrix that the compact update processes at once (1 MiB of float32): its
temporaries stay small and in cache."""

_SCRATCH = threading.local()
"""Per thread, two float32 buffers of :data:`_BLOCK_ELEMENTS` that the compact update reuses for its
temporaries (allocating them anew for every block cost more than the arithmetic)."""


def _scratch(slot: int, rows: int, cols: int) -> torch.Tensor:
    """A ``(rows, cols)`` float32 view of scratch buffer ``slot`` (0 or 1)."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = [torch.empty(_BLOCK_ELEMENTS), torch.empty(_BLOCK_ELEMENTS)]
    if buffers[slot].numel() < rows * cols:
        buffers[slot] = torch.empty(rows * cols)
    return buffers[slot][: rows * cols].view(rows, cols)


class Adam:
    """Adam without weight decay over ``params``.

    Parameters:
        params: the tensors to optimise (leaves with ``requires_grad``).
        lr: learning rate.
        betas, eps: Adam's (torch's defaults).
        moments: ``float32`` (torch's Adam) or ``compact`` (module docstring).

    Attributes:
        params: the parameters, in order.
        state: per parameter (by position), its moment tensors and ``step`` (created at its first
            update).
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        moments: MomentStorage = "float32",
    ) -> None:
        self.params = list(params)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.moments = moments
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        indices = [i for i, p in enumerate(self.params) if p.grad is not None]
        if self.moments == "float32":
            self._fused_step(indices)
            return
        for index in indices:
            self._compact_step(index)

    def _fused_step(self, indices: list[int]) -> None:
        params = [self.params[i] for i in indices]
        states = [self._state(i) for i in indices]
        beta1, beta2 = self.betas
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
            steps, lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=self.eps,
            amsgrad=False, maximize=False,
        )

    def _state(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self.state:
            parameter = self.params[index]
            state = {"step": torch.zeros((), dtype=torch.float32)}
            if self.moments == "float32":
                state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            else:
                state["exp_avg"] = torch.zeros_like(parameter, dtype=torch.bfloat16)
                if parameter.dim() >= 2:
                    rows = parameter.shape[0]
                    state["exp_avg_sq_row"] = parameter.new_zeros(rows)
                    state["exp_avg_sq_col"] = parameter.new_zeros(parameter.numel() // rows)
                else:
                    state["exp_avg_sq"] = torch.zeros_like(parameter)
            self.state[index] = state
        return self.state[index]

    def _compact_step(self, index: int) -> None:
        parameter, state = self.params[index], self._state(index)
        beta1, beta2 = self.betas
        state["step"] += 1
        step = float(state["step"])
        size = -self.lr / (1 - beta1**step)
        correction2 = 1 - beta2**step
        if "exp_avg_sq" in state:  # a vector: full second moment
            grad = parameter.grad
            exp_avg = state["exp_avg"].float().lerp_(grad, 1 - beta1)
            state["exp_avg"].copy_(exp_avg)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            parameter.addcdiv_(exp_avg, (state["exp_avg_sq"] / correction2).sqrt_().add_(self.eps), value=size)
            return
        rows = parameter.shape[0]
        grad = parameter.grad.reshape(rows, -1)
        cols = grad.shape[1]
        blocks = [(start, min(start + max(1, _BLOCK_ELEMENTS // cols), rows)) for start in range(0, rows, max(1, _BLOCK_ELEMENTS // cols))]
        row_squares, col_squares = grad.new_empty(rows), grad.new_zeros(cols)
        for start, stop in blocks:  # the row and column means of g**2
            squares = torch.square(grad[start:stop], out=_scratch(0, stop - start, cols))
            row_squares[start:stop] = squares.mean(1)
            col_squares += squares.sum(0)
        row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
        row.lerp_(row_squares, 1 - beta2)
        col.lerp_(col_squares.div_(rows), 1 - beta2)
        row_scale = (row / correction2).sqrt_()
        col_scale = (col / row.mean().clamp_min(torch.finfo(torch.float32).tiny)).sqrt_()
        exp_avg, weight = state["exp_avg"].view(rows, cols), parameter.detach().view(rows, cols)
        for start, stop in blocks:  # m, and the update m / (sqrt(v) + eps) with v ~ r c^T / mean(r)
            first = _scratch(0, stop - start, cols).copy_(exp_avg[start:stop]).lerp_(grad[start:stop], 1 - beta1)
            exp_avg[start:stop].copy_(first)
            denominator = torch.outer(row_scale[start:stop], col_scale, out=_scratch(1, stop - start, cols)).add_(self.eps)
            weight[start:stop].addcdiv_(first, denominator, value=size)

    def state_dict(self) -> dict[str, object]:
        """``torch.optim.Adam``'s layout: ``{"state": {index: {...}}, "param_groups": [...]}``."""
        group = {
            "lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0.0, "amsgrad": False,
            "moments": self.moments, "params": list(range(len(self.params))),
        }
        return {"state": {i: {k: v.clone() for k, v in s.items()} for i, s in self.state.items()}, "param_groups": [group]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restores :meth:`state_dict`'s output, or a ``torch.optim.Adam`` state of the same
        parameters (for ``compact`` moments, converted: ``m`` rounded to bfloat16, ``v`` factored).

        Raises:
            ValueError: the state is for other parameter shapes or another moment storage.
        """
        self.state = {}
        for index, saved in state["state"].items():
            index = int(index)
            if not 0 <= index < len(self.params):
                raise ValueError(f"optimiser state for parameter {index}, but there are {len(self.params)}")
            fresh = self._state(index)
            for key, value in _converted(saved, fresh).items():
                if key not in fresh or fresh[key].shape != value.shape:
                    raise ValueError(f"optimiser state {key!r} of parameter {index} does not fit its parameter")
                fresh[key].copy_(value)


def _converted(saved: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved parameter state in the layout of ``fresh`` (a torch Adam state factored when needed)."""
    if "exp_avg_sq" in saved and "exp_avg_sq_row" in fresh:
        matrix = saved["exp_avg_sq"].reshape(saved["exp_avg_sq"].shape[0], -1)
        return {"step": saved["step"], "exp_avg": saved["exp_avg"], "exp_avg_sq_row": matrix.mean(1), "exp_avg_sq_col": matrix.mean(0)}
    return saved
