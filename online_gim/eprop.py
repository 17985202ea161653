"""A GRU whose recurrence is cut by stop-gradients, trained by e-prop (forward eligibility traces).

CLAPP (Appendix C) replaces back-propagation through time in the GRU by e-prop (Bellec et al.
2020). The gates read a stop-gradient of the previous state::

    r_t = sigmoid(W_ir x_t + b_ir + W_hr sg(h_{t-1}) + b_hr)
    z_t = sigmoid(W_iz x_t + b_iz + W_hz sg(h_{t-1}) + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn sg(h_{t-1}) + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

so the only path from ``h_{t-1}`` to ``h_t`` that carries gradient is the diagonal
``z_t * h_{t-1}``. Every parameter row feeds one unit ``i``, and its sensitivity
``e_t = dh_{i,t} / dtheta`` obeys the forward recursion ``e_t = z_{i,t} e_{t-1} + psi_{i,t} in_t``
(``psi``: the immediate derivative of ``h_{i,t}`` through the parameter's gate, ``in``: the
parameter's input, ``x_t``, ``h_{t-1}`` or 1). The weight gradient is ``sum_t L_t * e_t`` with the
learning signal ``L_t = dLoss / dh_t``. The traces have the parameters' shapes and carry over
from one window to the next together with the hidden state, so the GRU learns across window
boundaries; memory does not grow with the sequence length.

Chunked evaluation: over a chunk of ``C`` steps the per-step updates have a closed form
(the trace decays are per-row products ``prod z``), so ``sum_t L_t * e_t`` and the trace at the
end of the chunk are computed with two matrix products and scans over the chunk's ``(C, 3H)``
gate values instead of ``C`` passes over the ``(3H, D)`` traces. The numbers are those of the
per-step recursion (``chunk_size=1`` *is* the per-step recursion; a test checks both against
autograd BPTT through the stop-gradient GRU). Memory is ``O(#parameters + C * (D + H))``.

References:
    Bellec et al. (2020), A solution to the learning dilemma for recurrent networks of spiking
    neurons, Nature Communications 11. Illing et al. (2021), CLAPP, Appendix C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GruStepCache:
    """Per-step values of one chunk that the e-prop update needs (all ``(C, ...)``, detached).

    Attributes:
        x: ``(C, D)`` inputs.
        h_prev: ``(C, H)`` previous hidden states ``h_{t-1}``.
        psi_i: ``(C, 3H)`` immediate derivatives of ``h_t`` w.r.t. the input-side gate
            pre-activations ``[r | z | n]``.
        psi_h: ``(C, 3H)`` the same for the hidden-side pre-activations (differs in the n block,
            which ``r_t`` gates).
        decay: ``(C, H)`` the update gate ``z_t``: each trace row decays by its unit's ``z_t``.
    """

    x: torch.Tensor
    h_prev: torch.Tensor
    psi_i: torch.Tensor
    psi_h: torch.Tensor
    decay: torch.Tensor


class StopGradientGRU(nn.Module):
    """The stop-gradient GRU above: parameters in PyTorch's ``nn.GRU`` layout (gate order r, z, n).

    Parameters:
        input_size: D, features per input step.
        hidden_size: H, units.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """Runs the GRU with autograd (the BPTT reference through the stop-gradient network).

        Args:
            x: ``(T, D)`` input sequence.
            h0: ``(H,)`` initial state.
        Returns:
            ``(T, H)`` hidden states; gradients flow through ``z_t * h_{t-1}`` only.
        """
        hidden = self.hidden_size
        gates_i = x @ self.weight_ih.T + self.bias_ih
        h = h0
        states = []
        for t in range(x.shape[0]):
            gates_h = h.detach() @ self.weight_hh.T + self.bias_hh
            r = torch.sigmoid(gates_i[t, :hidden] + gates_h[:hidden])
            z = torch.sigmoid(gates_i[t, hidden : 2 * hidden] + gates_h[hidden : 2 * hidden])
            n = torch.tanh(gates_i[t, 2 * hidden :] + r * gates_h[2 * hidden :])
            h = (1 - z) * n + z * h
            states.append(h)
        return torch.stack(states)

    @torch.no_grad()
    def run(self, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """``(T, D)`` inputs from state ``(H,)`` -> ``(T, H)`` hidden states, without autograd and
        without what e-prop needs (inference): torch's GRU kernel, whose forward pass is this
        network's (the stop-gradients change only gradients)."""
        weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        states, _ = torch.gru(x[:, None, :], h0[None, None, :], weights, True, 1, 0.0, False, False, False)
        return states[:, 0]

    @torch.no_grad()
    def run_chunk(self, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, GruStepCache]:
        """Runs the GRU without autograd and keeps what e-prop needs.

        Args:
            x: ``(C, D)`` input chunk.
            h0: ``(H,)`` state before the chunk.
        Returns:
            ``(C, H)`` hidden states and the chunk's :class:`GruStepCache`.
        """
        hidden = self.hidden_size
        steps = x.shape[0]
        gates_i = torch.addmm(self.bias_ih, x, self.weight_ih.T)  # (C, 3H): the input side, all steps at once
        recurrent = x.new_empty(steps, 3 * hidden)  # W_hh h_{t-1} + b_hh
        gate_rz = x.new_empty(steps, 2 * hidden)
        gate_n = x.new_empty(steps, hidden)
        h = x.new_empty(steps + 1, hidden)  # h[t] = h_{t-1}
        h[0] = h0
        for t in range(steps):  # few, in-place operations per step: the loop is the GRU's cost
            torch.addmv(self.bias_hh, self.weight_hh, h[t], out=recurrent[t])
            torch.sigmoid_(torch.add(gates_i[t, : 2 * hidden], recurrent[t, : 2 * hidden], out=gate_rz[t]))
            torch.tanh_(torch.addcmul(gates_i[t, 2 * hidden :], gate_rz[t, :hidden], recurrent[t, 2 * hidden :], out=gate_n[t]))
            torch.addcmul(gate_n[t], gate_rz[t, hidden:], h[t] - gate_n[t], out=h[t + 1])  # n + z * (h - n)
        h_prev, states = h[:-1], h[1:]
        gate_r, gate_z, recurrent_n = gate_rz[:, :hidden], gate_rz[:, hidden:], recurrent[:, 2 * hidden :]
        psi_n = (1 - gate_z) * (1 - gate_n * gate_n)
        psi_z = (h_prev - gate_n) * gate_z * (1 - gate_z)
        psi_r = psi_n * recurrent_n * gate_r * (1 - gate_r)
        cache = GruStepCache(
            x=x,
            h_prev=h_prev,
            psi_i=torch.cat([psi_r, psi_z, psi_n], dim=1),
            psi_h=torch.cat([psi_r, psi_z, psi_n * gate_r], dim=1),
            decay=gate_z,
        )
        return states, cache


class EligibilityTraces:
    """The e-prop traces of a :class:`StopGradientGRU` and the gradient they accumulate.

    ``update(cache, learning_signal)`` advances the traces over one chunk and adds
    ``sum_t L_t * e_t`` to ``grads``. State: the four traces (shapes of ``weight_ih``,
    ``weight_hh``, ``bias_ih``, ``bias_hh``); they persist across windows like the hidden state.
    """

    def __init__(self, gru: StopGradientGRU) -> None:
        self.gru = gru
        self._reset()

    def _reset(self) -> None:
        parameters = (self.gru.weight_ih, self.gru.weight_hh, self.gru.bias_ih, self.gru.bias_hh)
        self.traces = [torch.zeros_like(p, requires_grad=False) for p in parameters]
        self.grads = [torch.zeros_like(p, requires_grad=False) for p in parameters]

    def zero_grads(self) -> None:
        for grad in self.grads:
            grad.zero_()

    @torch.no_grad()
    def update(self, cache: GruStepCache, learning_signal: torch.Tensor) -> None:
        """Advances the traces over a chunk and accumulates the gradient.

        Args:
            cache: the chunk's values from :meth:`StopGradientGRU.run_chunk`.
            learning_signal: ``(C, H)`` ``dLoss/dh_t`` for each step of the chunk (the direct
                dependence of the loss on ``h_t``, not through later states).
        """
        decay = cache.decay.repeat(1, 3)  # (C, 3H): every row of unit i decays by z_i
        signal = learning_signal.repeat(1, 3)  # (C, 3H)
        prefix = torch.cumprod(decay, dim=0)  # prod_{u<=t} z_u
        # suffix[s] = prod_{s<u<=C-1} z_u: what a contribution made at step s has decayed to at
        # the end of the chunk.
        suffix = torch.ones_like(decay)
        suffix[:-1] = torch.flip(torch.cumprod(torch.flip(decay[1:], (0,)), dim=0), (0,))
        # reach[s] = sum_{t>=s} L_t prod_{s<u<=t} z_u: how much a contribution made at step s
        # adds to sum_t L_t e_t over the rest of the chunk.
        reach = torch.empty_like(signal)
        running = torch.zeros_like(signal[0])
        for s in range(signal.shape[0] - 1, -1, -1):
            running = signal[s] + (decay[s + 1] * running if s + 1 < signal.shape[0] else 0)
            reach[s] = running
        carried = (signal * prefix).sum(0)  # sum_t L_t prod_{u<=t} z_u: weight of the old trace
        final_decay = prefix[-1]
        inputs = (cache.x, cache.h_prev, None, None)
        psis = (cache.psi_i, cache.psi_h, cache.psi_i, cache.psi_h)
        for trace, grad, psi, inp in zip(self.traces, self.grads, psis, inputs):
            row_scale = carried if trace.dim() == 1 else carried[:, None]
            row_decay = final_decay if trace.dim() == 1 else final_decay[:, None]
            grad.add_(row_scale * trace)
            trace.mul_(row_decay)
            if inp is None:
                grad.add_((psi * reach).sum(0))
                trace.add_((psi * suffix).sum(0))
            else:
                grad.addmm_((psi * reach).T, inp)
                trace.addmm_((psi * suffix).T, inp)

    def named_traces(self) -> dict[str, torch.Tensor]:
        """The four traces by their names in :meth:`state_dict` (the live tensors, not copies)."""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return {f"trace_{name}": trace for name, trace in zip(names, self.traces)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: trace.clone() for name, trace in self.named_traces().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        for name, trace in zip(names, self.traces):
            trace.copy_(state[f"trace_{name}"])


def eprop_gradients(
    gru: StopGradientGRU, windows: list[torch.Tensor], learning_signals: list[torch.Tensor], *, chunk: int
) -> list[torch.Tensor]:
    """The e-prop gradient of ``sum_t <L_t, h_t>`` over consecutive windows of one sequence.

    The GRU starts from a zero state; each window is streamed through :meth:`StopGradientGRU.run_chunk`
    in chunks of ``chunk`` steps, and the hidden state and the traces carry over from one window to
    the next, as in the learner. Only one chunk's activations are alive at a time.

    Args:
        gru: the network (its parameters are not changed).
        windows: ``(T_i, D)`` inputs of consecutive windows.
        learning_signals: ``(T_i, H)`` the learning signal ``L_t = dLoss/dh_t`` of every step.
        chunk: steps per :meth:`EligibilityTraces.update`.
    Returns:
        Gradients in the order ``weight_ih, weight_hh, bias_ih, bias_hh`` (the parameters' shapes).
    """
    traces = EligibilityTraces(gru)
    h = windows[0].new_zeros(gru.hidden_size)
    for x, signal in zip(windows, learning_signals):
        for first in range(0, x.shape[0], chunk):
            states, cache = gru.run_chunk(x[first : first + chunk], h)
            h = states[-1]
            traces.update(cache, signal[first : first + chunk])
    return traces.grads


def bptt_gradients(gru: StopGradientGRU, x: torch.Tensor, learning_signal: torch.Tensor) -> list[torch.Tensor]:
    """Autograd's gradient of ``sum_t <L_t, h_t>`` through the whole sequence (the BPTT reference).

    Keeps the graph of all ``T`` steps until the backward pass. Overwrites the parameters' ``.grad``.

    Args:
        gru: the network.
        x: ``(T, D)`` inputs; the GRU starts from a zero state.
        learning_signal: ``(T, H)`` the weights ``L_t`` of the states in the loss.
    Returns:
        Gradients in the order ``weight_ih, weight_hh, bias_ih, bias_hh``.
    """
    gru.zero_grad()
    states = gru(x, x.new_zeros(gru.hidden_size))
    (states * learning_signal).sum().backward()
    return [p.grad.clone() for p in (gru.weight_ih, gru.weight_hh, gru.bias_ih, gru.bias_hh)]
