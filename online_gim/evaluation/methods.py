"""The methods an evaluation compares: named presets in ``configs/`` plus the MFCC baseline.

A method name resolves to one of three kinds:

- ``mfcc`` (``features``): no learner; 13 MFCCs + deltas + delta-deltas per 10 ms frame.
- ``random`` (``untrained``): the learner of ``configs/random.yaml``, never updated. The train
  stream still flows through it with no module scheduled, so that its normalisation statistics
  (input level, per-channel time norm) fit the audio as a trained learner's do; its weights stay at
  their initial values.
- any other name (``trained``): the learner of ``configs/<name>.yaml``, trained online.
- a state directory of ``online-gim listen --state DIR`` (``loaded``, :func:`state_method`): the
  learner of its newest checkpoint, as it was (for a replica of ``listen --replicas``:
  ``DIR/replica-<k>``); probed, not trained.

The rows of METHOD.md section 6 are :data:`DEFAULT_METHODS`. Every learner gets the run's seed
(replacing the preset's) and no online probes (they would not change the encoder, only cost time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from typing import TYPE_CHECKING

from online_gim.config import LearnerConfig, load_config, presets_dir

if TYPE_CHECKING:
    from online_gim.learner import OnlineLearner

PRESETS_DIR = presets_dir()
"""The shipped YAML presets: ``configs/`` of a checkout, the package data of an install."""

FEATURE_METHODS = ("mfcc",)
"""Methods that are fixed feature extractors, not learners."""

UNTRAINED_METHODS = ("random",)
"""Methods whose learner is never updated."""

DEFAULT_METHODS = (
    "random",
    "mfcc",
    "cpc_e2e",
    "gim_infonce",
    "gim_no_gar",
    "hinge_cpc_e2e",
    "clapp_bptt",
    "clapp_eprop",
)
"""METHOD.md section 6's rows that run here, in its order."""

MethodKind = Literal["features", "untrained", "trained", "loaded"]


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: the method's name (its preset's file name without ``.yaml``).
        kind: ``features``, ``untrained``, ``trained`` or ``loaded`` (module docstring).
        config: the learner's configuration (``None`` for ``features``).
        state: ``loaded``: the state directory the learner comes from.
    """

    name: str
    kind: MethodKind
    config: LearnerConfig | None = None
    state: Path | None = None

    @property
    def bp_free(self) -> str:
        """METHOD.md's "BP-free" column: whether any error signal crosses a module or a time step."""
        if self.config is None or self.kind == "untrained":
            return "yes"
        if self.config.mode == "e2e":
            return "no"
        return "modules yes, GRU BPTT" if self.config.encoder.gru == "bptt" else "yes"


def available_methods(presets: Path = PRESETS_DIR) -> list[str]:
    """Every method name that resolves: the feature methods and the presets in ``presets``."""
    return [*FEATURE_METHODS, *sorted(p.stem for p in presets.glob("*.yaml"))]


def resolve_methods(names: Sequence[str], *, seed: int, presets: Path = PRESETS_DIR) -> list[Method]:
    """The :class:`Method` of each name, in the given order.

    Raises:
        ValueError: an empty or repeated name, a name with no preset, a preset that does not load
            (pydantic's message names the field), or an untrained method whose preset is not greedy.
    """
    if not names:
        raise ValueError("no methods given")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"methods listed twice: {', '.join(repeated)}")
    methods = []
    for name in names:
        if name in FEATURE_METHODS:
            methods.append(Method(name, "features"))
            continue
        path = presets / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown method {name!r}: no preset {path} (available: {', '.join(available_methods(presets))})")
        config = load_config(path)
        config = LearnerConfig.model_validate({**config.model_dump(), "seed": seed, "probes": None})
        kind: MethodKind = "untrained" if name in UNTRAINED_METHODS else "trained"
        if kind == "untrained" and config.mode != "greedy":
            raise ValueError(f"{path}: the untrained method {name!r} needs mode 'greedy' (its modules are never scheduled)")
        methods.append(Method(name, kind, config))
    return methods


def state_method(directory: Path) -> Method:
    """The ``loaded`` method of a ``listen --state`` directory, named ``state:<directory>``.

    Raises:
        ValueError: no intact checkpoint there, or the checkpoints of another learner (video).
    """
    return Method(f"state:{directory}", "loaded", LearnerConfig.from_saved(_newest_learner_state(directory)["config"]), directory)


def load_learner(method: Method) -> OnlineLearner:
    """The learner of a ``loaded`` method's newest checkpoint.

    Raises:
        ValueError: as :func:`state_method`, or a checkpoint the learner cannot load (its message).
    """
    from online_gim.learner import OnlineLearner

    state = _newest_learner_state(method.state)
    learner = OnlineLearner(LearnerConfig.from_saved(state["config"]))
    learner.load_state_dict(state)
    return learner


def _newest_learner_state(directory: Path) -> dict:
    from online_gim.run.audio_state import AUDIO_LAYOUT, newest_learner_checkpoint

    return newest_learner_checkpoint(directory).state[AUDIO_LAYOUT.learner]
