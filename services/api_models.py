"""Pydantic request and response models of the HTTP API (they make its OpenAPI schema at ``/docs``).

Numbers that may be unknown (a loss not computed yet, an accuracy before any label) are ``null``,
never NaN, so every response is strict JSON.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

MAX_NEIGHBORS = 100
MAX_EMBEDDING_FRAMES = 256
MAX_QUERY_DIM = 4096


class ErrorResponse(BaseModel):
    detail: str | list[Any] = Field(description="What was wrong with the request, in words.")


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    uptime_seconds: float


class Readiness(BaseModel):
    ready: bool
    reason: str


class ModuleStatus(BaseModel):
    module: int = Field(description="Index in the stack, 0 = lowest conv module; the GRU (if any) is last.")
    updated: bool = Field(description="Whether the module updated its weights on the newest window.")
    loss: float | None
    loss_positive: float | None
    loss_negative: float | None
    loss_chance_ratio: float | None = Field(description="loss / chance loss; near or above 1 = collapse alarm.")
    active_hinge_fraction: float | None
    dead_unit_fraction: float | None
    seconds: float | None = Field(description="Wall seconds spent on the module for the newest window.")
    frames: int | None = Field(description="Output frames per window.")
    channels: int | None = Field(description="Output channels.")
    memory_vectors: int | None = Field(description="Vectors stored in the module's FAISS memory.")


class VideoStatus(BaseModel):
    source_id: str = Field(description="The video stream (listen --source av).")
    windows_processed: int = Field(description="Video windows the video learner processed.")
    stream_seconds: float | None = Field(description="Video time of the newest window's end.")
    window_frames: int | None = Field(description="Frames in the newest window.")
    skipped: bool | None = Field(description="Whether the newest window was skipped (non-finite pixels).")
    real_time_factor: float | None = Field(description="Compute seconds per video second, newest window.")
    model_step: int | None = Field(description="Video windows that updated weights so far.")
    modules: list[ModuleStatus]


class Status(BaseModel):
    source: str = Field(description="The stream as the listen command named it.")
    source_id: str | None
    ready: bool
    stream_seconds: float | None = Field(description="Stream time of the newest processed window's end.")
    source_seconds: float | None = Field(description="Stream time of the newest sample delivered by the source.")
    windows_processed: int
    windows_dropped: int
    windows_skipped: int | None = Field(description="Learner steps skipped for non-finite audio or loss.")
    samples_in: int
    samples_dropped: int
    real_time_factor: float | None = Field(description="Compute seconds per audio second, newest window.")
    real_time_factor_mean: float | None = Field(description="Moving average over about 20 windows.")
    buffer_fill_ratio: float | None
    source_lag_seconds: float | None
    step: int | None = Field(description="The learner's window counter.")
    model_step: int | None = Field(description="Windows that updated weights so far.")
    modules: list[ModuleStatus]
    config: dict[str, Any] = Field(description="Summary of the learner's configuration.")
    uptime_seconds: float
    video: VideoStatus | None = Field(None, description="The video learner beside the audio one, if any.")


class Embeddings(BaseModel):
    module: int
    model_step: int = Field(description="Model step at which the window was encoded.")
    window_start_seconds: float
    channels: int
    frames: int = Field(description="Frames returned (the newest ones of the window).")
    window_frames: int = Field(description="Frames the module emits per window.")
    hop_seconds: float = Field(description="Seconds between two of the module's frames.")
    times: list[float] = Field(description="Stream time (s) of each returned frame's start.")
    values: list[list[float | None]] = Field(description="(frames, channels) embeddings, oldest first.")


class PhoneFrame(BaseModel):
    time: float = Field(description="Stream time (s) of the 10 ms frame's start.")
    phone: int
    phone_name: str
    probability: float | None
    label: int | None = Field(description="The true phone class when known.")
    label_name: str | None


class SpeakerGuess(BaseModel):
    speaker: str
    probability: float


class Probes(BaseModel):
    model_step: int
    window_start_seconds: float
    frames: list[PhoneFrame]
    speakers: list[SpeakerGuess] = Field(description="Most probable speakers of the window, best first.")
    true_speaker: str | None = Field(description="The speaker of most of the window, when known.")
    phone_accuracy: float | None = Field(description="Running prequential phone accuracy.")
    speaker_accuracy: float | None = Field(description="Running prequential speaker accuracy.")


class NeighborsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    module: int | None = Field(default=None, ge=0, le=63, description="Module whose memory to search; default: the top module that has one.")
    k: int = Field(default=5, ge=1, le=MAX_NEIGHBORS, description="How many neighbours.")
    embedding: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None, min_length=1, max_length=MAX_QUERY_DIM,
        description="The query vector (the memory's dimension); default: a frame of the newest window.",
    )
    frame: int | None = Field(
        default=None, ge=-100_000, le=100_000,
        description="Without 'embedding': which frame of the newest window (negative counts from the end; default -1).",
    )


class Neighbor(BaseModel):
    stream_seconds: float | None
    source_id: str | None
    model_step: int | None
    score: float | None = Field(description="Inner product with the query (higher = nearer).")
    speaker: str | None
    phone: int | None
    phone_name: str | None


class Neighbors(BaseModel):
    module: int
    k: int
    query: str = Field(description="'request' or 'latest frame N'.")
    memory_vectors: int | None
    neighbors: list[Neighbor]


class HistoryPoint(BaseModel):
    model_config = ConfigDict(extra="allow")

    seq: int
    step: int
    updates: int
    t: float = Field(description="Stream time (s) of the window's end.")
    wall: float = Field(description="Unix time of the publication.")
    rtf: float | None
    loss: list[float | None]
    loss_ratio: list[float | None]
    phone_acc: float | None
    speaker_acc: float | None
    drift_cos: list[float | None] | None
    drift_mmd: list[float | None] | None
    input_level_db: float | None


class History(BaseModel):
    modules: int
    points: list[HistoryPoint]


class ProjectionPoint(BaseModel):
    x: float
    y: float
    t: float
    speaker: str | None
    phone: int | None


class Projection(BaseModel):
    module: int
    explained_variance: list[float] = Field(description="Share of the variance on each of the two axes.")
    speakers: list[str] = Field(description="Speakers present, in order of first appearance.")
    points: list[ProjectionPoint]


class Drift(BaseModel):
    stream_seconds: float
    reference_start: float | None
    reference_stop: float | None
    embedding_cosine: dict[int, float | None]
    embedding_mmd: dict[int, float | None]
    weight_change: dict[int, float | None]
    weight_interval_seconds: float | None
    input_level_db: float | None
    input_level_drift_db: float | None
    input_spectrum_drift_db: float | None
    input_centroid_hz: float | None
    input_flatness: float | None
    config: dict[str, float]
