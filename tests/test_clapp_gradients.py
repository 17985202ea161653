"""Autograd's gradient of the CLAPP hinge equals the closed-form gated Hebbian rule (CLAPP eq. 3, 4)."""

import torch

from online_gim.config import ConvLayerConfig
from online_gim.conv import ConvModule
from online_gim.losses import PredictionHead, clapp_hinge, gather_positives


def _setup(seed: int):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = ConvModule(3, ConvLayerConfig(channels=6, kernel=4, stride=2, padding=0), norm="none", momentum=0.1)
    head = PredictionHead(6, 6, 2, split=False, generator=generator)
    x = torch.randn(1, 3, 20)
    return layer, head, x, generator


def _closed_form(layer: ConvModule, head: PredictionHead, x: torch.Tensor, t: int, k: int, sign: float):
    """Eq. 3 and 4 for one term with third factor ``gamma = sign * scale`` (hinge active)."""
    weight = layer.conv.weight  # (C, C_in, kernel)
    stride, kernel = layer.layer.stride, layer.layer.kernel
    patch = lambda f: x[0, :, f * stride : f * stride + kernel]  # noqa: E731  x_i of frame f
    pre = lambda f: torch.einsum("cik,ik->c", weight, patch(f)) + layer.conv.bias  # noqa: E731
    a_t, a_tau = pre(t), pre(t + k)
    z_t, z_tau = torch.relu(a_t), torch.relu(a_tau)
    block = head.weight_z[:, (k - 1) * 6 : k * 6].detach()  # u = z_tau . (z_t @ block) * scale
    gamma = sign * head.scale
    d_head = gamma * torch.outer(z_t, z_tau)  # eq. 3: dW_pred ~ z^tau (pre) x z^t (post)
    post_tau = (z_t @ block) * (a_tau > 0)  # (W_pred c)_j rho'(a_j^tau)
    post_t = (block @ z_tau) * (a_t > 0)  # (W_pred^T z^tau)_j rho'(a_j^t)
    d_weight = gamma * (
        torch.einsum("c,ik->cik", post_tau, patch(t + k)) + torch.einsum("c,ik->cik", post_t, patch(t))
    )
    return d_head.detach(), d_weight.detach(), float((z_t @ block @ z_tau).detach() * head.scale)


def test_positive_term_gradient_is_gated_hebbian() -> None:
    layer, head, x, generator = _setup(0)
    t, k = 3, 2
    z = layer.forward_window(x, update_statistics=False)[0].T  # (T, C)
    pred = head.predict(z[t : t + 1])
    positives = gather_positives(z, torch.tensor([t]), 2)
    parts = clapp_hinge(pred[:, k - 1 : k], positives[:, k - 1 : k], torch.zeros(1, 1, 6), both=True, generator=generator)
    parts.loss.backward()
    d_head, d_weight, u = _closed_form(layer, head, x, t, k, sign=-1.0)
    assert u < 1, "the positive hinge must be active for this check"
    assert torch.allclose(head.weight_z.grad[:, (k - 1) * 6 : k * 6], d_head, atol=1e-6)
    assert torch.allclose(layer.conv.weight.grad, d_weight, atol=1e-6)


def test_negative_term_gradient_has_opposite_sign_and_vanishes_when_inactive() -> None:
    layer, head, x, generator = _setup(1)
    t, k = 2, 1
    z = layer.forward_window(x, update_statistics=False)[0].T
    pred = head.predict(z[t : t + 1])[:, :1]
    negative = z[t + k].reshape(1, 1, 6)  # score the "future" frame as a fake: u_neg = u
    parts = clapp_hinge(pred, torch.zeros(1, 1, 6), negative, both=True, generator=generator)
    parts.loss.backward()
    d_head, d_weight, u = _closed_form(layer, head, x, t, k, sign=+1.0)
    if u > -1:
        assert torch.allclose(head.weight_z.grad[:, :6], d_head, atol=1e-6)
        assert torch.allclose(layer.conv.weight.grad, d_weight, atol=1e-6)
    # Push the score below -1: the hinge is inactive and no plasticity happens (gamma = 0).
    head.zero_grad()
    layer.zero_grad()
    with torch.no_grad():
        head.weight_z.mul_(-100.0 / max(abs(u), 1e-3) * (1 if u > 0 else -1))
    z = layer.forward_window(x, update_statistics=False)[0].T
    pred = head.predict(z[t : t + 1])[:, :1]
    parts = clapp_hinge(pred, torch.zeros(1, 1, 6), z[t + k].reshape(1, 1, 6), both=True, generator=generator)
    assert parts.active_fraction < 1
    parts.loss.backward()
    assert float(head.weight_z.grad.abs().sum()) == 0.0
