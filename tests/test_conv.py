"""Conv modules: every normalisation keeps frames local and inference consistent with learning."""

import pytest
import torch
import torch.nn.functional as F

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


def test_window_norm_differentiates_through_its_statistics_in_the_window_pass_and_the_recompute() -> None:
    """The whole-window pass is instance normalisation: a conv bias only shifts a channel's level,
    which the normalisation removes, so through the statistics the bias gets no gradient. The greedy
    sub-window recompute has the window's values and the gradient through its own frames'
    statistics: over the whole window it is the window pass's gradient, over part of it the bias
    still gets none (with the statistics held constant, it would)."""
    torch.manual_seed(0)
    module = ConvModule(1, LAYER, norm="window", momentum=0.05)
    x = torch.randn(1, 1, 4000)
    readout = torch.randn(LAYER.channels, 1)
    whole = module.forward_window(x, update_statistics=True)
    pre = module.conv(F.pad(x, (2, 2))).detach()
    instance_norm = (pre - pre.mean(dim=2, keepdim=True)) / pre.std(dim=2, unbiased=False, keepdim=True)
    assert torch.allclose(whole, torch.relu(instance_norm), atol=1e-4)

    def gradients(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        module.zero_grad()
        (output * readout).sum().backward()
        return module.conv.weight.grad.clone(), module.conv.bias.grad.clone()

    weight_window, bias_window = gradients(whole)
    assert bias_window.abs().max() < 1e-4 * weight_window.abs().max()
    weight_recompute, bias_recompute = gradients(module.forward_frames(x, 0, whole.shape[2]))
    assert torch.allclose(weight_recompute, weight_window, atol=1e-4 * weight_window.abs().max())
    part = module.forward_frames(x, 100, 240)
    assert torch.allclose(part, whole[..., 100:240].detach(), atol=1e-5)
    weight_part, bias_part = gradients(part)
    assert bias_part.abs().max() < 1e-4 * weight_part.abs().max() and weight_part.abs().max() > 0
    constant = torch.relu((module.conv(F.pad(x, (2, 2))[..., 500 : 239 * 5 + 10]) - module.running_mean[:, None])
                          * torch.rsqrt(module.running_var[:, None] + 1e-5))
    assert torch.allclose(constant, part.detach(), atol=1e-5)
    _, bias_constant = gradients(constant)
    assert bias_constant.abs().max() > 1e-2 * weight_part.abs().max()


@pytest.mark.parametrize("norm", ["window", "time", "none"])
@pytest.mark.parametrize(("first", "stop"), [(0, 40), (37, 120), (700, 799)])
def test_recompute_reusing_the_window_conv_has_the_recomputes_values_and_gradients(norm: str, first: int, stop: int) -> None:
    """``forward_frames(conv=...)`` takes the frames from the window pass instead of convolving the
    slice again: the same output and the same weight and bias gradients, at the window's edges too."""
    torch.manual_seed(0)
    module = ConvModule(3, LAYER, norm=norm, momentum=0.05)
    x = torch.randn(1, 3, 4000)
    with torch.no_grad():
        whole, conv = module.forward_window_keeping_conv(x, update_statistics=True)
    readout = torch.randn(LAYER.channels, stop - first)

    def output_and_gradients(**kwargs: torch.Tensor) -> list[torch.Tensor]:
        module.zero_grad()
        output = module.forward_frames(x, first, stop, **kwargs)
        (output[0] * readout).sum().backward()
        return [output.detach(), module.conv.weight.grad.clone(), module.conv.bias.grad.clone()]

    recomputed, reused = output_and_gradients(), output_and_gradients(conv=conv)
    assert torch.allclose(reused[0], whole[..., first:stop], atol=1e-5)
    for a, b in zip(recomputed, reused):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    assert reused[1].abs().max() > 0


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(8, 4, 2), (4, 2, 2), (4, 2, 1)])
@pytest.mark.parametrize("norm", ["window", "time"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.25, 0.75)])
def test_residual_recompute_equals_the_window_pass_at_the_edges_too(
    kernel: int, stride: int, padding: int, norm: str, weights: tuple[float, float]
) -> None:
    """The GIM stack's upper layers: the skip path pads or trims the input ends as the layer does,
    the output weighs the plain module's output and the skip path by ``weights``, and the recompute
    of any frame range (the ends included) equals the window pass."""
    torch.manual_seed(0)
    layer = ConvLayerConfig(channels=6, kernel=kernel, stride=stride, padding=padding)
    module = ConvModule(6, layer, norm=norm, momentum=0.05, residual_weights=weights)
    x = torch.rand(1, 6, 257)
    whole = module.forward_window(x, update_statistics=True)
    frames = module.output_frames(257)
    assert whole.shape == (1, 6, frames)
    for first, stop in [(0, 9), (frames // 3, frames // 2), (frames - 9, frames)]:
        assert torch.allclose(module.forward_frames(x, first, stop), whole[..., first:stop], atol=1e-5)
    plain = ConvModule(6, layer, norm=norm, momentum=0.05)
    plain.load_state_dict(module.state_dict())
    own, other = weights
    assert torch.allclose(whole - own * plain.forward_window(x, update_statistics=True), other * module.skip(x), atol=1e-5)
    assert torch.equal(module.skip(x, 3, frames - 2), module.skip(x)[..., 3 : frames - 2])


@pytest.mark.parametrize("norm", ["window", "time"])
def test_a_centred_skip_path_loses_its_running_mean_and_the_module_scores_its_own_output(norm: str) -> None:
    """``centre_skip``: output = own + skip - running_skip_mean (the first window's mean, then a running mean
    with weight ``momentum``; inference leaves it as it is); ``forward_frames(skip=False)`` recomputes
    the own part, with the skip path the whole output."""
    torch.manual_seed(0)
    layer = ConvLayerConfig(channels=6, kernel=4, stride=2, padding=1)
    module = ConvModule(6, layer, norm=norm, momentum=0.25, residual_weights=(1.0, 1.0), centre_skip=True)
    first, second = torch.rand(1, 6, 101), torch.rand(1, 6, 101) + 1.0
    module.forward_window(first, update_statistics=True)
    assert torch.allclose(module.running_skip_mean, module.skip(first).mean(dim=2)[0])
    own, output, _ = module.forward_window_parts(second, update_statistics=True)
    expected_mean = torch.lerp(module.skip(first).mean(dim=2)[0], module.skip(second).mean(dim=2)[0], 0.25)
    assert torch.allclose(module.running_skip_mean, expected_mean)
    assert torch.allclose(output, own + module.skip(second) - expected_mean[:, None], atol=1e-6)
    assert torch.allclose(module.forward_frames(second, 5, 30, skip=False), own[..., 5:30], atol=1e-5)
    assert torch.allclose(module.forward_frames(second, 5, 30), output[..., 5:30], atol=1e-5)
    module.forward_window(first, update_statistics=False)
    assert torch.allclose(module.running_skip_mean, expected_mean)


def test_residual_skip_is_the_mean_of_the_centre_of_each_receptive_field() -> None:
    """Kernel 4, stride 2, padding 2: output frame j reads input frames [2j - 2, 2j + 2); its skip is
    the mean of frames 2j - 1 and 2j (zero before the first frame)."""
    module = ConvModule(1, ConvLayerConfig(channels=1, kernel=4, stride=2, padding=2), norm="none", momentum=0.05, residual_weights=(1.0, 1.0))
    x = torch.arange(1.0, 8.0)[None, None, :]  # frames 0..6 hold 1..7
    assert module.output_frames(7) == 4
    assert module.skip(x)[0, 0].tolist() == [0.5, 2.5, 4.5, 6.5]


def test_residual_needs_as_many_inputs_as_outputs() -> None:
    with pytest.raises(ValueError, match="residual needs"):
        ConvModule(3, LAYER, norm="window", momentum=0.05, residual_weights=(1.0, 1.0))


def test_inference_reuses_its_cast_weights_only_while_the_weights_are_unchanged() -> None:
    """bfloat16 products: inference (without autograd, as ``embed``) keeps the weights' bfloat16
    copy, and an optimiser step, a loaded state or a replaced tensor makes the next inference use
    the new weights."""
    torch.manual_seed(0)
    module = ConvModule(3, LAYER, norm="window", momentum=0.05, product_dtype=torch.bfloat16)
    x = torch.randn(1, 3, 400)

    def fresh() -> torch.Tensor:  # the same module without a kept copy
        other = ConvModule(3, LAYER, norm="window", momentum=0.05, product_dtype=torch.bfloat16)
        other.load_state_dict(module.state_dict())
        return other.forward_window(x, update_statistics=False)

    with torch.no_grad():
        first = module.forward_window(x, update_statistics=False)
        assert torch.equal(first, fresh()) and module._cast is not None
        module.conv.weight.add_(0.5)  # in place, as Adam steps
        assert torch.equal(module.forward_window(x, update_statistics=False), fresh())
        module.load_state_dict({**module.state_dict(), "conv.bias": torch.randn(LAYER.channels)})
        assert torch.equal(module.forward_window(x, update_statistics=False), fresh())
        module.conv.weight = torch.nn.Parameter(torch.randn_like(module.conv.weight))
        assert torch.equal(module.forward_window(x, update_statistics=False), fresh())
        assert not torch.equal(first, fresh())
        learning = ConvModule(3, LAYER, norm="window", momentum=0.05, product_dtype=torch.bfloat16)
        learning.forward_window(x, update_statistics=True)
        assert learning._cast is None  # learning never keeps a copy: its weights change every step
