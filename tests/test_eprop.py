"""E-prop through the stop-gradient GRU equals autograd BPTT through the same network."""

import pytest
import torch

from online_gim.eprop import EligibilityTraces, StopGradientGRU, bptt_gradients, eprop_gradients


@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_eprop_equals_bptt_across_a_window_boundary(chunk: int) -> None:
    torch.manual_seed(0)
    gru = StopGradientGRU(24, 16).double()
    x = torch.randn(90, 24, dtype=torch.float64)
    w = torch.randn(90, 16, dtype=torch.float64)
    expected = bptt_gradients(gru, x, w)
    # The sequence is split into two windows; hidden state and traces carry over.
    got = eprop_gradients(gru, [x[:50], x[50:]], [w[:50], w[50:]], chunk=chunk)
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, rtol=1e-10, atol=1e-12)


def test_eprop_float32_relative_error_below_1e4() -> None:
    torch.manual_seed(1)
    gru = StopGradientGRU(64, 32)
    x = torch.randn(256, 64)
    w = torch.randn(256, 32)
    expected = bptt_gradients(gru, x, w)
    got = eprop_gradients(gru, [x[:128], x[128:]], [w[:128], w[128:]], chunk=32)
    for e, g in zip(expected, got):
        assert float((e - g).norm() / e.norm()) < 1e-4


def test_eprop_differs_from_bptt_if_the_recurrence_were_not_cut() -> None:
    """Guard against a vacuous test: a GRU without stop-gradients has other gradients."""
    torch.manual_seed(2)
    gru = StopGradientGRU(8, 8).double()
    reference = torch.nn.GRU(8, 8).double()
    with torch.no_grad():
        reference.weight_ih_l0.copy_(gru.weight_ih)
        reference.weight_hh_l0.copy_(gru.weight_hh)
        reference.bias_ih_l0.copy_(gru.bias_ih)
        reference.bias_hh_l0.copy_(gru.bias_hh)
    x = torch.randn(40, 8, dtype=torch.float64)
    w = torch.randn(40, 8, dtype=torch.float64)
    states, _ = reference(x[:, None, :])
    (states[:, 0] * w).sum().backward()
    got = eprop_gradients(gru, [x], [w], chunk=8)
    assert not torch.allclose(reference.weight_hh_l0.grad, got[1], rtol=1e-3)
    # ... while the forward pass is the same GRU.
    with torch.no_grad():
        ours = gru(x, torch.zeros(8, dtype=torch.float64))
    assert torch.allclose(ours, states[:, 0].detach(), atol=1e-12)


def test_trace_memory_does_not_grow_with_sequence_length() -> None:
    gru = StopGradientGRU(16, 8)
    traces = EligibilityTraces(gru)
    before = [t.shape for t in traces.traces]
    h = torch.zeros(8)
    for _ in range(20):
        states, cache = gru.run_chunk(torch.randn(16, 16), h)
        h = states[-1]
        traces.update(cache, torch.randn(16, 8))
    assert [t.shape for t in traces.traces] == before == [p.shape for p in (gru.weight_ih, gru.weight_hh, gru.bias_ih, gru.bias_hh)]
