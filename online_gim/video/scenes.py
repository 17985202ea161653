"""Synthetic multi-scene videos with known scene labels, for the frame-retrieval check.

Every scene is a large procedural image (a "world": a grating, a checkerboard, coloured blobs,
rings, smooth noise or a gradient with boxes, with parameters drawn from ``world_seed``) that a
virtual camera pans across and zooms into for ``seconds_per_scene`` (a smooth random path drawn
from ``camera_seed``). Two renderings with the same ``world_seed`` and different ``camera_seed``
show the same scenes through different views: one to learn from, one to hold out.

Usage::

    video = write_scene_video(tmp / "scenes.mp4", scenes=6, seconds_per_scene=3, size=(48, 64))
    labels = video.scene_labels()            # (frames,) scene of every frame
    held_out = render_scenes(scenes=6, seconds_per_scene=3, size=(48, 64), camera_seed=1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

WORLD_KINDS = ("grating", "checker", "blobs", "rings", "noise", "boxes")
"""The procedural image kinds; scene ``s`` is of kind ``WORLD_KINDS[s % 6]``."""

_WORLD = 192
"""Side of a world image in pixels."""


@dataclass(frozen=True)
class SceneVideo:
    """A written multi-scene video.

    Attributes:
        path: the file (H.264 or MPEG-4 in mp4).
        scenes: number of scenes, shown in order.
        frames_per_scene: frames of every scene.
        frame_rate: frames per second.
        size: ``(height, width)`` of the frames.
    """

    path: Path
    scenes: int
    frames_per_scene: int
    frame_rate: float
    size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return self.scenes * self.frames_per_scene

    def scene_labels(self) -> np.ndarray:
        """``(frames,)`` int64 scene index of every frame."""
        return np.repeat(np.arange(self.scenes), self.frames_per_scene)


def _grid(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.linspace(-1.0, 1.0, side)
    return torch.meshgrid(axis, axis, indexing="ij")


def _colours(generator: torch.Generator, count: int) -> torch.Tensor:
    return torch.rand(count, 3, 1, 1, generator=generator) * 0.8 + 0.1


def make_world(scene: int, *, world_seed: int) -> torch.Tensor:
    """The world image of scene ``scene``: ``(3, 192, 192)`` float in [0, 1]."""
    generator = torch.Generator().manual_seed(world_seed * 1009 + scene)
    kind = WORLD_KINDS[scene % len(WORLD_KINDS)]
    y, x = _grid(_WORLD)
    low, high = _colours(generator, 2)
    rand = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    if kind == "grating":
        angle, frequency = rand() * math.pi, 4 + rand() * 8
        mix = 0.5 + 0.5 * torch.sin(2 * math.pi * frequency * (x * math.cos(angle) + y * math.sin(angle)))
    elif kind == "checker":
        cells, angle = 4 + rand() * 8, rand() * math.pi / 2
        u, v = x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)
        mix = ((torch.floor(u * cells) + torch.floor(v * cells)) % 2).float()
    elif kind == "blobs":
        centres = torch.rand(24, 2, generator=generator) * 2 - 1
        widths = 0.05 + torch.rand(24, generator=generator) * 0.15
        colours = _colours(generator, 24)[:, :, 0, 0]
        weights = torch.exp(-((y[None] - centres[:, 0, None, None]) ** 2 + (x[None] - centres[:, 1, None, None]) ** 2) / (2 * widths[:, None, None] ** 2))
        image = torch.einsum("bhw,bc->chw", weights, colours)
        return (low * 0.3 + image).clamp(0, 1)
    elif kind == "rings":
        cy, cx, frequency = rand() - 0.5, rand() - 0.5, 3 + rand() * 6
        mix = 0.5 + 0.5 * torch.cos(2 * math.pi * frequency * torch.sqrt((y - cy) ** 2 + (x - cx) ** 2))
    elif kind == "noise":
        coarse = torch.rand(1, 1, 6 + int(rand() * 6), 6 + int(rand() * 6), generator=generator)
        mix = F.interpolate(coarse, size=(_WORLD, _WORLD), mode="bicubic", align_corners=False)[0, 0].clamp(0, 1)
    else:  # boxes on a gradient
        angle = rand() * 2 * math.pi
        mix = (0.5 + 0.5 * (x * math.cos(angle) + y * math.sin(angle))).clamp(0, 1)
        image = low * (1 - mix) + high * mix
        for colour, box in zip(_colours(generator, 8), torch.rand(8, 4, generator=generator)):
            top, left = int(box[0] * _WORLD * 0.8), int(box[1] * _WORLD * 0.8)
            image[:, top : top + 8 + int(box[2] * 32), left : left + 8 + int(box[3] * 32)] = colour
        return image
    return low * (1 - mix) + high * mix


def camera_path(frames: int, *, cycles: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """A smooth pan-and-zoom path with lighting: ``(frames, 4)`` of (centre y, centre x, zoom,
    contrast). Centre and zoom are in the world's normalised coordinates ([-1, 1]); ``zoom`` is the
    share of the world's side in view (0.3 .. 0.9) and the view stays inside the world; ``contrast``
    (0.4 .. 1) scales the image's deviation from mid-gray. Every coordinate oscillates between
    ``cycles[0]`` and ``cycles[1]`` times over the ``frames`` (its own number, drawn uniformly)."""
    cycles = cycles[0] + (cycles[1] - cycles[0]) * torch.rand(4, generator=generator)
    phase = torch.rand(4, generator=generator) * 2 * math.pi
    t = torch.linspace(0.0, 1.0, frames)[:, None]
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * cycles * t + phase)  # (frames, 4) in [0, 1]
    zoom = 0.3 + 0.6 * wave[:, 2]
    room = 1.0 - zoom
    centre = (wave[:, :2] * 2 - 1) * room[:, None]
    contrast = 0.4 + 0.6 * wave[:, 3]
    return torch.cat([centre, zoom[:, None], contrast[:, None]], dim=1)


def render_scenes(
    *, scenes: int, seconds_per_scene: float, frame_rate: float = 25.0, size: tuple[int, int] = (48, 64),
    world_seed: int = 0, camera_seed: int = 0, view_hz: tuple[float, float] = (1.0, 2.5), gray: bool = False,
) -> torch.Tensor:
    """The frames of a multi-scene video: ``(scenes * frames_per_scene, C, H, W)`` float in [0, 1],
    ``frames_per_scene = round(seconds_per_scene * frame_rate)``, scene after scene; ``C`` = 3,
    or 1 with ``gray`` (BT.601 luminance, as FFmpeg's gray conversion).

    ``view_hz``: the range of the oscillation frequencies (per second) of the camera's pan, zoom
    and contrast (see :func:`camera_path`). Views that change faster than the scenes do are what
    a temporal learner can learn to ignore; an untrained encoder cannot."""
    frames = round(seconds_per_scene * frame_rate)
    if scenes < 1 or frames < 1:
        raise ValueError("scenes and seconds_per_scene * frame_rate must be at least 1")
    height, width = size
    generator = torch.Generator().manual_seed(camera_seed)
    rendered = []
    for scene in range(scenes):
        world = make_world(scene, world_seed=world_seed)[None].expand(frames, -1, -1, -1)
        cycles = (view_hz[0] * seconds_per_scene, view_hz[1] * seconds_per_scene)
        path = camera_path(frames, cycles=cycles, generator=generator)
        aspect = width / height
        theta = torch.zeros(frames, 2, 3)
        theta[:, 0, 0] = path[:, 2] * min(1.0, aspect)  # x scale
        theta[:, 1, 1] = path[:, 2] * min(1.0, 1 / aspect)  # y scale
        theta[:, 0, 2], theta[:, 1, 2] = path[:, 1], path[:, 0]
        grid = F.affine_grid(theta, [frames, 3, height, width], align_corners=False)
        view = F.grid_sample(world, grid, mode="bilinear", align_corners=False)
        rendered.append(0.5 + (view - 0.5) * path[:, 3, None, None, None])
    frames = torch.cat(rendered).clamp(0, 1)
    if gray:
        frames = torch.einsum("nchw,c->nhw", frames, torch.tensor([0.299, 0.587, 0.114]))[:, None]
    return frames


def write_scene_video(
    path: str | Path, *, scenes: int = 6, seconds_per_scene: float = 3.0, frame_rate: int = 25,
    size: tuple[int, int] = (48, 64), world_seed: int = 0, camera_seed: int = 0,
    view_hz: tuple[float, float] = (1.0, 2.5),
) -> SceneVideo:
    """Renders :func:`render_scenes` and encodes it with PyAV (MPEG-4 part 2, high quality, in an
    mp4 container); ``size`` must be even (yuv420p)."""
    import av

    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"size must be even for yuv420p, got {size}")
    frames = render_scenes(
        scenes=scenes, seconds_per_scene=seconds_per_scene, frame_rate=frame_rate, size=size,
        world_seed=world_seed, camera_seed=camera_seed, view_hz=view_hz,
    )
    pixels = (frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=frame_rate)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        stream.codec_context.qmax = 4
        for image in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return SceneVideo(path, scenes, frames.shape[0] // scenes, float(frame_rate), size)
