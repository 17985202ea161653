"""Conv modules: every normalisation keeps frames local and inference consistent with learning."""

import pytest
import torch

from online_gim.config import ConvLayerConfig
from online_gim.conv import ConvModule

LAYER = ConvLayerConfig(channels=8, kernel=10, stride=5, padding=2)


@pytest.mark.parametrize("norm", ["window", "time", "frame", "none"])
def test_recomputed_frames_equal_the_window_pass(norm: str) -> None:
    torch.manual_seed(0)
    module = ConvModule(1, LAYER, norm=norm, momentum=0.05)
    x = torch.randn(1, 1, 4000)
    whole = module.forward_window(x, update_statistics=True)
    assert torch.allclose(module.forward_frames(x, 37, 120), whole[..., 37:120], atol=1e-5)


def test_window_norm_uses_each_inputs_own_statistics() -> None:
    torch.manual_seed(0)
    module = ConvModule(1, LAYER, norm="window", momentum=0.05)
    loud, quiet = torch.randn(1, 1, 4000) * 10 + 3, torch.randn(1, 1, 4000) * 0.01
    learned = module.forward_window(loud, update_statistics=True)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    # inference on another input neither reads nor changes the statistics of the learned window
    inferred = module.forward_window(quiet, update_statistics=False)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
    assert torch.allclose(module.forward_window(loud, update_statistics=False), learned, atol=1e-5)
    # every unit is active on part of the frames of any input, whatever its level
    for output in (learned, inferred):
        active = (output[0] > 0).float().mean(dim=1)
        assert torch.all((active > 0.1) & (active < 0.9)), active


def test_window_norm_differentiates_through_its_statistics_and_the_recompute_does_not() -> None:
    """The whole-window pass is instance normalisation: a conv bias only shifts a channel's level,
    which the normalisation removes, so through the statistics the bias gets no gradient. The greedy
    sub-window recompute holds the window's statistics constant, so there it does."""
    torch.manual_seed(0)
    module = ConvModule(1, LAYER, norm="window", momentum=0.05)
    x = torch.randn(1, 1, 4000)
    readout = torch.randn(LAYER.channels, 1)
    whole = module.forward_window(x, update_statistics=True)
    pre = module.conv(module._pad(x)).detach()
    instance_norm = (pre - pre.mean(dim=2, keepdim=True)) / pre.std(dim=2, unbiased=False, keepdim=True)
    assert torch.allclose(whole, torch.relu(instance_norm), atol=1e-4)
    (whole * readout).sum().backward()
    through_statistics = module.conv.bias.grad.clone()
    module.zero_grad()
    (module.forward_frames(x, 0, whole.shape[2]) * readout).sum().backward()
    constant_statistics = module.conv.bias.grad.clone()
    assert through_statistics.abs().max() < 1e-3 * constant_statistics.abs().max()
