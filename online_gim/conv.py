"""One gradient-isolated conv module of the audio encoder: Conv1d -> normalisation -> ReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from online_gim.config import ConvLayerConfig

_EPS = 1e-5


def _channel_statistics(pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, C, T)`` pre-activations -> each channel's ``(C,)`` mean and (biased) variance over time.

    Two passes (the mean, then the mean square of the centred values): as exact as ``Tensor.var``
    and about ten times faster on CPU."""
    mean = pre.mean(dim=2, keepdim=True)
    centred = pre - mean
    return mean.view(-1), (centred * centred).mean(dim=2).view(-1)


def _standardise(pre: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``(1, C, T)`` pre-activations standardised per channel by ``(C,)`` statistics."""
    return (pre - mean[:, None]) * torch.rsqrt(var[:, None] + _EPS)


def _window_normalise(pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``window`` norm and ReLU of ``(1, C, T)`` pre-activations (float32 or bfloat16): returns the
    float32 ``(1, C, T)`` output and the ``(C,)`` mean and variance used (summed in float32).
    Differentiable through the statistics; without autograd the output is computed in place of one
    temporary (``pre`` is left as it is)."""
    if torch.is_grad_enabled() and pre.requires_grad:
        mean = pre.float().mean(dim=2, keepdim=True)
        centred = pre.float() - mean
        var = (centred * centred).mean(dim=2, keepdim=True)
        output = torch.relu(centred * torch.rsqrt(var + _EPS))
    else:
        centred = pre.to(torch.float32, copy=True)
        mean = centred.mean(dim=2, keepdim=True)
        var = torch.linalg.vector_norm(centred.sub_(mean), dim=2, keepdim=True).square_().div_(pre.shape[2])
        output = centred.mul_(torch.rsqrt(var + _EPS)).relu_()
    return output, mean.view(-1), var.view(-1)


@torch.no_grad()
def _fold_running(
    pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...], initialised: torch.Tensor, momentum: float, *, replace: bool
) -> None:
    """Folds each ``(running, value)`` pair of same-shape tensors: ``value`` copied into ``running``
    on the first window (``initialised`` false, then set) or with ``replace``, else ``running``
    moved towards it with weight ``momentum``."""
    first = not bool(initialised)
    for running, value in pairs:
        if first or replace:
            running.copy_(value)
        else:
            running.lerp_(value, momentum)
    initialised.fill_(True)


