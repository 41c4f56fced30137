"""report.json (every number) and report.md (tables and plots together) for `train eval`.

The report dict is what `train.evaluate.evaluate` returns; this module only writes and renders
it, so a report can be re-rendered from its JSON (`render_markdown(json.load(...))`).
"""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    from features.manifest import atomic_write_bytes

    js = json.dumps(report, indent=2, default=str)
    jpath = atomic_write_bytes(out_dir / "report.json", lambda tmp: Path(tmp).write_text(js + "\n"))
    md = render_markdown(report)
    mpath = atomic_write_bytes(out_dir / "report.md", lambda tmp: Path(tmp).write_text(md))
    for p in (jpath, mpath):
        p.chmod(0o644)  # the temporary file it was renamed from was private (mkstemp)
    return jpath, mpath


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def render_markdown(report: dict) -> str:
    lm = report["label_mapping"]
    lines = [
        f"# Evaluation: {report.get('model')} on {Path(report['manifest']).name}",
        "",
        f"- checkpoint: `{report['checkpoint']}`",
        f"- manifest: `{report['manifest']}` (split `{report['split']}`, label set "
        f"`{report['manifest_label_set']['name']}`)",
        f"- {report['rows'].get('unit', 'row')}s scored: {report['rows']['scored']}; flagged as leaked from "
        f"training: {report['rows']['leaked']}",
    ]
    meta = report.get("checkpoint_meta") or {}
    if meta.get("metrics"):
        vals = ", ".join(f"{k} {v:.4f}" for k, v in meta["metrics"].items() if isinstance(v, (int, float)))
        lines.append(f"- checkpoint chosen at epoch {meta.get('epoch')} on {meta.get('selected_on')}: {vals}")
    if lm["zero_shot"]:
        lines.append(f"- **zero-shot** through the label mapping; scored classes: "
                     f"{', '.join(lm['scored_classes'])}; "
                     f"excluded manifest classes: {', '.join(lm['excluded_manifest_classes']) or 'none'}")
    if report.get("members"):
        lines += ["", "## Ensemble members (each alone, all rows)", "",
                  "| checkpoint | mode | WAR | UAR | macro-F1 |", "|---|---|---|---|---|"]
        for m in report["members"]:
            for mode, s in m.items():
                if mode != "checkpoint":
                    lines.append(f"| `{m['checkpoint']}` | {mode} | {_pct(s['war'])} | {_pct(s['uar'])} | "
                                 f"{_pct(s['macro_f1'])} |")
        lines += ["", "The ensemble scores below average the members' probabilities."]
    lines += ["", "## Accuracy by variant", "",
              "| variant | mode | n | WAR (accuracy) | UAR | macro-F1 | ECE |", "|---|---|---|---|---|---|---|"]
    for vname, modes in report["variants"].items():
        for mode, s in modes.items():
            lines.append(f"| {vname} | {mode} | {s['n']} | {_pct(s['war'])} | {_pct(s['uar'])} | "
                         f"{_pct(s['macro_f1'])} | {s['ece']:.4f} |")
    lines += ["", "TTA numbers are reported beside the plain ones, never instead of them.", "",
              "## Per class (all rows, plain)", "",
              "| class | precision | recall | F1 | support | ROC-AUC | PR-AUC |", "|---|---|---|---|---|---|---|"]
    for name, c in report["variants"]["all"]["plain"]["per_class"].items():
        auc = "—" if c["roc_auc"] is None else f"{c['roc_auc']:.3f}"
        ap = "—" if c["pr_auc"] is None else f"{c['pr_auc']:.3f}"
        lines.append(f"| {name} | {_pct(c['precision'])} | {_pct(c['recall'])} | {_pct(c['f1'])} | "
                     f"{c['support']} | {auc} | {ap} |")
    titles = {"confusion_counts": "Confusion matrix (counts)",
              "confusion_normalised": "Confusion matrix (row-normalised)",
              "roc": "ROC curves", "pr": "Precision-recall curves", "reliability": "Reliability diagram",
              "tsne": "t-SNE of forward_features", "training_curves": "Training curves (run log)"}
    if report.get("plots"):
        lines += ["", "## Plots", ""]
        for key, fname in report["plots"].items():
            lines += [f"### {titles.get(key, key)}", "", f"![{key}]({fname})", ""]
    lines.append(f"\n_{report['seconds']} s on {report['config']['device']}._\n")
    return "\n".join(lines)
