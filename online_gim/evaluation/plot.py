"""Figure of an evaluation: per-module probe accuracy per method, and the learning curve(s).

Three panels: phone accuracy per module (one line per layered method, MFCC as a dashed level),
speaker-per-frame accuracy per module, and the learning curve (top-module phone and speaker
accuracy vs minutes of stream) of the methods that have one, with ``random`` and ``mfcc`` as
dashed levels. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

from online_gim.evaluation.results import EvaluationReport


def _percent(value: float | None) -> float:
    return float("nan") if value is None else 100 * value


def plot_report(report: EvaluationReport, path: str | Path) -> None:
    """Draws the figure into ``path`` (the format follows the extension, e.g. ``.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    levels = {name: report.methods[name] for name in ("random", "mfcc") if name in report.methods}
    for axis, key, title in ((axes[0], "phone_acc", "phones per frame"), (axes[1], "speaker_acc_frame", "speakers per frame")):
        for name, result in report.methods.items():
            if result.per_module:
                modules = [m.module for m in result.per_module]
                axis.plot(modules, [_percent(getattr(m, key)) for m in result.per_module], marker="o", label=name)
        if "mfcc" in levels:
            axis.axhline(_percent(getattr(levels["mfcc"].top, key)), color="grey", linestyle="--", label="mfcc")
        axis.set(title=f"Linear probe per module: {title}", xlabel="module (0 = lowest conv)", ylabel="test accuracy (%)")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    curve_axis = axes[2]
    curves = {name: result.learning_curve for name, result in report.methods.items() if result.learning_curve}
    for name, curve in curves.items():
        minutes = [point.minutes for point in curve]
        curve_axis.plot(minutes, [_percent(p.phone_acc) for p in curve], marker="o", label=f"{name}: phones")
        curve_axis.plot(minutes, [_percent(p.speaker_acc_frame) for p in curve], marker="s", label=f"{name}: speakers/frame")
    for (name, result), style in zip(levels.items(), (":", "--")):
        for key, color, task in (("phone_acc", "tab:blue", "phones"), ("speaker_acc_frame", "tab:orange", "speakers/frame")):
            curve_axis.axhline(_percent(getattr(result.top, key)), color=color, linestyle=style, label=f"{name}: {task}")
    curve_axis.set(
        title="Learning curve (top module)" if curves else "Learning curve (none measured)",
        xlabel="minutes of stream",
        ylabel="test accuracy (%)",
    )
    curve_axis.grid(alpha=0.3)
    curve_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
