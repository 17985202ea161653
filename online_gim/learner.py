"""The online learner: one update of the gradient-isolated stack per incoming window."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from online_gim.adam import Adam
from online_gim.config import LearnerConfig
from online_gim.conv import ConvModule
from online_gim.eprop import EligibilityTraces, StopGradientGRU
from online_gim.input_norm import InputNormalizer
from online_gim.local_update import LocalStage, apply_local_loss, module_report, step_optimizer
from online_gim.losses import LossParts, product_dtype
from online_gim.memory import NegativeMemory
from online_gim.objective import WindowPool
from online_gim.probes import OnlineProbes
from online_gim.report import ModuleReport, ProbeReadout
from online_gim.stack_learner import StackLearner
from online_gim.stage_window import ActivationWindow
from online_gim.streams.window import FRAME_SAMPLES, AudioWindow


@dataclass
class _WindowContext:
    """What every stage needs to know about the window being learned."""

    window: AudioWindow | ActivationWindow
    speakers: list[str | None]
    replay: bool = False


class OnlineLearner(StackLearner[AudioWindow | ActivationWindow]):
    """Greedy InfoMax / CLAPP learner that updates on every new window of a stream.

    The stack: conv modules (Conv1d -> normalisation -> ReLU, see ``ConvModule``) and a GRU
    (``eprop``: stop-gradient GRU trained by forward eligibility traces; ``bptt``: ``nn.GRU``
    trained by autograd within the window; ``none``). In ``greedy`` mode each module receives
    its input detached and is trained by its own local loss (``LocalObjective``) with its own
    Adam optimiser; no gradient crosses a module boundary. In ``e2e`` mode one loss at the top
    trains the whole stack by back-propagation (the CPC / Hinge-Loss-CPC baseline).

    ``step(window)`` is the one way to feed data in. It normalises the window with running input
    statistics, runs the stack, updates the scheduled modules and the memories, and returns a
    :class:`~online_gim.report.StepReport` (the :class:`~online_gim.run.contract.StreamLearner`
    contract; the step, its guard and the state tree are :class:`StackLearner`'s).
    ``step(window, replay=True)`` learns once more from a window of the past
    (:mod:`online_gim.streams.replay`): the weights update as on a new window, but nothing that describes the
    live stream changes (running input and ``time``-norm statistics, negative memories, online
    probes, the GRU's state and traces, which the replayed window runs from zero as a segment of
    its own). No window can make the learner's state non-finite (:mod:`online_gim.finite`):
    a window with NaN/Inf samples, or one whose level float32 cannot represent
    (:meth:`InputNormalizer.refusal`), changes nothing; the encodings of the whole conv stack are
    checked before any memory write or weight update, and a window that made them or the running
    statistics non-finite is rolled back; so is one that made the GRU's state, the e-prop traces or
    the probes non-finite. Each such window is counted (``windows_skipped_nonfinite``) and its
    report says why (``StepReport.skip``). A module whose loss or gradient is not finite is not
    updated.

    The GRU's hidden state (and, for e-prop, its eligibility traces) carry over from one window to
    the next: consecutive windows are treated as one continuous stream.

    **A part of the stack** (``modules``, a pipeline stage, :mod:`online_gim.scale`): the learner
    holds only those modules, initialised and seeded exactly as the whole stack's learner holds
    them (every module has its own generators); the first part learns from audio windows, a later
    one from :class:`~online_gim.stage_window.ActivationWindow` s, the output of the part below.
    Reports and ``step(modules=...)`` use stack indices. Fed the same windows, the parts learn the
    same weights as the whole stack (the whole stack rolls a window back when a module above made
    it non-finite; a part can roll back only its own modules).

    Parameters:
        config: the learner's configuration (``LearnerConfig()`` is the shipped default).
        modules: the stack indices of the modules to hold, a contiguous range (default: all).
            The GRU and the top conv module share a memory, so a part holds both or neither of them.

    Example:
        >>> import torch
        >>> from online_gim.config import LearnerConfig
        >>> from online_gim.streams.window import AudioWindow
        >>> learner = OnlineLearner(LearnerConfig())
        >>> report = learner.step(AudioWindow(torch.randn(20480) * 0.1))
        >>> [tuple(e.shape) for e in report.embeddings]
        [(4095, 512), (1023, 512), (512, 512), (257, 512), (128, 512), (128, 256)]
    """

    config: LearnerConfig

    def __init__(self, config: LearnerConfig, modules: range | None = None) -> None:
        super().__init__(config)
        self.input_norm = InputNormalizer(
            momentum=config.input_momentum,
            local_samples=round(config.input_gain_ms * 16) if config.input_gain == "local" else None,
            local_floor=config.input_gain_floor,
            pre_emphasis=config.pre_emphasis,
        )
        self.product_dtype = product_dtype(config.precision)
        self._convs = len(config.encoder.convs)  # stages[:_convs] are conv modules, a GRU (if any) is last
        in_channels, stride = 1, 1
        for index, layer in enumerate(config.encoder.convs):
            module = ConvModule(
                in_channels, layer, norm=config.encoder.module_norm(index), momentum=config.encoder.norm_momentum,
                product_dtype=self.product_dtype, residual_weights=config.encoder.residual_weights(index),
                centre_skip=config.encoder.residual_mix == "centred",
            )
            stride *= layer.stride
            memory = NegativeMemory(
                layer.channels, config.memory, exclusion_samples=self._exclusion_frames * stride, seed=config.seed + index
            )
            self.stages.append(self._stage(module, layer.channels, layer.channels, memory, stride, index))
            in_channels = layer.channels
        self.gru: nn.Module | None = None
        self.traces: EligibilityTraces | None = None
        if config.encoder.gru != "none":
            hidden = config.encoder.gru_hidden
            if config.encoder.gru == "eprop":
                self.gru = StopGradientGRU(in_channels, hidden)
                self.traces = EligibilityTraces(self.gru)
            else:
                self.gru = nn.GRU(in_channels, hidden)
            top_memory = self.stages[-1].memory  # the GRU predicts the top conv module's encodings
            self.stages.append(self._stage(self.gru, hidden, in_channels, top_memory, stride, len(self.stages)))
        self.hidden = torch.zeros(config.encoder.gru_hidden)
        if config.mode == "e2e":
            parameters = [p for stage in self.stages for p in stage.module.parameters()]
            parameters += list(self.stages[-1].head.parameters())
            self._e2e_optimizer = Adam(parameters, lr=config.optim.lr, moments=config.optim.moments)
        self.probes = OnlineProbes(config.probes, config.encoder) if config.probes is not None else None
        self._learn_stack = self._step_e2e if config.mode == "e2e" else self._step_greedy
        stack_modules = len(self.stages)
        if modules is not None and modules != range(stack_modules):
            self._keep(modules)
        self._start("all" if config.mode == "e2e" else config.schedule, stack_modules=stack_modules)

    def _keep(self, modules: range) -> None:
        """Keeps the modules ``modules`` of the stack just built (a pipeline stage) and what belongs
        to them: the GRU and its state if it is one of them, the probes if they read one of them.
        Raises ``ValueError`` for a range this learner cannot hold."""
        count = len(self.stages)
        if modules.step != 1 or len(modules) == 0 or modules.start < 0 or modules.stop > count:
            raise ValueError(f"modules must be a non-empty contiguous range within 0..{count - 1}, got {modules}")
        if self.config.mode == "e2e":
            raise ValueError("an e2e learner trains its whole stack by one loss: it cannot be split into parts")
        if self.gru is not None and (self._convs in modules) != (self._convs - 1 in modules):
            raise ValueError(
                f"the GRU (module {self._convs}) predicts from the top conv module's memory (module {self._convs - 1}): "
                "a part holds both or neither"
            )
        self.first_module = modules.start
        self.stages = self.stages[modules.start : modules.stop]
        self._convs = max(0, min(self._convs, modules.stop) - modules.start)
        if self._convs == len(self.stages):  # no GRU in this part
            self.gru, self.traces = None, None
        if self.probes is not None and self.probes.module not in modules:
            self.probes = None

    @property
    def _exclusion_frames(self) -> int:
        memory = self.config.memory
        return memory.exclusion_frames if memory.exclusion_frames is not None else self.config.loss.prediction_steps

    def _stage(
        self, module: nn.Module, context_dim: int, target_dim: int, memory: NegativeMemory, stride: int, index: int
    ) -> LocalStage:
        return LocalStage.build(
            module, context_dim=context_dim, target_dim=target_dim, memory=memory, stride=stride,
            loss=self.config.loss, memory_config=self.config.memory, optim=self.config.optim, seed=self.config.seed,
            index=index, product_dtype=self.product_dtype, exclusion=self._exclusion_frames,
        )

    @property
    def optimizers(self) -> list[Adam]:
        """Every optimiser the learner holds: one per module, and the end-to-end one in ``e2e`` mode."""
        e2e = [self._e2e_optimizer] if self.config.mode == "e2e" else []
        return [stage.optimizer for stage in self.stages] + e2e

    # ------------------------------------------------------------------ the step

    def _window_values(self, window: AudioWindow | ActivationWindow) -> torch.Tensor:
        """``window.samples``, ``(n,)`` float at 16 kHz with ``n == config.window`` (a part of the
        stack above module 0: ``window.activations``, ``(C, T)`` with the channels of the module
        below); raises ``ValueError`` for another shape or phone labels the probes cannot use."""
        if self.first_module == 0:
            values = getattr(window, "samples", None)
            if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.shape[0] != self.config.window:
                raise ValueError(f"window must be ({self.config.window},) samples, got {_shape_of(window)}")
        else:
            values = getattr(window, "activations", None)
            channels = self.config.encoder.convs[self.first_module - 1].channels
            if not isinstance(values, torch.Tensor) or values.dim() != 2 or values.shape[0] != channels:
                raise ValueError(f"window must hold ({channels}, T) activations of module {self.first_module - 1}, got {_shape_of(window)}")
        if self.probes is not None:
            self.probes.check(window)
        return values

    def _learn(
        self, window: AudioWindow, scheduled: set[int], replay: bool
    ) -> tuple[list[ModuleReport], list[torch.Tensor], ProbeReadout | None]:
        """Normalises the window, runs the stack (``greedy``: each module on its own loss;
        ``e2e``: one loss at the top), then the probes (not on a replay)."""
        context = _WindowContext(window=window, speakers=window.frame_speakers(), replay=replay)
        if self.first_module == 0:
            x = self.input_norm.update_and_apply(window.samples.to(torch.float32))[None, None, :]
        else:
            x = window.activations.to(torch.float32)[None]
        module_reports, embeddings = self._learn_stack(x, context, scheduled)
        # the probes read detached copies after the encoder's update: they never train the encoder
        probes = (
            self.probes.update(window, embeddings, first_module=self.first_module).readout
            if self.probes is not None and not replay else None
        )
        return module_reports, embeddings, probes

    def _begin_replay(self) -> None:
        """The GRU runs a replayed window from a zero state and zero traces, as a segment of its own."""
        self.hidden = torch.zeros_like(self.hidden)
        if self.traces is not None:
            for trace in self.traces.traces:
                trace.zero_()

    def probe_readout(self) -> ProbeReadout | None:
        """The online probes' readout of the newest window; ``None`` without probes or before a window."""
        return self.probes.readout if self.probes is not None else None

    def _step_greedy(
        self, x: torch.Tensor, context: _WindowContext, scheduled: set[int]
    ) -> tuple[list[ModuleReport], list[torch.Tensor]]:
        """Encodes the window with the whole conv stack (folding its statistics), has the step guard
        check the encodings before anything is committed, then writes each module's memory and
        updates the scheduled modules, bottom to top, and runs the GRU."""
        outputs, owns, convs, forward_seconds = self._encode(x)
        self._guard.verify(outputs=outputs)  # before any memory write or weight update
        inputs = [x, *outputs[:-1]]
        reports: list[ModuleReport] = []
        embeddings: list[torch.Tensor] = []
        for index, stage in enumerate(self.stages):
            started = time.perf_counter() - (forward_seconds[index] if index < len(outputs) else 0.0)
            if index < self._convs:
                scored = owns[index][0].T  # (T, C): what the module scores (its output, or its own part)
                if not context.replay:
                    self._remember(stage, scored, context)
                parts = self._update_conv(stage, inputs[index], convs[index], scored, context) if index in scheduled else None
                frames = outputs[index][0].T
            else:
                frames, parts = self._run_gru(stage, outputs[-1][0].T, context, learn=index in scheduled)
                scored = frames
            embeddings.append(frames)
            reports.append(self._module_report(self.first_module + index, parts, scored, started))
        return reports, embeddings

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[float]]:
        """Runs the conv modules on the ``(1, 1, n)`` normalised window, folding it into their running
        statistics. Returns each conv module's ``(1, C, T)`` output, the ``(1, C, T)`` output it
        scores (the same tensor, or its own part under ``centred`` skip paths), its ``(1, C, T)``
        conv output before the normalisation (reused by the scored recompute), and the seconds it
        took."""
        outputs: list[torch.Tensor] = []
        owns: list[torch.Tensor] = []
        convs: list[torch.Tensor] = []
        seconds: list[float] = []
        h = x
        for stage in self.stages[: self._convs]:
            started = time.perf_counter()
            own, h, conv = stage.module.forward_window_parts(h, update_statistics=True)
            outputs.append(h)
            owns.append(own if stage.module.centre_skip else h)
            convs.append(conv)
            seconds.append(time.perf_counter() - started)
        return outputs, owns, convs, seconds

    def _module_report(self, index: int, parts: LossParts | None, frames: torch.Tensor, started: float) -> ModuleReport:
        return module_report(index, parts, frames, started)

    def _remember(self, stage: LocalStage, frames: torch.Tensor, context: _WindowContext) -> None:
        """Writes a random subset of the window's ``(T, C)`` encodings into the stage's memory."""
        count = min(self.config.memory.writes_per_window, frames.shape[0])
        chosen = np.sort(stage.rng.choice(frames.shape[0], size=count, replace=False))
        offsets = chosen * stage.stride
        label_frames = np.minimum(offsets // FRAME_SAMPLES, max(context.window.num_frames - 1, 0))
        phones = context.window.phones[label_frames] if context.window.phones is not None else None
        speakers = [context.speakers[f] for f in label_frames] if context.speakers else None
        stage.memory.add(
            frames[torch.from_numpy(chosen)],
            context.window.start_sample + offsets,
            source_id=context.window.source_id,
            step=self.updates,
            speakers=speakers,
            phones=phones,
        )

    def _anchors(self, stage: LocalStage, frames: int) -> tuple[int, int]:
        """A random run of anchors ``[first, first + count)`` with every ``anchor + K`` inside, drawn
        by ``stage``'s generator."""
        steps = self.config.loss.prediction_steps
        count = min(self.config.loss.subwindow, frames - steps)
        first = int(stage.rng.integers(0, frames - steps - count + 1))
        return first, count

    def _apply(self, stage: LocalStage, parts: LossParts | None) -> LossParts | None:
        """Back-propagates a local loss within the stage and steps its optimiser."""
        return apply_local_loss(stage.optimizer, parts, self.config.optim.grad_clip)

    def _step_optimizer(self, optimizer: Adam) -> bool:
        """Clips the gradient norm and steps, unless the gradient is not finite. Returns whether it stepped."""
        return step_optimizer(optimizer, self.config.optim.grad_clip)

    def _update_conv(
        self, stage: LocalStage, inputs: torch.Tensor, conv: torch.Tensor, frames: torch.Tensor, context: _WindowContext
    ) -> LossParts | None:
        """Scores a random sub-window of a conv module's frames and updates it. ``conv``: the
        window pass' ``(1, C, T)`` conv output, reused by the recompute; ``frames``: its ``(T, C)``
        output (window negatives)."""
        first, count = self._anchors(stage, conv.shape[2])
        steps = self.config.loss.prediction_steps
        recomputed = stage.module.forward_frames(
            inputs, first, first + count + steps, conv=conv, skip=not stage.module.centre_skip
        )[0].T  # (count + K, C)
        anchors = torch.arange(count)
        positions = context.window.start_sample + (first + anchors.numpy()) * stage.stride
        pool = WindowPool(frames, anchors + first)
        parts = stage.objective(recomputed[:count], recomputed, anchors, positions, source_id=context.window.source_id, pool=pool)
        return self._apply(stage, parts)

    def _run_gru(
        self, stage: LocalStage, inputs: torch.Tensor, context: _WindowContext, *, learn: bool
    ) -> tuple[torch.Tensor, LossParts | None]:
        """Runs (and if ``learn``, trains) the GRU on the top conv module's ``(T, C)`` output."""
        inputs = inputs.detach()
        if self.traces is not None:
            return self._run_eprop(stage, inputs, context, learn=learn)
        with torch.set_grad_enabled(learn):
            states, last = stage.module(inputs[:, None, :], self.hidden[None, None, :])
        self.hidden = last[0, 0].detach()
        states = states[:, 0]
        if not learn:
            return states.detach(), None
        anchors = torch.arange(states.shape[0] - self.config.loss.prediction_steps)
        positions = context.window.start_sample + anchors.numpy() * stage.stride
        parts = stage.objective(
            states[anchors], inputs, anchors, positions, source_id=context.window.source_id, pool=WindowPool(inputs, anchors)
        )
        return states.detach(), self._apply(stage, parts)

    def _run_eprop(
        self, stage: LocalStage, inputs: torch.Tensor, context: _WindowContext, *, learn: bool
    ) -> tuple[torch.Tensor, LossParts | None]:
        """E-prop: forward the GRU over the window chunk by chunk, score all anchors at once (their
        targets ``z_{t+k}`` are known inputs, and a score depends on its own state ``h_t`` only),
        and turn ``dLoss/dh_t`` into weight gradients through the eligibility traces, chunk by
        chunk. The traces advance on every window (they are the sensitivities of the hidden
        state), also when the GRU is not scheduled to learn. What is kept is the window's chunk
        caches (``O(T * (D + H))``, the size of the window's input); no BPTT graph."""
        gru, traces = self.gru, self.traces
        assert isinstance(gru, StopGradientGRU) and traces is not None
        frames, chunk = inputs.shape[0], self.config.encoder.eprop_chunk
        scored = frames - self.config.loss.prediction_steps
        outputs, caches = [], []
        for first in range(0, frames, chunk):
            states, cache = gru.run_chunk(inputs[first : first + chunk], self.hidden)
            self.hidden = states[-1]
            outputs.append(states)
            caches.append(cache)
        states = torch.cat(outputs)
        signal = torch.zeros_like(states)
        parts = None
        if learn and scored > 0:
            leaf = states.clone().requires_grad_(True)
            anchors = torch.arange(scored)
            positions = context.window.start_sample + anchors.numpy() * stage.stride
            parts = stage.objective(
                leaf[:scored], inputs, anchors, positions, source_id=context.window.source_id, pool=WindowPool(inputs, anchors)
            )
            if parts is not None:
                parts.loss.backward()
                signal = leaf.grad
        traces.zero_grads()
        for first, cache in zip(range(0, frames, chunk), caches):
            traces.update(cache, signal[first : first + chunk])
        if parts is None or not bool(torch.isfinite(parts.loss)):
            stage.optimizer.zero_grad()
            return states, parts
        for parameter, grad in zip((gru.weight_ih, gru.weight_hh, gru.bias_ih, gru.bias_hh), traces.grads):
            parameter.grad = grad.clone()
        self._step_optimizer(stage.optimizer)
        return states, parts

    def _step_e2e(
        self, x: torch.Tensor, context: _WindowContext, scheduled: set[int]
    ) -> tuple[list[ModuleReport], list[torch.Tensor]]:
        """One loss at the top, back-propagated through the whole stack (and through time
        within the window for a ``bptt`` GRU); every module updates (``scheduled`` is all)."""
        started = time.perf_counter()
        outputs: list[torch.Tensor] = []
        h = x
        for stage in self.stages[: self._convs]:
            h = stage.module.forward_window(h, update_statistics=True)
            outputs.append(h[0].T)
        targets = outputs[-1]  # (T, C) top conv encodings, with the graph
        top = self.stages[-1]
        if self.gru is not None:
            states, last = self.gru(targets[:, None, :], self.hidden[None, None, :])
            self.hidden = last[0, 0].detach()
            contexts = states[:, 0]
            outputs.append(contexts)
        else:
            contexts = targets
        self._guard.verify(outputs=[o.detach() for o in outputs])  # before the memory write and the update
        if not context.replay:
            with torch.no_grad():
                self._remember(self.stages[-1 if self.gru is None else -2], targets.detach(), context)
        anchors = torch.arange(targets.shape[0] - self.config.loss.prediction_steps)
        positions = context.window.start_sample + anchors.numpy() * top.stride
        parts = top.objective(
            contexts[anchors], targets, anchors, positions, source_id=context.window.source_id,
            pool=WindowPool(targets.detach(), anchors),
        )
        updated = False
        if parts is not None and bool(torch.isfinite(parts.loss)):
            parts.loss.backward()
            updated = self._step_optimizer(self._e2e_optimizer)
        self._e2e_optimizer.zero_grad()
        embeddings = [o.detach() for o in outputs]
        reports = [
            self._module_report(index, parts if index == len(embeddings) - 1 and updated else None, frames, started)
            for index, frames in enumerate(embeddings)
        ]
        return reports, embeddings

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def embed(self, samples: torch.Tensor) -> list[torch.Tensor]:
        """Encodes audio without learning and without touching the learner's state.

        Args:
            samples: ``(n,)`` float samples at 16 kHz, any length that leaves at least one frame
                at the top (a part of the stack above module 0: the ``(C, T)`` activations of the
                module below it).
        Returns:
            Per module, its ``(frames, C)`` output; the GRU starts from a zero state.
        """
        expected = 1 if self.first_module == 0 else 2
        if samples.dim() != expected:
            raise ValueError(f"samples must be {'(n,)' if expected == 1 else '(C, T)'}, got {tuple(samples.shape)}")
        if not bool(torch.isfinite(samples).all()):
            raise ValueError("samples contain NaN or Inf")
        if self.first_module == 0:
            h = self.input_norm.apply(samples.to(torch.float32))[None, None, :]
        else:
            h = samples.to(torch.float32)[None]
        outputs: list[torch.Tensor] = []
        for stage in self.stages[: self._convs]:
            h = stage.module.forward_window(h, update_statistics=False)
            outputs.append(h[0].T)  # a view: nothing writes into h
        if self.traces is not None:
            outputs.append(self.gru.run(h[0].T, torch.zeros(self.gru.hidden_size)))
        elif self.gru is not None:
            states, _ = self.gru(h[0].T[:, None, :])
            outputs.append(states[:, 0])
        return outputs

    # ------------------------------------------------------------------ state

    def _extra_state(self) -> dict[str, object]:
        """The memories (once each: the GRU shares the top conv module's), the GRU's state and
        traces, the end-to-end optimiser and the probes."""
        state: dict[str, object] = {
            "memories": [self.stages[i].memory.state_dict() for i in self._memory_owners()],
            "hidden": self.hidden.clone(),
            "traces": self.traces.state_dict() if self.traces is not None else {},
        }
        if self.config.mode == "e2e":
            state["e2e_optimizer"] = self._e2e_optimizer.state_dict()
        if self.probes is not None:
            state["probes"] = self.probes.state_dict()
        return state

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        for owner, memory_state in zip(self._memory_owners(), state["memories"]):
            self.stages[owner].memory.load_state_dict(memory_state)
        self.hidden = state["hidden"].clone()
        if self.traces is not None:
            self.traces.load_state_dict(state["traces"])
        if self.config.mode == "e2e":
            self._e2e_optimizer.load_state_dict(state["e2e_optimizer"])
        if self.probes is not None:
            self.probes.load_state_dict(state["probes"])

    def _named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = super()._named_optimizers()
        if self.config.mode == "e2e":
            optimizers["e2e_optimizer"] = self._e2e_optimizer
        return optimizers

    def _named_memories(self) -> dict[str, NegativeMemory]:
        return {f"memories.{i}": self.stages[owner].memory for i, owner in enumerate(self._memory_owners())}

    def _extra_volatile_state(self) -> dict[str, object]:
        """The GRU's state, the e-prop traces and the probes."""
        state: dict[str, object] = {"hidden": self.hidden}
        if self.traces is not None:
            state["traces"] = self.traces.named_traces()
        if self.probes is not None:
            state["probes"] = self.probes.state_dict()
        return state

    def _load_extra_volatile_state(self, state: dict[str, Any]) -> None:
        self.hidden = state["hidden"]
        if self.traces is not None:
            self.traces.load_state_dict(state["traces"])
        if self.probes is not None:
            self.probes.load_state_dict(state["probes"])

    def _memory_owners(self) -> list[int]:
        """Indices of the stages that own their memory (the GRU shares the top conv's)."""
        owners: list[int] = []
        for index, stage in enumerate(self.stages):
            if all(stage.memory is not self.stages[o].memory for o in owners):
                owners.append(index)
        return owners


def _shape_of(window: object) -> str:
    """What a wrong window holds, for an error message."""
    for name in ("samples", "activations"):
        values = getattr(window, name, None)
        if isinstance(values, torch.Tensor):
            return f"{name} of shape {tuple(values.shape)}"
    return type(window).__name__
