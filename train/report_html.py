"""report.html for `train eval --html`: one self-contained page (tables and every plot embedded).

It renders the report dict that `train.evaluate.evaluate` returns (or its report.json) with the
plot files that evaluation wrote beside it; each plot is inlined as a base64 data URI, so the
page needs no network and no neighbouring files: it opens from disk, mails, and archives as one
file. The page itself is a Jinja2 template (train/templates/report.html.j2, autoescaped) rather
than strings glued in Python.
"""

from __future__ import annotations

import base64
import datetime as _dt
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html.j2"
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
TITLES = {"confusion_counts": "Confusion matrix (counts)",
          "confusion_normalised": "Confusion matrix (row-normalised)",
          "roc": "ROC curves (one-vs-rest)", "pr": "Precision-recall curves (one-vs-rest)",
          "reliability": "Reliability diagram", "tsne": "t-SNE of forward_features",
          "training_curves": "Training curves (run log)",
          "worst_confused": "Worst-confused examples (most confident mistakes, all rows, plain)"}
WIDE = {"training_curves", "worst_confused"}  # figures that span the page's width


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def _num3(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def figures(report: dict, out_dir: Path) -> tuple[list[dict], list[str]]:
    """The report's plots as data-URI records, in the report's order; and the names not found."""
    out, missing = [], []
    for key, fname in (report.get("plots") or {}).items():
        path = Path(out_dir) / fname
        mime = MIME.get(path.suffix.lower())
        if mime is None or not path.is_file():
            missing.append(str(fname))
            continue
        out.append({"key": key, "title": TITLES.get(key, key), "mime": mime, "wide": key in WIDE,
                    "data": base64.b64encode(path.read_bytes()).decode("ascii")})
    return out, missing


def render_html(report: dict, out_dir: str | Path, command: str = "") -> str:
    """The report dict (+ the plot files in `out_dir`) -> one HTML document as a string.

    `command` is the command line that made the report, shown verbatim. Plots named in the
    report but missing on disk are listed in the page, not fatal."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["num3"] = _num3
    figs, missing = figures(report, Path(out_dir))
    meta = report.get("checkpoint_meta") or {}
    meta_metrics = ", ".join(f"{k} {v:.4f}" for k, v in (meta.get("metrics") or {}).items()
                             if isinstance(v, (int, float)))
    title = f"Evaluation: {report.get('model')} on {Path(report['manifest']).name}"
    return env.get_template(TEMPLATE.name).render(
        title=title, report=report, command=command or "(not recorded)", figures=figs, missing=missing,
        meta_metrics=meta_metrics,
        written=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write_html(report: dict, out_dir: str | Path, command: str = "") -> Path:
    """Write out_dir/report.html atomically (a reader never sees half a page)."""
    from features.manifest import atomic_write_bytes

    html = render_html(report, out_dir, command)
    path = atomic_write_bytes(Path(out_dir) / "report.html",
                              lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    path.chmod(0o644)  # the temporary file it was renamed from was private (mkstemp)
    return path
