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


_SCRATCH = threading.local()
"""Per thread, two float32 buffers that the compact update reuses for its temporaries (allocating
them anew for every parameter of every window cost more than the arithmetic)."""


def _scratch(slot: int, like: torch.Tensor) -> torch.Tensor:
    """Float32 scratch of ``like``'s shape from buffer ``slot`` (0 or 1), grown as needed."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = [torch.empty(0), torch.empty(0)]
    if buffers[slot].numel() < like.numel():
        buffers[slot] = torch.empty(like.numel())
    return buffers[slot][: like.numel()].view(like.shape)


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
        parameter = self.params[index]
        grad = parameter.grad
        state = self._state(index)
        beta1, beta2 = self.betas
        state["step"] += 1
        step = float(state["step"])
        correction1, correction2 = 1 - beta1**step, 1 - beta2**step
        exp_avg = _scratch(0, grad).copy_(state["exp_avg"]).lerp_(grad, 1 - beta1)
        state["exp_avg"].copy_(exp_avg)
        if "exp_avg_sq" in state:
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (state["exp_avg_sq"] / correction2).sqrt_().add_(self.eps)
        else:
            rows = grad.shape[0]
            squares = torch.square(grad, out=_scratch(1, grad)).view(rows, -1)
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.lerp_(squares.mean(1), 1 - beta2)
            col.lerp_(squares.mean(0), 1 - beta2)
            row_scale = (row / correction2).sqrt_()
            col_scale = (col / row.mean().clamp_min(torch.finfo(torch.float32).tiny)).sqrt_()
            denominator = torch.outer(row_scale, col_scale, out=squares).add_(self.eps).view_as(grad)
        parameter.addcdiv_(exp_avg, denominator, value=-self.lr / correction1)

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
