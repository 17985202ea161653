"""What the learner has learned, window by window: ``/v1/status``, ``/v1/embeddings/latest``,
``/v1/probes/latest`` and ``/v1/neighbors`` (the only call into the learner: a FAISS search of one
module's memory, in a worker thread)."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

import torch
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from online_gim.jsonable import finite_or_none
from online_gim.report import ModuleReport
from online_gim.services.api_models import (
    MAX_EMBEDDING_FRAMES,
    Embeddings,
    ModuleStatus,
    Neighbor,
    Neighbors,
    NeighborsRequest,
    PhoneFrame,
    Probes,
    SpeakerGuess,
    Status,
    VideoStatus,
)
from online_gim.services.live import LiveBoard, memory_sizes
from online_gim.services.routes import ERRORS, module_index, require_snapshot
from online_gim.streams.window import FRAME_SAMPLES, SAMPLE_RATE, UNKNOWN_LABEL


def learner_routes(board: LiveBoard) -> APIRouter:
    router = APIRouter(tags=["v1"])

    @router.get("/v1/status", response_model=Status, summary="Source, stream time, counters, losses, config")
    async def status() -> Status:
        return _status(board)

    @router.get(
        "/v1/embeddings/latest", response_model=Embeddings, responses=ERRORS,
        summary="The newest frame embeddings of one module",
    )
    async def embeddings_latest(
        module: int | None = Query(None, ge=0, le=63, description="Module index; default: the top module."),
        frames: int = Query(16, ge=1, le=MAX_EMBEDDING_FRAMES, description="How many of the newest frames."),
        stream: Literal["audio", "video"] = Query(
            "audio", description="`video`: the video learner's (with `listen --source av`); one frame per video frame."
        ),
    ) -> Response:
        if stream == "video":
            body = _video_embeddings(board, module, frames)
        else:
            snap = require_snapshot(board)
            m = module_index(len(snap.embeddings), module)
            body = _embeddings_body(
                snap.embeddings[m], m, frames, model_step=snap.embedding_updates,
                window_start_seconds=snap.embedding_start / SAMPLE_RATE, hop_seconds=snap.hop_samples(m) / SAMPLE_RATE,
                times=lambda rows: snap.frame_seconds(m, rows),
            )
        # Built as JSON directly (the model above documents it): a 256 x 512 matrix through
        # pydantic validation would hold the GIL for long.
        return Response(json.dumps(body, separators=(",", ":"), allow_nan=False), media_type="application/json")

    @router.get(
        "/v1/probes/latest", response_model=Probes, responses=ERRORS,
        summary="Phones per 10 ms frame and speakers of the newest window, running probe accuracies",
    )
    async def probes_latest() -> Probes:
        snap = require_snapshot(board)
        readout = snap.probes
        if readout is None:
            raise HTTPException(404, "the learner has no probes, or they have not read a window yet")
        start = snap.window_start / SAMPLE_RATE
        top = readout.phone_top.tolist()
        prob = readout.phone_prob.tolist()
        labels = readout.phone_label.tolist() if readout.phone_label is not None else []
        frames = []
        for i, phone in enumerate(top):
            label = int(labels[i]) if i < len(labels) and int(labels[i]) != UNKNOWN_LABEL else None
            frames.append(PhoneFrame(
                time=start + i * FRAME_SAMPLES / SAMPLE_RATE,
                phone=int(phone),
                phone_name=board.phone_name(int(phone)),
                probability=finite_or_none(prob[i] if i < len(prob) else None),
                label=label,
                label_name=None if label is None else board.phone_name(label),
            ))
        known = [s for s in snap.frame_speakers if s is not None] if not snap.skipped else []
        return Probes(
            model_step=snap.updates,
            window_start_seconds=start,
            frames=frames,
            speakers=[SpeakerGuess(speaker=str(s), probability=finite_or_none(p) or 0.0) for s, p in readout.speaker_top],
            true_speaker=Counter(known).most_common(1)[0][0] if known else None,
            phone_accuracy=finite_or_none(readout.phone_accuracy),
            speaker_accuracy=finite_or_none(readout.speaker_accuracy),
        )

    @router.post(
        "/v1/neighbors", response_model=Neighbors, responses=ERRORS,
        summary="Nearest stored moments in a module's FAISS memory",
    )
    def neighbors(request: NeighborsRequest | None = None) -> Neighbors:
        request = request or NeighborsRequest()
        return _neighbors(board, request)

    return router


def _video_embeddings(board: LiveBoard, module: int | None, frames: int) -> dict[str, object]:
    """The body of ``/v1/embeddings/latest?stream=video``."""
    if board.video is None:
        raise HTTPException(404, "this process learns no video stream (run listen with --source av)")
    snap = board.video.snapshot
    if snap is None or not snap.embeddings:
        raise HTTPException(404, "no video window has been processed yet")
    m = module_index(len(snap.embeddings), module)
    return _embeddings_body(
        snap.embeddings[m], m, frames, model_step=snap.embedding_updates,
        window_start_seconds=snap.embedding_start / snap.frame_rate, hop_seconds=1.0 / snap.frame_rate,
        times=snap.frame_seconds,
    )


def _embeddings_body(
    emb: torch.Tensor, module: int, frames: int, *, model_step: int, window_start_seconds: float,
    hop_seconds: float, times: Callable[[range], list[float]],
) -> dict[str, object]:
    """The :class:`Embeddings` document of the newest ``frames`` rows of ``emb`` ``(window frames, channels)``;
    ``times(rows)`` gives the stream time of each row in ``rows``."""
    total = int(emb.shape[0])
    first = total - min(frames, total)
    return {
        "module": module,
        "model_step": model_step,
        "window_start_seconds": window_start_seconds,
        "channels": int(emb.shape[1]),
        "frames": total - first,
        "window_frames": total,
        "hop_seconds": hop_seconds,
        "times": times(range(first, total)),
        "values": _matrix(emb[first:].detach().to("cpu", torch.float32)),
    }


def _status(board: LiveBoard) -> Status:
    snap = board.snapshot
    ready, _ = board.readiness()
    uptime = time.time() - board.started_at
    video = _video_status(board)
    if snap is None:
        return Status(
            source=board.source, source_id=None, ready=ready, stream_seconds=None, source_seconds=None,
            windows_processed=0, windows_dropped=0, windows_skipped=0, samples_in=0, samples_dropped=0,
            real_time_factor=None, real_time_factor_mean=None, buffer_fill_ratio=None, source_lag_seconds=None,
            step=None, model_step=None, modules=[], config=board.config, uptime_seconds=uptime, video=video,
        )
    modules = [
        _module_status(rep, snap.embeddings, snap.memory_sizes.get(rep.module)) for rep in snap.modules
    ]
    c = snap.counters
    return Status(
        source=board.source,
        source_id=snap.source_id,
        ready=ready,
        stream_seconds=snap.stream_seconds,
        source_seconds=finite_or_none(c.get("source_seconds")),
        windows_processed=snap.seq,
        windows_dropped=int(c.get("windows_dropped", 0)),
        windows_skipped=snap.windows_skipped,
        samples_in=int(c.get("samples_in", 0)),
        samples_dropped=int(c.get("samples_dropped", 0)),
        real_time_factor=finite_or_none(snap.real_time_factor),
        real_time_factor_mean=finite_or_none(snap.real_time_factor_mean),
        buffer_fill_ratio=finite_or_none(snap.fill_ratio),
        source_lag_seconds=finite_or_none(snap.lag_seconds),
        step=snap.step,
        model_step=snap.updates,
        modules=modules,
        config=board.config,
        uptime_seconds=uptime,
        video=video,
    )


def _video_status(board: LiveBoard) -> VideoStatus | None:
    """The video learner's part of ``/v1/status`` (``None`` when the process learns no video)."""
    if board.video is None:
        return None
    snap = board.video.snapshot
    if snap is None:
        return VideoStatus(
            source_id=board.video.source_id, windows_processed=0, stream_seconds=None, window_frames=None,
            skipped=None, real_time_factor=None, model_step=None, modules=[],
        )
    return VideoStatus(
        source_id=board.video.source_id,
        windows_processed=snap.seq,
        stream_seconds=(snap.start_frame + snap.frames) / snap.frame_rate,
        window_frames=snap.frames,
        skipped=snap.skipped,
        real_time_factor=finite_or_none(snap.real_time_factor),
        model_step=snap.updates,
        modules=[_module_status(rep, snap.embeddings, None) for rep in snap.modules],
    )


