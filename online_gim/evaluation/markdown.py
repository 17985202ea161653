"""Markdown tables of an evaluation, in the format of the seeds' tables (METHOD.md section 6)."""

from __future__ import annotations

from online_gim.evaluation.results import EvaluationReport

METHOD_TITLES = {
    "random": "random init",
    "mfcc": "MFCC features",
    "cpc_e2e": "CPC (end-to-end InfoNCE)",
    "gim_infonce": "GIM (greedy InfoNCE)",
    "gim_no_gar": "GIM without g_ar",
    "hinge_cpc_e2e": "Hinge Loss CPC (end-to-end)",
    "clapp_bptt": "CLAPP (layer-wise hinge), GRU with BPTT",
    "clapp_eprop": "CLAPP with e-prop GRU",
}
"""Row titles as METHOD.md section 6 names the methods; other presets keep their names."""


def percent(value: float | None) -> str:
    """``0.617`` -> ``61.7``; ``None`` -> ``-``."""
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_tables(report: EvaluationReport) -> str:
    """The method table (test accuracy in %, top module) and the per-module table (phones / speakers per frame)."""
    corpus = report.corpus
    lines = [
        f"Linear probes, test accuracy in % ({corpus['train_utterances']} train / {corpus['test_utterances']} test "
        f"utterances, {corpus['speakers']} speakers, split: {corpus['split']}, seed {corpus['seed']}; "
        f"each learner trained online on {corpus['train_minutes']:g} min of stream).",
        "",
        "| method | BP-free | phones | speakers (frame) | speakers (utterance) | stream (min) | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in report.methods.items():
        lines.append(
            f"| {METHOD_TITLES.get(name, name)} (`{name}`) | {result.bp_free} | {percent(result.phone_acc)} | "
            f"{percent(result.speaker_acc_frame)} | {percent(result.speaker_acc_utt)} | "
            f"{result.train_seconds_audio / 60:.1f} | {result.wall_seconds:.0f} |"
        )
    layered = {name: result for name, result in report.methods.items() if result.per_module}
    if layered:
        depth = max(len(result.per_module) for result in layered.values())
        lines += [
            "",
            "Per module (0 = lowest conv module; the GRU, if any, last): phones / speakers per frame, in %.",
            "",
            "| module | " + " | ".join(f"`{name}`" for name in layered) + " |",
            "|---|" + "---|" * len(layered),
        ]
        for module in range(depth):
            cells = []
            for result in layered.values():
                found = [m for m in result.per_module if m.module == module]
                cells.append(f"{percent(found[0].phone_acc)} / {percent(found[0].speaker_acc_frame)}" if found else "")
            lines.append(f"| {module} | " + " | ".join(cells) + " |")
    curves = {name: result.learning_curve for name, result in report.methods.items() if result.learning_curve}
    for name, curve in curves.items():
        lines += [
            "",
            f"Learning curve of `{name}` (top module): phones / speakers per frame, in %, after each stretch of stream.",
            "",
            "| stream (min) | " + " | ".join(f"{point.minutes:.2f}" for point in curve) + " |",
            "|---|" + "---|" * len(curve),
            "| accuracy | " + " | ".join(f"{percent(p.phone_acc)} / {percent(p.speaker_acc_frame)}" for p in curve) + " |",
        ]
    return "\n".join(lines) + "\n"
