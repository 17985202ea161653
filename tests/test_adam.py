"""online_gim.adam: torch's Adam with float32 moments; compact moments close to it at a quarter of the memory."""

import pytest
import torch

from online_gim.adam import Adam


def _parameters(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(16, 24), (8, 3, 5), (16,)]
    return [torch.randn(shape, generator=generator).requires_grad_(True) for shape in shapes]


def _gradients(step: int, parameters: list[torch.Tensor], *, rank_one_squares: bool = False) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    grads = []
    for p in parameters:
        if rank_one_squares and p.dim() >= 2:  # |g| = a b^T, the same on every step; random signs
            magnitudes = torch.Generator().manual_seed(p.numel())
            rows = torch.rand(p.shape[0], generator=magnitudes) + 0.5
            cols = torch.rand(p[0].numel(), generator=magnitudes) + 0.5
            signs = torch.randint(0, 2, (p.shape[0], p[0].numel()), generator=generator) * 2 - 1
            grads.append((torch.outer(rows, cols) * signs).view_as(p) * 1e-2)
        else:
            grads.append(torch.randn(p.shape, generator=generator) * 1e-2)
    return grads


def _run(optimizer: Adam, parameters: list[torch.Tensor], steps: range, **kwargs: bool) -> None:
    for step in steps:
        for p, g in zip(parameters, _gradients(step, parameters, **kwargs)):
            p.grad = g
        optimizer.step()
        optimizer.zero_grad()


def test_float32_moments_are_torchs_fused_adam_bit_for_bit_and_share_its_state_layout() -> None:
    ours, theirs = _parameters(), _parameters()
    optimizer = Adam(ours, lr=1e-2, moments="float32")
    reference = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for step in range(5):
        for p, q, g in zip(ours, theirs, _gradients(step, ours)):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer.step()
        reference.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    # each loads the other's state and continues identically
    resumed = Adam([p.detach().clone().requires_grad_(True) for p in ours], lr=1e-2, moments="float32")
    resumed.load_state_dict(reference.state_dict())
    reference.load_state_dict(optimizer.state_dict())
    for p, q, g in zip(resumed.params, theirs, _gradients(9, ours)):
        p.grad, q.grad = g.clone(), g.clone()
    resumed.step()
    reference.step()
    assert all(torch.equal(p, q) for p, q in zip(resumed.params, theirs))


def test_compact_moments_follow_adam_where_the_gradient_squares_have_rank_one() -> None:
    """Factored second moments are exact for rank-one ``g**2``; the first moment in bfloat16 costs
    about 2**-9 of each update."""
    compact, exact = _parameters(), _parameters()
    start = [p.detach().clone() for p in exact]
    _run(Adam(compact, lr=1e-2, moments="compact"), compact, range(20), rank_one_squares=True)
    _run(Adam(exact, lr=1e-2, moments="float32"), exact, range(20), rank_one_squares=True)
    for p, q, p0 in zip(compact, exact, start):
        moved = (q - p0).norm()
        assert moved > 0.05
        assert (p - q).norm() < 0.01 * moved


def test_compact_moments_take_a_quarter_of_the_memory_and_resume_bit_for_bit() -> None:
    parameters = _parameters()
    optimizer = Adam(parameters, lr=1e-2, moments="compact")
    _run(optimizer, parameters, range(3))

    def state_bytes(adam: Adam) -> int:
        return sum(t.numel() * t.element_size() for s in adam.state.values() for t in s.values())

    large = {moments: Adam([torch.zeros(512, 1024, requires_grad=True)], lr=1e-2, moments=moments) for moments in ("compact", "float32")}
    for adam in large.values():
        _run(adam, adam.params, range(1))
    assert state_bytes(large["compact"]) < 0.26 * state_bytes(large["float32"])

    copies = [p.detach().clone().requires_grad_(True) for p in parameters]
    resumed = Adam(copies, lr=1e-2, moments="compact")
    resumed.load_state_dict(optimizer.state_dict())
    _run(optimizer, parameters, range(3, 6))
    _run(resumed, copies, range(3, 6))
    assert all(torch.equal(p, q) for p, q in zip(parameters, copies))


def test_compact_moments_load_a_torch_adam_state_and_refuse_a_state_that_does_not_fit() -> None:
    parameters = _parameters()
    reference = torch.optim.Adam(parameters, lr=1e-2)
    for p, g in zip(parameters, _gradients(0, parameters)):
        p.grad = g
    reference.step()
    compact = Adam(parameters, lr=1e-2, moments="compact")
    compact.load_state_dict(reference.state_dict())
    torch_state = reference.state_dict()["state"][0]
    assert torch.allclose(compact.state[0]["exp_avg"].float(), torch_state["exp_avg"], rtol=1e-2)
    assert torch.allclose(compact.state[0]["exp_avg_sq_row"], torch_state["exp_avg_sq"].mean(1))
    other = Adam(_parameters()[:1] + [torch.zeros(3, requires_grad=True)], lr=1e-2, moments="compact")
    with pytest.raises(ValueError, match="does not fit"):
        other.load_state_dict(compact.state_dict())