class _ConvWithKnownOutput(torch.autograd.Function):
    """A stride-``s`` Conv1d (no padding) whose output is already known, e.g. a slice of the window
    pass: forward returns (a copy of) that output, backward the weight and bias gradients of the
    convolution of ``x``, as autograd of ``F.conv1d(x, weight, bias, stride)`` would. No gradient
    for ``x``. Saves recomputing a convolution that the forward pass already did."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int):
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return output.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad.contiguous(), x, weight, [weight.shape[0]], [ctx.stride], [0], [1], False, [0], 1, [False, True, True]
        )
        return None, None, grad_weight, grad_bias, None


class ConvModule(nn.Module):
    """Conv1d, then a normalisation that keeps every unit alive, then ReLU.

    Normalisations (``norm``):
        ``time``: each channel standardised by running statistics over time, an exponential
        moving average of the per-window mean and variance of its pre-activation (buffers
        ``running_mean``/``running_var``, updated by :meth:`forward_window`; no gradient flows
        through them). Homeostasis: every unit fires on about half of the frames.
        ``window``: each channel standardised by the mean and variance of its pre-activation over
        the input being encoded (a training window, or the whole audio at inference: instance
        normalisation over time). Constant per-channel offsets of a window (level, channel, much
        of the speaker's long-term spectrum) are removed at every module, so a module can only
        encode how its input varies within the window, and every unit fires on about half of
        every window's frames. :meth:`forward_window` differentiates through the statistics
        (what end-to-end training back-propagates through: with them held constant, the e2e
        baselines collapsed to speaker identity, docs/stability.md). :meth:`forward_frames`, the
        greedy sub-window recompute, normalises with the stored statistics of the window and
        differentiates through the statistics of the recomputed frames (a straight-through
        estimate of how the window's statistics move with the weights; with the statistics held
        constant the greedy modules lost phone information, docs/eval/learning-curve.md).
        ``frame``: each frame standardised across channels (CPC_audio's ChannelNorm, no affine).
        ``none``: plain Conv1d + ReLU.

    Frames are local: output frame ``j`` depends on input frames ``[j*stride - padding,
    j*stride - padding + kernel)`` only (given the statistics), so a sub-range of output frames
    can be recomputed from a slice of the input (:meth:`forward_frames`).

    Parameters:
        in_channels: channels of the input.
        layer: the Conv1d's shape.
        norm: ``window``, ``time``, ``frame`` or ``none``.
        momentum: weight of the newest window in the running statistics (``time``).
        product_dtype: the number type the convolution multiplies in (``torch.bfloat16``: input
            and weights rounded to bfloat16, sums in float32, output returned as float32; the
            weight gradient of the greedy recompute stays float32).
        residual_weights: ``(a, b)``: the output is ``a`` times the module's own output (after
            the ReLU) plus ``b`` times the skip path :meth:`skip`, the mean of the ``stride`` input
            frames at the centre of each output frame's receptive field (needs ``in_channels ==
            layer.channels``; no parameters, no gradient to the input here because the greedy
            stack detaches it). ``None`` (default): no skip path.
        centre_skip: with a skip path, subtract from it a running per-channel mean of the skip
            path (buffer ``running_skip_mean``, folded in with weight ``momentum`` while learning,
            the first window's as it is), so that the sum up the stack does not grow a constant
            offset; and the module scores only its own output (:meth:`forward_frames` with
            ``skip=False``, the ``own`` output of :meth:`forward_window_parts`): it learns what it
            adds to the stream of the modules below.

    For ``time`` and ``window`` the buffers ``running_mean``/``running_var`` hold the statistics in
    use (for ``window``: those of the newest window, so that :meth:`forward_frames` of the window
    being learned normalises exactly like :meth:`forward_window` did).
    """

    def __init__(
        self,
        in_channels: int,
        layer: ConvLayerConfig,
        *,
        norm: str,
        momentum: float,
        product_dtype: torch.dtype = torch.float32,
        residual_weights: tuple[float, float] | None = None,
        centre_skip: bool = False,
    ) -> None:
        super().__init__()
        if residual_weights is not None and in_channels != layer.channels:
            raise ValueError(f"residual needs as many input channels as outputs, got {in_channels} -> {layer.channels}")
        self.layer = layer
        self.residual_weights = residual_weights
        self.centre_skip = centre_skip and residual_weights is not None
        self._cast: tuple[torch.Tensor, torch.Tensor] | None = None  # inference's weights in product_dtype
        self._cast_key: tuple[int, ...] | None = None
        self.norm = norm
        self.momentum = momentum
        self.product_dtype = product_dtype
        self.conv = nn.Conv1d(in_channels, layer.channels, layer.kernel, stride=layer.stride, padding=0)
        self.register_buffer("running_mean", torch.zeros(layer.channels))
        self.register_buffer("running_var", torch.ones(layer.channels))
        self.register_buffer("stats_initialised", torch.zeros((), dtype=torch.bool))
        if self.centre_skip:
            self.register_buffer("running_skip_mean", torch.zeros(layer.channels))
            self.register_buffer("skip_initialised", torch.zeros((), dtype=torch.bool))

    @property
    def out_channels(self) -> int:
        return self.layer.channels

    def _input_slice(self, x: torch.Tensor, first: int, stop: int) -> torch.Tensor:
        """The ``(1, C_in, (stop - 1) * stride + kernel - first * stride)`` slice of the zero-padded
        input that output frames ``[first, stop)`` read (padding only the ends it reaches)."""
        stride, kernel, padding = self.layer.stride, self.layer.kernel, self.layer.padding
        begin, end = first * stride - padding, (stop - 1) * stride + kernel - padding
        inside = x[..., max(begin, 0) : min(end, x.shape[-1])]
        left, right = max(-begin, 0), max(end - x.shape[-1], 0)
        return F.pad(inside, (left, right)) if left or right else inside

    def _convolve(self, x: torch.Tensor, padding: int, *, keep_cast_weights: bool = False) -> torch.Tensor:
        """The Conv1d over a ``(1, C_in, T_in)`` input with ``padding`` zeros at both ends, in
        (and returned as) ``product_dtype``. ``keep_cast_weights`` (inference): the weights' copy in
        ``product_dtype`` is kept and reused until the weights change, instead of cast anew."""
        weight, bias = self.conv.weight, self.conv.bias
        if self.product_dtype == weight.dtype:
            return F.conv1d(x, weight, bias, stride=self.layer.stride, padding=padding)
        if keep_cast_weights and not (torch.is_grad_enabled() and weight.requires_grad):
            weight, bias = self._cast_weights()
        else:
            weight, bias = weight.to(self.product_dtype), bias.to(self.product_dtype)
        return F.conv1d(x.to(self.product_dtype), weight, bias, stride=self.layer.stride, padding=padding)

    def _cast_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight and bias in ``product_dtype``, cast again only when either changed (an
        optimiser step or a loaded state bumps their version or replaces their storage)."""
        weight, bias = self.conv.weight, self.conv.bias
        key = (weight._version, bias._version, weight.data_ptr(), bias.data_ptr())
        if self._cast_key != key:
            self._cast = (weight.detach().to(self.product_dtype), bias.detach().to(self.product_dtype))
            self._cast_key = key
        return self._cast

    def _normalise_and_rectify(self, pre: torch.Tensor) -> torch.Tensor:
        """``(1, C, T)`` pre-activations -> ``(1, C, T)`` outputs (``time``, ``frame``, ``none``)."""
        if self.norm == "time":
            pre = _standardise(pre, self.running_mean, self.running_var)
        elif self.norm == "frame":
            mean = pre.mean(dim=1, keepdim=True)
            var = pre.var(dim=1, keepdim=True, unbiased=False)
            pre = (pre - mean) * torch.rsqrt(var + _EPS)
        return torch.relu(pre)

    def _fold_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Stores a window's ``(C,)`` per-channel mean and variance: as they are (``window``, or the
        first window), else folded into the running averages with weight ``momentum``."""
        _fold_running(
            ((self.running_mean, mean), (self.running_var, var)), self.stats_initialised, self.momentum,
            replace=self.norm == "window",
        )

    def forward_window(self, x: torch.Tensor, *, update_statistics: bool) -> torch.Tensor:
        """Runs the module on a whole window (with autograd if enabled by the caller).

        Args:
            x: ``(1, C_in, T_in)`` input.
            update_statistics: fold this window into the running statistics first (learning);
                ``False`` for pure inference (``window`` norm uses the input's own statistics
                either way, and only stores them when learning; the weights' copy in
                ``product_dtype`` is kept for the next inference, about 10 MiB for the default
                stack in bfloat16).
        Returns:
            ``(1, C, T)`` output, ``T = (T_in + 2*padding - kernel) // stride + 1``.
        """
        return self.forward_window_keeping_conv(x, update_statistics=update_statistics)[0]

    def forward_window_keeping_conv(self, x: torch.Tensor, *, update_statistics: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_window`, also returning the ``(1, C, T)`` conv output before the
        normalisation, in ``product_dtype`` (what :meth:`forward_frames` can reuse instead of
        convolving again)."""
        _, output, pre = self.forward_window_parts(x, update_statistics=update_statistics)
        return output, pre

    def forward_window_parts(self, x: torch.Tensor, *, update_statistics: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward_window_keeping_conv` with the module's own ``(1, C, T)`` output before the
        skip path: ``(own, output, conv)``. ``own`` keeps its values only with ``centre_skip``
        while learning (``update_statistics``: the module scores ``own``; the sum is made in the
        skip path's storage); otherwise the skip path may have been added into its storage (read
        ``output``)."""
        pre = self._convolve(x, self.layer.padding, keep_cast_weights=not update_statistics)
        skip = self.skip(x) if self.residual_weights is not None else None
        if self.centre_skip and update_statistics:
            self._fold_skip_mean(skip.detach().mean(dim=2).view(-1))
        if self.norm == "window":
            own, mean, var = _window_normalise(pre)
            if update_statistics:
                self._fold_statistics(mean.detach(), var.detach())
        else:
            pre = pre.float()
            if self.norm == "time" and update_statistics:
                self._fold_statistics(*_channel_statistics(pre.detach()))
            own = self._normalise_and_rectify(pre)
        if skip is None:
            return own, own, pre
        if self.centre_skip:  # while learning, the sum goes into the skip path's storage: own stays as it is
            return own, self._add_skip(own, skip.sub_(self.running_skip_mean[:, None]), into_skip=update_statistics), pre
        return own, self._add_skip(own, skip), pre

    def _fold_skip_mean(self, mean: torch.Tensor) -> None:
        """Folds a window's ``(C,)`` skip-path mean into ``running_skip_mean``: as it is on the first
        window, else with weight ``momentum``."""
        _fold_running(((self.running_skip_mean, mean),), self.skip_initialised, self.momentum, replace=False)

    def _add_skip(self, output: torch.Tensor, skip: torch.Tensor, *, into_skip: bool = False) -> torch.Tensor:
        """``a * output + b * skip`` of two ``(1, C, T)`` tensors, ``(a, b)`` the residual weights:
        where autograd does not need them, in place of ``output`` (or of ``skip`` with
        ``into_skip``, leaving ``output`` as it is)."""
        own, other = self.residual_weights
        if torch.is_grad_enabled() and (output.requires_grad or skip.requires_grad):
            return (output if own == 1.0 else output * own) + (skip if other == 1.0 else skip * other)
        if into_skip:
            if other != 1.0:
                skip.mul_(other)
            return skip.add_(output, alpha=own)
        if own != 1.0:
            output.mul_(own)
        return output.add_(skip, alpha=other)

    def skip(self, x: torch.Tensor, first: int = 0, stop: int | None = None) -> torch.Tensor:
        """The residual path of a ``(1, C, T_in)`` input for output frames ``[first, stop)`` (default:
        all): ``(1, C, stop - first)``, frame ``j`` the mean of input frames ``[j*stride + o,
        (j+1)*stride + o)`` with ``o = (kernel - stride) // 2 - padding`` (the centre of frame
        ``j``'s receptive field; zeros beyond the input's ends, as the conv pads)."""
        stride = self.layer.stride
        stop = self.output_frames(x.shape[2]) if stop is None else stop
        offset = (self.layer.kernel - stride) // 2 - self.layer.padding
        begin, end = first * stride + offset, stop * stride + offset  # input frames read
        inside = x[..., max(0, begin) : min(end, x.shape[2])]
        if begin < 0 or end > x.shape[2]:
            inside = F.pad(inside, (max(0, -begin), max(0, end - x.shape[2])))
        total = inside[..., 0::stride].clone()  # strided sums: about 5x faster than F.avg_pool1d on CPU
        for phase in range(1, stride):
            total.add_(inside[..., phase::stride])
        return total.div_(stride)

    def forward_frames(
        self, x: torch.Tensor, first: int, stop: int, *, conv: torch.Tensor | None = None, skip: bool = True
    ) -> torch.Tensor:
        """Recomputes output frames ``[first, stop)`` from the slice of the input they read.

        Args:
            x: ``(1, C_in, T_in)`` the whole input window.
            first, stop: output frame range.
            conv: the window's ``(1, C, T)`` conv output from :meth:`forward_window_keeping_conv`
                with the current weights; its frames are reused instead of convolving the slice
                again (same values; the weight gradient is still that of the slice's convolution).
            skip: add the skip path (if the module has one); ``False``: the module's own output.
        Returns:
            ``(1, C, stop - first)``, equal to ``forward_window(x)[..., first:stop]``. For ``window``
            norm its gradient also flows through the mean and variance of the recomputed
            pre-activations (their values are replaced by the window's): with ``[first, stop)``
            the whole window it is exactly ``forward_window``'s gradient.
        """
        inputs = self._input_slice(x, first, stop)
        if conv is None:
            pre = self._convolve(inputs, 0).float()
        else:
            pre = _ConvWithKnownOutput.apply(
                conv[..., first:stop].float(), inputs, self.conv.weight, self.conv.bias, self.layer.stride
            )
        if self.norm != "window":
            output = self._normalise_and_rectify(pre)
        else:
            mean, var = _channel_statistics(pre)
            mean = self.running_mean + (mean - mean.detach())  # the window's value, the recompute's gradient
            var = self.running_var + (var - var.detach())
            output = torch.relu(_standardise(pre, mean, var))
        if self.residual_weights is None or not skip:
            return output
        path = self.skip(x, first, stop)
        return self._add_skip(output, path.sub_(self.running_skip_mean[:, None]) if self.centre_skip else path)

    def output_frames(self, input_frames: int) -> int:
        return (input_frames + 2 * self.layer.padding - self.layer.kernel) // self.layer.stride + 1
