"""One gradient-isolated module of the video encoder: Conv2d -> normalisation -> ReLU -> max-pool."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from online_gim.video.config import Conv2dLayerConfig

_EPS = 1e-5


class VideoConvModule(nn.Module):
    """Conv2d, a normalisation that keeps every unit alive, ReLU, then max-pooling.

    Normalisations (``norm``):
        ``time``: each channel standardised by running statistics of its pre-activation over the
        frames and pixels of past windows (buffers ``running_mean``/``running_var``, an exponential
        moving average with weight ``momentum`` for the newest window; the first window sets
        them). The statistics are constants for the gradient. This is the audio modules' ``time``
        norm (:class:`online_gim.conv.ConvModule`) over frames x pixels, computed by
        ``torch.nn.functional.batch_norm``.
        ``none``: plain Conv2d + ReLU.

    Every frame is encoded on its own: output frame ``t`` depends on input frame ``t`` only.

    Parameters:
        in_channels: channels of the input frames.
        layer: the layer's shape.
        norm: ``time`` or ``none``.
        momentum: weight of the newest window in the running statistics.
    """

    def __init__(
        self, in_channels: int, layer: Conv2dLayerConfig, *, norm: str, momentum: float, encoding: str
    ) -> None:
        super().__init__()
        self.layer = layer
        self.norm = norm
        self.encoding = encoding
        self.momentum = momentum
        self.conv = nn.Conv2d(in_channels, layer.channels, layer.kernel, stride=layer.stride, padding=layer.padding)
        self.register_buffer("running_mean", torch.zeros(layer.channels))
        self.register_buffer("running_var", torch.ones(layer.channels))
        self.register_buffer("stats_initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("pooled_mean", torch.zeros(layer.channels))
        self.register_buffer("pooled_var", torch.ones(layer.channels))

    @property
    def out_channels(self) -> int:
        return self.layer.channels

    @torch.no_grad()
    def _update(self, tensor: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Folds ``tensor`` ``(N, C, ...)`` into running per-channel statistics (the first window sets them)."""
        momentum = self.momentum if bool(self.stats_initialised) else 1.0
        F.batch_norm(tensor.detach(), mean, var, training=True, momentum=momentum, eps=_EPS)

    def forward(self, x: torch.Tensor, *, update_statistics: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes a window of frames (with autograd if enabled by the caller).

        Args:
            x: ``(T, C_in, H, W)`` frames.
            update_statistics: fold this window into the running statistics first (learning);
                ``False`` for pure inference.
        Returns:
            ``(T, C, H', W')`` feature maps, ``H' = ((H + 2 p - k) // s + 1) // pool`` (likewise
            ``W'``), and ``(T, C)`` the frame encodings: the feature maps averaged over the pixels.
        """
        pre = self.conv(x)
        if self.norm == "time" and update_statistics:
            self._update(pre, self.running_mean, self.running_var)
        if self.norm == "time":
            pre = F.batch_norm(pre, self.running_mean, self.running_var, training=False, eps=_EPS)
        out = torch.relu(pre)
        out = F.max_pool2d(out, self.layer.pool) if self.layer.pool > 1 else out
        pooled = out.mean(dim=(2, 3))
        if self.encoding != "mean" and update_statistics:
            self._update(pooled, self.pooled_mean, self.pooled_var)
        if update_statistics:
            self.stats_initialised.fill_(True)
        if self.encoding == "standardised":
            pooled = F.batch_norm(pooled, self.pooled_mean, self.pooled_var, training=False, eps=_EPS)
        elif self.encoding == "direction":
            pooled = F.normalize(pooled - self.pooled_mean, dim=1) * math.sqrt(pooled.shape[1])
        return out, pooled
