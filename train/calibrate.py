"""Post-hoc logit adjustment: trade a little accuracy for recall on rare classes, chosen on
validation rows only.

Menon et al. 2021 ("Long-tail learning via logit adjustment", ICLR) show that subtracting
tau * log(prior) from a classifier's logits moves its decisions towards the balanced-error
optimum: tau = 1 is Bayes-optimal for the balanced error when the model's probabilities are
calibrated, tau = 0 leaves the model as trained. FER2013 is skewed (disgust is 1.5 % of the
training rows, happy 25 %), so a model trained on it predicts disgust rarely and its UAR (mean
per-class recall) trails its accuracy; this module measures that trade-off on the validation
split, picks tau there, and writes a new checkpoint whose final bias carries the shift. The
test split is never read here.

Why by hand: scikit-learn and torch have no logit adjustment; it is one subtraction, and the
choice of tau is a grid search over validation scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from train.evaluate import EvalConfig, EvalError, label_mapping, model_logits, read_rows


@dataclass(frozen=True)
class CalibrateConfig:
    max_acc_drop: float = 0.5  # percentage points of validation accuracy we accept to lose
    tau_max: float = 1.5
    tau_step: float = 0.05
    batch_size: int = 256
    device: str = "cpu"

    def __post_init__(self):
        if self.max_acc_drop < 0:
            raise EvalError(f"--max-acc-drop must be >= 0 points, got {self.max_acc_drop}")
        if self.tau_max < 0 or self.tau_step <= 0:
            raise EvalError(f"--tau-max must be >= 0 and --tau-step > 0, got {self.tau_max}, {self.tau_step}")

    def taus(self) -> np.ndarray:
        n = int(round(self.tau_max / self.tau_step))
        return np.round(np.arange(n + 1) * self.tau_step, 6)


def class_prior(train_manifest: Path, to_model: tuple, num_classes: int) -> np.ndarray:
    """Share of each model class among the manifest's split=train rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(train_manifest, columns=["split", "label_id"])
    ids = t.filter(pc.equal(t.column("split"), "train")).column("label_id").to_numpy()
    mapped = [to_model[i] for i in ids if to_model[i] is not None]
    if not mapped:
        raise EvalError(f"{train_manifest}: no split=train rows of the model's classes; pass the "
                        "manifest the model was trained on with --train-manifest")
    counts = np.bincount(mapped, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise EvalError(f"{train_manifest}: no training rows for class(es) "
                        f"{np.flatnonzero(counts == 0).tolist()}; the prior needs every class")
    return counts / counts.sum()


def adjustment_curve(logits: np.ndarray, targets: np.ndarray, log_prior: np.ndarray,
                     taus: np.ndarray) -> list[dict]:
    """Validation accuracy, UAR and macro-F1 of argmax(logits - tau * log_prior), per tau (scored
    by the trainer's own validation metrics)."""
    from train.metrics import LOG_NAMES, validation_scores

    y = np.asarray(targets, dtype=np.int64)
    return [{"tau": float(tau), **{LOG_NAMES[k]: v for k, v in
                                   validation_scores(logits - tau * log_prior, y, logits.shape[1]).items()}}
            for tau in taus]


def choose_tau(curve: list[dict], max_acc_drop: float) -> dict:
    """The row with the highest UAR whose accuracy is within `max_acc_drop` points of tau = 0
    (the model as trained); the smaller tau on ties. tau = 0 is always admissible."""
    base = curve[0]["acc"]
    ok = [r for r in curve if r["acc"] >= base - max_acc_drop / 100 - 1e-12]
    return max(ok, key=lambda r: (round(r["uar"], 12), -r["tau"]))


def calibrate(checkpoint: str | Path, val_manifest: str | Path | None, out_dir: str | Path,
              cfg: CalibrateConfig, train_manifest: str | Path | None = None,
              progress: Callable[[int], None] | None = None) -> dict:
    """Choose tau on `val_manifest`'s split=val rows and write `<out_dir>/best.safetensors`
    (+ sidecar) with the adjustment in its final bias, `calibrate.json` and `calibrate.png`."""
    import torch

    from features.manifest import ManifestError, atomic_write_bytes, file_sha256, open_manifest
    from train.checkpoint import checkpoint_paths, class_names, load_trained, preprocess_of, save_checkpoint

    t0 = time.perf_counter()
    model, sidecar = load_trained(checkpoint, cfg.device)
    source_weights, _ = checkpoint_paths(checkpoint)
    if (Path(out_dir) / "best.safetensors").resolve() == source_weights.resolve():
        raise EvalError(f"--out {out_dir} holds the checkpoint being calibrated, which would be replaced by its "
                        "adjusted copy; write to another folder (e.g. a RUN_la beside it)")
    if sidecar.get("logit_adjustment"):
        raise EvalError(f"{checkpoint} is already logit-adjusted (tau {sidecar['logit_adjustment']['tau']}); "
                        "calibrate the checkpoint it came from instead")
    if getattr(model, "input_kind", "image") != "image" or getattr(model, "needs_text", False):
        raise EvalError(f"{checkpoint}: calibrate takes image models; "
                        f"{sidecar['model']['name']} needs clips, features or captions")
    recorded = sidecar.get("manifests") or {}
    val_manifest = Path(val_manifest or recorded.get("val", {}).get("path", ""))
    train_manifest = Path(train_manifest or recorded.get("train", {}).get("path", ""))
    for flag, p, role in (("--val", val_manifest, "val"), ("--train-manifest", train_manifest, "train")):
        if not p.is_file():
            raise EvalError(f"{flag} {p} does not exist; pass the manifest (the checkpoint records "
                            f"{recorded.get(role, {}).get('path')} as its {role} manifest)")
    names = class_names(sidecar)
    try:
        _, vls = open_manifest(val_manifest)
        _, tls = open_manifest(train_manifest)
    except ManifestError as e:
        raise EvalError(str(e)) from None
    mapping = label_mapping(sidecar, vls, names, "none")
    tmapping = label_mapping(sidecar, tls, names, "none")
    rows = read_rows(val_manifest, "val", mapping, split_option=False)  # never test rows: tau is a training choice
    ecfg = EvalConfig(batch_size=cfg.batch_size, device=cfg.device, plots=False)
    logits = model_logits(model, preprocess_of(sidecar), rows, ecfg, "none", progress=progress)
    prior = class_prior(train_manifest, tmapping.to_model, len(names))
    log_prior = np.log(prior)
    curve = adjustment_curve(logits, rows.targets, log_prior, cfg.taus())
    best = choose_tau(curve, cfg.max_acc_drop)
    bias = -best["tau"] * log_prior
    model.add_logit_bias(torch.as_tensor(bias, dtype=torch.float32))
    block = {
        "method": "logit adjustment (Menon et al. 2021): logits - tau * log(train prior)",
        "tau": best["tau"], "bias": [float(b) for b in bias],
        "train_prior": dict(zip(names, map(float, prior))),
        "chosen_on": {"manifest": str(val_manifest), "split": "val", "rows": int(len(rows.targets)),
                      "sha256": file_sha256(val_manifest)},
        "rule": f"highest val UAR within {cfg.max_acc_drop} points of the unadjusted val accuracy",
        "val_before": {k: curve[0][k] for k in ("acc", "uar", "f1")},
        "val_after": {k: best[k] for k in ("acc", "uar", "f1")},
        "source": {"path": str(source_weights), "sha256": file_sha256(source_weights)},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"val_acc": best["acc"], "val_uar": best["uar"], "val_f1": best["f1"]}
    save_checkpoint(out_dir, model, {**sidecar, "logit_adjustment": block, "metrics": metrics})
    report = {"checkpoint": str(checkpoint), "out": str(out_dir), "config": asdict(cfg),
              "chosen": best, "curve": curve, "logit_adjustment": block,
              "seconds": round(time.perf_counter() - t0, 2)}
    text = json.dumps(report, indent=2)
    atomic_write_bytes(out_dir / "calibrate.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    from train.plots import logit_adjustment_curve

    report["plot"] = str(logit_adjustment_curve(curve, best["tau"], out_dir / "calibrate.png"))
    return report