def _module_status(rep: ModuleReport, embeddings: tuple[torch.Tensor, ...], memory_vectors: int | None) -> ModuleStatus:
    """One module's line of ``/v1/status``; ``embeddings`` are the stack's newest ``(frames, channels)`` outputs."""
    emb = embeddings[rep.module] if rep.module < len(embeddings) else None
    return ModuleStatus(
        module=rep.module,
        updated=rep.updated,
        loss=finite_or_none(rep.loss),
        loss_positive=finite_or_none(rep.loss_pos),
        loss_negative=finite_or_none(rep.loss_neg),
        loss_chance_ratio=finite_or_none(rep.loss_ratio),
        active_hinge_fraction=finite_or_none(rep.active_fraction),
        dead_unit_fraction=finite_or_none(rep.dead_fraction),
        seconds=finite_or_none(rep.seconds),
        frames=int(emb.shape[0]) if emb is not None else None,
        channels=int(emb.shape[1]) if emb is not None and emb.dim() == 2 else None,
        memory_vectors=memory_vectors,
    )


def _neighbors(board: LiveBoard, request: NeighborsRequest) -> Neighbors:
    learner = board.learner
    sizes = memory_sizes(learner)
    if not sizes:
        raise HTTPException(404, "the learner has no FAISS memories to search")
    module = _default_memory_module(board, sizes) if request.module is None else request.module
    if module not in sizes:
        raise HTTPException(404, f"module {module} has no memory; modules with one: {sorted(sizes)}")
    memory = learner.memories[module]
    dim = memory.dim
    if request.embedding is not None:
        query = torch.tensor(request.embedding, dtype=torch.float32)
        described = "request"
    else:
        snap = require_snapshot(board)
        if module >= len(snap.embeddings):
            raise HTTPException(404, f"module {module} has no embeddings in the newest window")
        emb = snap.embeddings[module]
        frame = -1 if request.frame is None else request.frame
        if not -emb.shape[0] <= frame < emb.shape[0]:
            raise HTTPException(422, f"frame {frame} is outside the window's {emb.shape[0]} frames")
        query = emb[frame].detach().to("cpu", torch.float32)
        described = f"latest frame {frame % emb.shape[0]}"
    if query.shape[0] != dim:
        raise HTTPException(422, f"the embedding has {query.shape[0]} values but module {module}'s memory holds {dim}-dimensional vectors")
    try:
        hits = memory.nearest(query, request.k)
    except ValueError as error:
        raise HTTPException(422, f"cannot search module {module}'s memory: {error}") from None
    neighbors = []
    for hit in hits:
        phone = int(hit.phone) if hit.phone >= 0 else None
        neighbors.append(Neighbor(
            stream_seconds=finite_or_none(hit.stream_seconds), source_id=str(hit.source_id), model_step=int(hit.step),
            score=finite_or_none(hit.score), speaker=None if hit.speaker_id is None else str(hit.speaker_id), phone=phone,
            phone_name=None if phone is None else board.phone_name(phone),
        ))
    return Neighbors(module=module, k=request.k, query=described, memory_vectors=sizes.get(module), neighbors=neighbors)


def _default_memory_module(board: LiveBoard, sizes: dict[int, int]) -> int:
    """The top module whose memory holds vectors of its own output's size (the GRU shares the top
    conv module's memory, which holds that module's encodings, not the GRU's)."""
    snap = board.snapshot
    for module in sorted(sizes, reverse=True):
        dim = board.learner.memories[module].dim
        if snap is None or module >= len(snap.embeddings) or snap.embeddings[module].shape[-1] == dim:
            return module
    return max(sizes)


def _matrix(values: torch.Tensor) -> list[list[float | None]]:
    if bool(torch.isfinite(values).all()):
        return values.tolist()
    return [[v if math.isfinite(v) else None for v in row] for row in values.tolist()]
