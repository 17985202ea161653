"""Markdown tables of an evaluation, in the format of the seeds' tables (METHOD.md section 6)."""

from __future__ import annotations

from online_gim.evaluation.results import Accuracies, EvaluationReport

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


def _row(accuracies: Accuracies) -> str:
    return (f"{percent(accuracies.phone_acc)} | {percent(accuracies.phone_acc_no_silence)} | "
            f"{percent(accuracies.speaker_acc_frame)} | {percent(accuracies.speaker_acc_utt)}")


def markdown_tables(report: EvaluationReport) -> str:
    """The method table (test accuracy in %, top module, with the majority-class row), the
    per-module table (phones / speakers per frame), the per-class phone table and the learning curves."""
    corpus = report.corpus
    replay = corpus.get("replay") or {}
    replayed = f", {replay['ratio']:g} replayed updates per window" if replay.get("ratio") else ""
    stream = corpus.get("train_stream", "the train split")
    source = "" if stream == "the train split" else f" of {', '.join(stream)}"
    loaded = "; a `state:` learner as its `listen --state` run left it" if any(n.startswith("state:") for n in report.methods) else ""
    lines = [
        f"Linear probes, test accuracy in % ({corpus['train_utterances']} train / {corpus['test_utterances']} test "
        f"utterances, {corpus['speakers']} speakers, split: {corpus['split']}, seed {corpus['seed']}; "
        f"each learner trained online on {corpus['train_minutes']:g} min of stream{source}{replayed}"
        f"{loaded}).",
        "",
        "| method | BP-free | phones | phones w/o silence | speakers (frame) | speakers (utterance) "
        "| stream (min) | compute RTF | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| majority class | yes | {_row(report.majority)} | - | - | - |",
    ]
    for name, result in report.methods.items():
        rtf = f"{result.compute_rtf:.2f}" if result.compute_rtf is not None else "-"
        wall = "cached" if result.cached else f"{result.wall_seconds:.0f}"
        lines.append(
            f"| {METHOD_TITLES.get(name, name)} (`{name}`) | {result.bp_free} | {_row(result.top)} | "
            f"{result.train_seconds_audio / 60:.1f} | {rtf} | {wall} |"
        )
    layered = {name: result for name, result in report.methods.items() if result.per_module}
    probed = sorted({m.module for result in layered.values() for m in result.per_module})
    if len(probed) > 1:  # with only the top module probed, the table above says it all
        lines += [
            "",
            "Per module (0 = lowest conv module; the GRU, if any, last): phones / speakers per frame, in %.",
            "",
            "| module | " + " | ".join(f"`{name}`" for name in layered) + " |",
            "|---|" + "---|" * len(layered),
        ]
        for module in probed:
            cells = []
            for result in layered.values():
                found = [m for m in result.per_module if m.module == module]
                cells.append(f"{percent(found[0].phone_acc)} / {percent(found[0].speaker_acc_frame)}" if found else "")
            lines.append(f"| {module} | " + " | ".join(cells) + " |")
    lines += _class_table(report)
    curves = {name: result.learning_curve for name, result in report.methods.items() if result.learning_curve}
    every = report.corpus.get("curve_every", 1)
    subset = f", probed on one utterance in {every} of each split" if every > 1 else ""
    for name, curve in curves.items():
        lines += [
            "",
            f"Learning curve of `{name}` (top module{subset}): phones / speakers per frame, in %, after each stretch of stream.",
            "",
            "| stream (min) | " + " | ".join(f"{point.minutes:.2f}" for point in curve) + " |",
            "|---|" + "---|" * len(curve),
            "| accuracy | " + " | ".join(f"{percent(p.phone_acc)} / {percent(p.speaker_acc_frame)}" for p in curve) + " |",
        ]
    return "\n".join(lines) + "\n"


def _class_table(report: EvaluationReport) -> list[str]:
    """Per phone class of the test split: support and each method's recall (top module), with the
    balanced accuracy (mean recall) as the last row."""
    methods = {name: result for name, result in report.methods.items() if result.phone_classes}
    if not methods:
        return []
    first = next(iter(methods.values())).phone_classes
    lines = [
        "",
        "Phone probe per class (top module): recall in % of each class's test frames.",
        "",
        "| class | test frames | " + " | ".join(f"`{name}`" for name in methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for index, row in enumerate(first):
        recalls = [percent(result.phone_classes[index].recall) for result in methods.values()]
        lines.append(f"| {row.name or row.label} | {row.support} | " + " | ".join(recalls) + " |")
    balanced = [percent(result.phone_balanced_acc) for result in methods.values()]
    lines.append("| **balanced accuracy** | | " + " | ".join(balanced) + " |")
    return lines
