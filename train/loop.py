"""The training loop: small functions (torchvision's references style) and `fit`, which wires
them together for one run.

`prepare_run` reads and builds everything once (manifests, label set, model, data, loss,
teacher, checkpoint sidecar with the whole TrainConfig in it); `fit` is the epoch loop:
`next_phase` (a model that unfreezes), `train_one_epoch`, `validate`, `end_epoch` (schedule,
best epoch, checkpoints, resume state, logs).

Quiet by design: `fit` reports through an optional `progress(event: dict)` callback; the CLI
turns the events into a rich display.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from train.config import TrainConfig
from train.metrics import LOG_NAMES, validation_scores

Progress = Callable[[dict], None]


class TrainError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class NonFiniteLoss(TrainError):
    pass


# ---- pieces ------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_loss(cfg: TrainConfig, weight=None, device: str = "cpu"):
    """loss_fn(outputs, target, model) -> scalar; outputs is the model's with_aux dict.
    ce and focal come from train/losses.py (they cast logits to float themselves)."""
    from train.losses import build_loss
    from train.models.base import logits_of

    if cfg.loss in ("ce", "focal"):
        opts = {"label_smoothing": cfg.label_smoothing, "class_weights": weight}
        if cfg.loss == "focal":
            opts["gamma"] = cfg.focal_gamma
        crit = build_loss(cfg.loss, **opts).to(device)

        def plain(outputs, target, model):
            return crit(logits_of(outputs).float(), target)

        return _distilled(plain, cfg)

    def own(outputs, target, model):
        loss = _bare(model).loss(outputs, target)
        if loss is None:
            raise TrainError(f"--loss cmaen: model {_bare(model).model_name!r} has no loss of its own "
                             "(only cmaen does); use --loss ce or focal")
        return loss.float()

    return _distilled(own, cfg)


def _distilled(hard, cfg: TrainConfig):
    """The hard loss, plus the soft-target term when a teacher's logits come with the batch."""
    from train.losses import distill_kl
    from train.models.base import logits_of

    if not cfg.teacher:
        return hard
    alpha, temp = cfg.distill_alpha, cfg.distill_temperature

    def loss_fn(outputs, target, model, teacher_logits=None):
        loss = hard(outputs, target, model)
        if teacher_logits is None:
            return loss
        return (1 - alpha) * loss + alpha * distill_kl(logits_of(outputs), teacher_logits, temp)

    return loss_fn


def _bare(model):
    from train.checkpoint import unwrap

    return unwrap(model)


def param_groups(model, epoch: int, lr: float) -> list[dict]:
    groups = _bare(model).param_groups(epoch, lr)
    if groups is None:
        groups = [{"params": [p for p in model.parameters()], "lr": lr}]
    return groups


def _group_key(groups: list[dict]) -> tuple:
    return tuple((tuple(id(p) for p in g["params"]), g.get("lr")) for g in groups)


def make_optimizer(cfg: TrainConfig, groups: list[dict]):
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=True)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer, epochs_done: int = 0):
    """Stepped once per epoch (the same on every DDP rank, whatever its share of batches).
    `epochs_done` fast-forwards a scheduler built mid-run (after a param-group change).

    A param group with `fixed_lr: True` (clip-adapter's encoder, as in its seed) keeps its LR
    whatever the schedule. With such a group, or with the seeds' schedule options (min_lr,
    restart_*), the schedule is one LambdaLR with a factor per group (`lr_factor`); otherwise
    torch's own scheduler classes, as before, so earlier runs resume unchanged."""
    from torch.optim import lr_scheduler

    groups = optimizer.param_groups
    fixed = [bool(g.get("fixed_lr")) for g in groups]
    main_epochs = max(1, cfg.epochs - cfg.warmup)
    if cfg.scheduler == "plateau":
        floors = [g["lr"] if f else cfg.min_lr for g, f in zip(groups, fixed)]
        sched = lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.plateau_factor,
                                    patience=cfg.plateau_patience, min_lr=floors)
    elif cfg.scheduler == "onecycle":
        if any(fixed):
            raise TrainError("--scheduler onecycle moves every group's LR; this model keeps a group "
                             "at a fixed LR (clip-adapter's encoder): use cosine, none or plateau")
        sched = lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups], total_steps=main_epochs + 1)
    elif any(fixed) or cfg.min_lr or cfg.restart_period is not None or cfg.restart_mult != 1 \
            or cfg.restart_decay != 1 or cfg.restart_warmup:
        base = [g.get("initial_lr", g["lr"]) for g in groups]
        sched = lr_scheduler.LambdaLR(optimizer, [(lambda e: 1.0) if f else _factor_fn(cfg, lr)
                                       for f, lr in zip(fixed, base)])
    else:
        if cfg.scheduler == "none":
            sched = lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
        elif cfg.scheduler == "cosine":
            sched = lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_epochs)
        else:
            sched = lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=max(1, main_epochs // 3))
        if cfg.warmup:
            warm = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=cfg.warmup)
            sched = lr_scheduler.SequentialLR(optimizer, [warm, sched], milestones=[cfg.warmup])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": intended here
        for _ in range(epochs_done):
            step_scheduler(sched, None)
    return sched


def _factor_fn(cfg: TrainConfig, base_lr: float):
    return lambda epoch: lr_factor(cfg, epoch, base_lr)


def lr_factor(cfg: TrainConfig, epoch: int, base_lr: float | None = None) -> float:
    """LR of 0-based `epoch` as a multiple of the group's `base_lr` (default cfg.lr).

    none: 1. cosine: base -> min_lr over the epochs after warm-up (torch's CosineAnnealingLR
    with eta_min). cosine-restarts: the CMAEN seed's CosineAnnealingWarmupRestarts
    (CMAEN utils.py:59-122, stepped per epoch): cycle c starts at min_lr, climbs linearly to
    its peak base * restart_decay**c over `restart_warmup` epochs, then follows a cosine back
    to min_lr; the first cycle lasts `restart_period` epochs (default (epochs - warmup) // 3)
    and the next int((previous - restart_warmup) * restart_mult) + restart_warmup
    (utils.py:104). `warmup` (before any of these) is torch's LinearLR from 0.1 x base.
    Hand-written because torch has no restart schedule with warm-up and per-cycle decay."""
    base = cfg.lr if base_lr is None else base_lr
    floor = min(cfg.min_lr / base, 1.0)
    if epoch < cfg.warmup:
        return 0.1 + 0.9 * epoch / cfg.warmup
    e = epoch - cfg.warmup
    main_epochs = max(1, cfg.epochs - cfg.warmup)
    if cfg.scheduler == "none":
        return 1.0
    if cfg.scheduler == "cosine":
        t = min(e, main_epochs) / main_epochs
        return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2
    w = cfg.restart_warmup
    length = cfg.restart_period if cfg.restart_period is not None else max(w + 1, main_epochs // 3)
    cycle = 0
    while e >= length:
        e -= length
        cycle += 1
        length = int((length - w) * cfg.restart_mult) + w
    peak = cfg.restart_decay ** cycle
    if e < w:
        return floor + (peak - floor) * e / w
    return floor + (peak - floor) * (1 + math.cos(math.pi * (e - w) / (length - w))) / 2


def step_scheduler(sched, metric: float | None) -> None:
    from torch.optim import lr_scheduler

    if isinstance(sched, lr_scheduler.ReduceLROnPlateau):
        if metric is not None:
            sched.step(metric)
    else:
        sched.step()


def autocast(device: str, amp: bool, dtype: str):
    """--amp through features.device.autocast: fp16 only on CUDA (with its GradScaler), else bf16."""
    from features.device import autocast as device_autocast

    fp16 = dtype == "fp16" and device.startswith("cuda")
    return device_autocast(device, ("fp16" if fp16 else "bf16") if amp else None)


@dataclass
class BatchPrep:
    """Moves a raw batch to the device, augments (training only) and normalises."""

    device: str
    preprocess: Any = None
    augment: Any = None
    channels_last: bool = False

    def __call__(self, batch: dict, train: bool) -> dict:
        import torch

        x = batch["x"].to(self.device, non_blocking=True)
        if self.preprocess is not None:  # images/clips arrive as uint8
            if train and self.augment is not None:
                x = self.augment(x)
            x = self.preprocess.normalize(x)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        out = {"x": x, "y": batch["y"].to(self.device), "index": batch["index"]}
        if batch.get("soft") is not None:  # probability targets (--targets votes), training only
            out["soft"] = batch["soft"].to(self.device)
        for k in ("text", "text_mask"):
            v = batch.get(k)
            out[k] = v.to(self.device) if v is not None else None
        return out


def compute_loss(loss_fn, outputs, target, model, teacher_logits=None):
    if teacher_logits is None:
        return loss_fn(outputs, target, model)
    return loss_fn(outputs, target, model, teacher_logits=teacher_logits)


def load_teacher(cfg: TrainConfig, class_names, preprocess, device: str):
    """The --teacher checkpoint(s), frozen, in eval mode with BatchNorm folded (they only infer);
    several make an `EnsembleTeacher`. Returns (teacher, [sidecar per checkpoint]).

    Each must predict the student's classes in the same order. It sees the very batch the
    student trains on; a teacher with other preprocessing gets it through `AdaptedTeacher`."""
    nets, sides = [], []
    for path in cfg.teacher:
        net, side = _one_teacher(path, class_names, preprocess, device)
        nets.append(net)
        sides.append(side)
    return (nets[0] if len(nets) == 1 else EnsembleTeacher(nets)), sides


def _one_teacher(path: str, class_names, preprocess, device: str):
    from train.checkpoint import class_names as names_of, load_checkpoint, preprocess_of
    from train.models.base import fold_batchnorm

    teacher, side = load_checkpoint(path, device=device)
    if list(names_of(side)) != list(class_names):
        raise TrainError(f"--teacher {path} predicts {list(names_of(side))}, the student "
                         f"{list(class_names)}; distil from a checkpoint trained on the same classes")
    if side.get("input", {}).get("needs_text") or side.get("input", {}).get("kind", "image") != "image":
        raise TrainError(f"--teacher {path} is not an image-only model; distil from one that "
                         "reads face images alone")
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher = fold_batchnorm(teacher.eval())
    theirs = preprocess_of(side)
    if preprocess is None:
        raise TrainError("--teacher: the student reads no images; distillation needs an image model")
    if theirs != preprocess:
        teacher = AdaptedTeacher(teacher, preprocess, theirs)
    return teacher, side


class EnsembleTeacher:
    """Several frozen teachers as one: the mean of their logits (B, K) on the same batch, the
    soft targets of ensemble distillation (Hinton et al. 2015, sec. 3). Averaging logits rather
    than probabilities keeps the temperature's meaning: softmax(mean logits / T)."""

    def __init__(self, nets):
        self.nets = list(nets)

    def __call__(self, x):
        import torch

        return torch.stack([net(x).float() for net in self.nets]).mean(0)

    def to(self, *args, **kwargs):
        for net in self.nets:
            net.to(*args, **kwargs)
        return self


def init_from(model, path) -> None:
    """Copy a trained checkpoint's weights into `model` (fine-tuning). The checkpoint must be the
    same registered model with the same config (its ImageNet `pretrained` start aside)."""
    import dataclasses

    from train.checkpoint import load_checkpoint

    src, side = load_checkpoint(path)
    strip = {f.name: None for f in dataclasses.fields(model.config) if f.name.endswith("pretrained")}
    if (src.model_name != model.model_name
            or dataclasses.replace(src.config, **strip) != dataclasses.replace(model.config, **strip)):
        raise TrainError(f"--init {path} is a {src.model_name} with {dataclasses.asdict(src.config)}; "
                         f"the run builds {model.model_name} with {dataclasses.asdict(model.config)}. "
                         "Pass the same --model and --model-opt values the checkpoint was trained with")
    model.load_state_dict(src.state_dict())


class AdaptedTeacher:
    """A teacher that reads other input than the student (another size, channel count or
    statistics, e.g. a 96 px RGB ImageNet backbone teaching a 48 px grey net): the student's
    normalised batch (B,C,H,W) is turned back into [0,1] pixels, resized (bilinear, antialiased,
    as `Preprocess` resizes), converted grey<->RGB and normalised with the teacher's statistics.
    Same augmented faces, each network at its own resolution."""

    def __init__(self, net, student, teacher):
        self.net, self.student, self.teacher = net, student, teacher

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        def stats(p, ref):
            shape = (1, p.channels, 1, 1)
            return (torch.tensor(p.mean, dtype=ref.dtype, device=ref.device).view(shape),
                    torch.tensor(p.std, dtype=ref.dtype, device=ref.device).view(shape))

        m, s = stats(self.student, x)
        px = x * s + m
        if tuple(px.shape[-2:]) != tuple(self.teacher.size):
            px = F.interpolate(px, size=self.teacher.size, mode="bilinear", align_corners=False,
                               antialias=True)
        if self.teacher.channels == 3 and px.shape[1] == 1:
            px = px.expand(-1, 3, -1, -1)
        elif self.teacher.channels == 1 and px.shape[1] == 3:  # ITU-R 601 luma, as PIL's "L"
            px = (px * torch.tensor([0.299, 0.587, 0.114], dtype=px.dtype,
                                    device=px.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        m, s = stats(self.teacher, px)
        return self.net((px - m) / s)

    def to(self, *args, **kwargs):
        self.net.to(*args, **kwargs)
        return self




def train_one_epoch(model, loss_fn, optimizer, loader, prep: BatchPrep, *, amp: bool = False,
                    amp_dtype: str = "bf16", scaler=None, clip_grad: float | None = None,
                    dist_info=None, progress: Progress | None = None, epoch: int = 0,
                    teacher=None) -> dict:
    """One pass over `loader`; returns {"loss": mean loss, "steps", "samples"}. With a teacher
    (frozen), its logits on the same augmented batch go to the loss (distillation).

    Raises NonFiniteLoss (on every rank) as soon as a loss is nan/inf, before the optimiser
    touches the weights, so the last saved checkpoint stays the last good one."""
    import torch

    from train.distributed import DistInfo, any_true, join

    info = dist_info or DistInfo(device=prep.device)
    model.train()
    total, n, steps = 0.0, 0, 0
    with join(model, info):
        for batch in loader:
            b = prep(batch, train=True)
            with autocast(prep.device, amp, amp_dtype):
                outputs = model(b["x"], b["text"], b["text_mask"], with_aux=True)
                t_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(b["x"]).float()
            target = b["soft"] if b.get("soft") is not None else b["y"]
            loss = compute_loss(loss_fn, outputs, target, model, t_logits)
            bad = not torch.isfinite(loss.detach()).item()
            if any_true(bad, info, prep.device if prep.device.startswith("cuda") else "cpu"):
                raise NonFiniteLoss(f"loss became {loss.item() if bad else 'nan/inf on another rank'} "
                                    f"at epoch {epoch + 1}, step {steps + 1}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
            k = int(b["y"].shape[0])
            total += float(loss.detach()) * k
            n += k
            steps += 1
            if progress:
                progress({"kind": "step", "epoch": epoch, "step": steps, "steps": len(loader),
                          "loss": float(loss.detach())})
    return {"loss": total / max(n, 1), "steps": steps, "samples": n}


def validate(model, loader, prep: BatchPrep, *, amp: bool = False, amp_dtype: str = "bf16",
             dist_info=None):
    """(logits float32 (N,K), targets (N,)) over the loader's rows, gathered across ranks and
    in row order, so any world size gives the same answer as one process."""
    import torch

    from train.distributed import DistInfo, gather_eval

    info = dist_info or DistInfo(device=prep.device)
    model.eval()
    logits, targets, index = [], [], []
    net = _bare(model)  # no gradient sync needed, and DDP would broadcast buffers each call
    with torch.no_grad():
        for batch in loader:
            b = prep(batch, train=False)
            with autocast(prep.device, amp, amp_dtype):
                out = net(b["x"], b["text"], b["text_mask"])
            logits.append(out.float().cpu())
            targets.append(b["y"].cpu())
            index.append(b["index"].cpu())
    if logits:
        lg, tg, ix = torch.cat(logits), torch.cat(targets), torch.cat(index)
    else:
        k = net.config.num_classes
        lg, tg, ix = torch.zeros((0, k)), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    lg, tg, _ = gather_eval(lg, tg, ix, info)
    return lg, tg


# ---- one run -----------------------------------------------------------------------------

class RunLog:
    """Per-epoch rows to log.jsonl and log.csv (rank 0), and TensorBoard when asked and installed."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.run_dir = run_dir
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                warnings.warn("--tensorboard: the tensorboard package is not installed; logging to "
                              "log.jsonl/log.csv only", stacklevel=2)

    def write(self, row: dict, history: list[dict]) -> None:
        """Both logs are rewritten from the history the resume state carries, so a run
        interrupted anywhere and resumed never shows an epoch twice or misses one."""
        import io

        from features.manifest import atomic_write_bytes

        text = "".join(json.dumps(r) + "\n" for r in history)
        atomic_write_bytes(self.run_dir / "log.jsonl", lambda tmp: Path(tmp).write_text(text))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in history for k in r)))
        w.writeheader()
        w.writerows(history)
        atomic_write_bytes(self.run_dir / "log.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float | int) and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()


@dataclass
class Run:
    """What one run reads and builds before its first epoch (each manifest opened once, the
    label preset applied once): the loop below only moves it forward."""

    run_dir: Path
    class_names: tuple[str, ...]
    model: Any  # the bare model
    net: Any  # what trains: the model, or DDP around it
    trainable: tuple[bool, ...]  # which parameters were trainable when `net` was wrapped
    train_data: Any
    val_data: Any
    train_loader: Any
    val_loader: Any
    prep: BatchPrep
    loss_fn: Callable
    teacher: Any
    scaler: Any
    sidecar: dict  # written beside every checkpoint, with the epoch's metrics added


def _open_manifests(cfg: TrainConfig):
    """(train label set, val path, val label set), each manifest checked once."""
    from features.manifest import open_manifest
    from train.data import DataError, sibling_val

    train = open_manifest(cfg.manifest)
    val_path = cfg.val or sibling_val(cfg.manifest)
    if val_path is None:
        raise TrainError(f"no validation manifest: pass --val, or put one beside {cfg.manifest} "
                         "(fer_train.parquet -> fer_val.parquet). Validation comes from the "
                         "training split (`pipeline ingest` carves it); never from test")
    val = open_manifest(val_path)
    ls, vls = train[1], val[1]
    if vls.names != ls.names:
        raise DataError(f"{val_path} uses label set {vls.name!r} {list(vls.names)}, the train "
                        f"manifest {ls.name!r} {list(ls.names)}; they must match")
    return train, val_path, val


def _build_model(cfg: TrainConfig, ls, class_names):
    from train.data import DataError
    from train.models.registry import build_model

    opts = dict(cfg.model_options)
    if opts.get("num_classes") not in (None, len(class_names)):
        raise DataError(f"model option num_classes={opts['num_classes']} does not match the "
                        f"{len(class_names)} classes of label set {ls.name!r} with preset "
                        f"{cfg.preset} ({', '.join(class_names)})")
    opts["num_classes"] = len(class_names)
    if cfg.frames is not None:
        opts["frames"] = cfg.frames
    try:
        model = build_model(cfg.model, **opts)
    except (TypeError, ValueError) as e:
        if not cfg.model_options:  # nothing the user gave: a bug, with its traceback
            raise
        raise DataError(f"--model-opt: {cfg.model} cannot be built with {dict(cfg.model_options)}: {e}") from None
    if cfg.init is not None:
        init_from(model, cfg.init)
    return model


def prepare_run(cfg: TrainConfig, info, emit: Progress) -> Run:
    """Manifests, label set, model, data, loaders, loss, teacher and sidecar for `cfg`."""
    import torch

    from train import data
    from train.checkpoint import RESUME_FILE
    from train.distributed import wrap
    from train.transforms import build_augment

    run_dir = Path(cfg.out)
    if (run_dir / RESUME_FILE).exists() and not cfg.resume:
        raise TrainError(f"{run_dir} already holds a run; pass --resume to continue it or "
                         "choose another --out")
    train_manifest, val_path, val_manifest = _open_manifests(cfg)
    ls = train_manifest[1]
    classes = data.class_map(ls, cfg.preset, cfg.classes, Path(cfg.manifest))  # val: the same names
    class_names = classes[0]
    seed_everything(cfg.seed)
    model = _build_model(cfg, ls, class_names)
    spec = data.input_spec_for(model)
    if cfg.eval_resize and spec.preprocess is not None:  # recipe: Resize(n) + CenterCrop
        spec = replace(spec, preprocess=replace(spec.preprocess, resize_short=cfg.eval_resize))
    teacher, teacher_side = None, None
    if cfg.teacher:  # before the manifests are decoded: a bad teacher is refused in a second
        teacher, teacher_side = load_teacher(cfg, class_names, spec.preprocess, info.device)
        emit({"kind": "status", "text": f"distilling from {', '.join(cfg.teacher)}"
                                        + (" (an ensemble teacher: the mean of their logits)"
                                           if len(cfg.teacher) > 1 else "")})
    # transient: the line after it says what was loaded, or the error says why nothing was
    emit({"kind": "status", "text": f"loading {cfg.manifest} and {val_path}", "transient": True})
    t0 = time.perf_counter()
    load = dict(spec=spec, preset=cfg.preset, text_features=cfg.text_features,
                image_features=cfg.image_features, workers=cfg.workers, classes=cfg.classes,
                class_mapping=classes)
    train_data = data.load_split(cfg.manifest, "train", targets=cfg.targets, vote_weight=cfg.vote_weight,
                                 opened=train_manifest, **load)
    val_data = data.load_split(val_path, "val", opened=val_manifest, **load)  # scored on (majority) labels
    emit({"kind": "status", "text": f"{len(train_data)} train / {len(val_data)} val items "
                                    f"ready in {time.perf_counter() - t0:.1f}s"})

    device = info.device
    cl = cfg.channels_last == "on" or (cfg.channels_last == "auto" and model.channels_last_ok
                                        and device.startswith("cuda") and spec.kind == "image")
    model.to(device)
    if cl:
        model.to(memory_format=torch.channels_last)
    net = wrap(model, info)
    weight = (data.class_weights(train_data.labels, len(class_names)).to(device)
              if cfg.class_weights == "balanced" else None)
    if teacher is not None and cl:
        teacher.to(memory_format=torch.channels_last)
    scaler = (torch.amp.GradScaler("cuda") if cfg.amp and cfg.amp_dtype == "fp16"
              and device.startswith("cuda") else None)
    size = spec.preprocess.size if spec.preprocess else None
    return Run(
        run_dir=run_dir, class_names=tuple(class_names), model=model, net=net,
        trainable=_trainable(model), train_data=train_data, val_data=val_data,
        train_loader=data.BatchLoader(train_data, cfg.batch_size, True, cfg.seed, info.rank, info.world,
                                      cfg.max_steps),
        val_loader=data.BatchLoader(val_data, cfg.batch_size, False, cfg.seed, info.rank, info.world),
        prep=BatchPrep(device, spec.preprocess,
                       build_augment(cfg.augment, size, cfg.augment_group) if size else None, cl),
        loss_fn=make_loss(cfg, weight, device), teacher=teacher, scaler=scaler,
        sidecar=run_sidecar(cfg, ls, class_names, spec, model, val_path, teacher_side, info.world))


def run_sidecar(cfg: TrainConfig, ls, class_names, spec, model, val_path, teacher_side, world: int) -> dict:
    """The checkpoint sidecar's run-wide part: labels, preprocessing, input, manifests (with
    their sha256), feature files, the whole TrainConfig (nanoGPT's config that travels in the
    checkpoint), teacher / init checkpoints and the model's registry config."""
    from features.encoders import features_meta
    from features.labels import get_preset
    from features.manifest import file_sha256
    from train.checkpoint import checkpoint_paths
    from train.models.registry import config_to_dict

    sidecar = {
        "labels": {"label_set": ls.name, "label_names": list(ls.names), "preset": cfg.preset,
                   "class_names": list(class_names), "preset_doc": get_preset(cfg.preset).doc},
        "preprocess": spec.preprocess.to_dict() if spec.preprocess else None,
        "input": {"kind": spec.kind, "frames": spec.frames, "needs_text": spec.needs_text},
        "manifests": {role: {"path": str(p), "sha256": file_sha256(p)}
                      for role, p in (("train", cfg.manifest), ("val", val_path))},
        # the text feature file's own record (encoder, weights, max_length, tokens) travels with the
        # run, so a caption-fusing model serves from any folder, the feature file left behind
        "features": {"text": cfg.text_features, "image": cfg.image_features,
                     "text_meta": features_meta(cfg.text_features) if cfg.text_features else None},
        "train_config": cfg.to_dict(),
        "world_size": world,
    }
    if teacher_side:  # one teacher: its record; an ensemble teacher: one record per member
        records = [{"path": path, "model": side.get("model"), "metrics": side.get("metrics"),
                    "sha256": file_sha256(checkpoint_paths(path)[0])}
                   for path, side in zip(cfg.teacher, teacher_side)]
        sidecar["teacher"] = records[0] if len(records) == 1 else records
    if cfg.init is not None:
        sidecar["init"] = {"path": str(cfg.init), "sha256": file_sha256(checkpoint_paths(cfg.init)[0])}
    sidecar["model"] = {"name": model.model_name, "config": config_to_dict(model.config)}
    if getattr(model, "pretrained_file", None):  # which ImageNet file the run started from
        sidecar["model"]["pretrained_file"] = model.pretrained_file
    return sidecar


@dataclass
class Optimisation:
    """The optimiser and schedule of the current phase, and the parameter grouping they follow."""

    optimizer: Any
    scheduler: Any
    group_key: tuple


def start_optimisation(cfg: TrainConfig, run: Run, emit: Progress) -> tuple[Optimisation, dict]:
    """A fresh optimiser and schedule with an empty loop state, or, with --resume, the saved ones.

    The optimiser's groups follow the model's param_groups(epoch); a resume rebuilds the
    grouping the saved state was written with, then the epoch loop moves it on as usual."""
    from train.checkpoint import load_resume, restore_resume

    state = {"epoch": 0, "best": -math.inf, "best_epoch": None, "bad_epochs": 0, "history": [],
             "class_names": list(run.class_names), "config": cfg.to_dict()}
    blob = load_resume(run.run_dir) if cfg.resume else None
    if blob is not None:
        _check_resume(blob, cfg, run.class_names)
    start = blob["state"]["epoch"] if blob else 0
    groups = param_groups(run.net, max(start - 1, 0), cfg.lr)
    optimizer = make_optimizer(cfg, groups)
    opt = Optimisation(optimizer, make_scheduler(cfg, optimizer), _group_key(groups))
    if blob is not None:
        state = restore_resume(blob, run.net, opt.optimizer, opt.scheduler, run.scaler)
        emit({"kind": "status", "text": f"resumed {run.run_dir} at epoch {state['epoch'] + 1}"})
    return opt, state


def next_phase(cfg: TrainConfig, run: Run, opt: Optimisation, epoch: int, info) -> Optimisation:
    """Follow a model whose trainable parameters or groups change at `epoch` (clip-adapter
    unfreezing its encoder): re-wrap for DDP, and a new optimiser with the schedule continued."""
    from train.distributed import wrap

    new_groups = param_groups(run.net, epoch, cfg.lr)
    if info.enabled and _trainable(run.model) != run.trainable:
        # DDP registers gradient hooks only for parameters that were trainable when it
        # wrapped the model: after an unfreeze, wrap again so the new ones are synced
        run.net = wrap(run.model, info)
    run.trainable = _trainable(run.model)
    if _group_key(new_groups) == opt.group_key:
        return opt
    optimizer = make_optimizer(cfg, new_groups)
    return Optimisation(optimizer, make_scheduler(cfg, optimizer, epochs_done=epoch), _group_key(new_groups))


def end_epoch(cfg: TrainConfig, run: Run, opt: Optimisation, state: dict, epoch: int, scores: dict,
              train_loss: float, timing: dict, info, log) -> dict:
    """Step the schedule on the selection metric, track the best epoch, and (rank 0) write the
    best/last checkpoints, the resume state and the logs. Returns the epoch's log row."""
    from train.checkpoint import save_checkpoint, save_resume
    from train.distributed import barrier

    logged = {f"val_{LOG_NAMES[k]}": v for k, v in scores.items()}
    score = logged[f"val_{cfg.select_metric}"]
    step_scheduler(opt.scheduler, score)
    improved = score > state["best"]
    if improved:
        state["best"], state["best_epoch"], state["bad_epochs"] = score, epoch + 1, 0
    else:
        state["bad_epochs"] += 1
    row = {"epoch": epoch + 1, "train_loss": train_loss, **logged, **timing, "best": improved}
    state["history"].append(row)
    state["epoch"] = epoch + 1
    if info.is_main:
        side = run.sidecar | {"epoch": epoch + 1, "metrics": logged,
                              "selected_on": f"val_{cfg.select_metric}"}
        if improved:
            save_checkpoint(run.run_dir, run.net, side, name="best")
        save_checkpoint(run.run_dir, run.net, side, name="last")
        save_resume(run.run_dir, run.net, opt.optimizer, opt.scheduler, run.scaler, state)
        log.write(row, state["history"])
    barrier(info)
    return row


def fit(cfg: TrainConfig, progress: Progress | None = None) -> dict:
    """Train one run as `cfg` says. Returns a summary (best metric, epochs, paths)."""
    import torch

    from train.distributed import cleanup, init_from_env

    emit = progress or (lambda e: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = init_from_env(cfg.device)
    try:
        run = prepare_run(cfg, info, emit)
        opt, state = start_optimisation(cfg, run, emit)
        if info.is_main:
            run.run_dir.mkdir(parents=True, exist_ok=True)
        log = RunLog(run.run_dir, cfg.tensorboard) if info.is_main else None
        stop_reason = "epochs"
        for epoch in range(state["epoch"], cfg.epochs):
            opt = next_phase(cfg, run, opt, epoch, info)
            # RNG seeded from (seed, epoch, rank): augmentation and dropout differ across ranks,
            # and a resumed run (any world size) draws exactly what an uninterrupted one would
            torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + info.rank)
            run.train_loader.set_epoch(epoch)
            emit({"kind": "epoch_start", "epoch": epoch, "epochs": cfg.epochs, "steps": len(run.train_loader)})
            epoch_lr = opt.optimizer.param_groups[0]["lr"]  # logged: the rate this epoch ran with, not the next one's
            t0 = time.perf_counter()
            try:
                tr = train_one_epoch(run.net, run.loss_fn, opt.optimizer, run.train_loader, run.prep,
                                     amp=cfg.amp, amp_dtype=cfg.amp_dtype, scaler=run.scaler,
                                     clip_grad=cfg.clip_grad, dist_info=info, progress=emit, epoch=epoch,
                                     teacher=run.teacher)
            except NonFiniteLoss as e:
                last = run.run_dir / "last.safetensors"
                keep = (f"the last good checkpoint is {last} (epoch {state['epoch']})"
                        if last.exists() else "no epoch finished, so there is no checkpoint")
                raise NonFiniteLoss(f"{e}; training stopped, {keep}. Try a lower --lr, "
                                    "--clip-grad 1.0, or --no-amp") from None
            train_s = time.perf_counter() - t0
            lg, tg = validate(run.net, run.val_loader, run.prep, amp=cfg.amp, amp_dtype=cfg.amp_dtype,
                              dist_info=info)
            timing = {"lr": epoch_lr, "train_s": round(train_s, 3),
                      "train_img_s": round(tr["samples"] * info.world / max(train_s, 1e-9), 1)}
            row = end_epoch(cfg, run, opt, state, epoch, validation_scores(lg, tg, len(run.class_names)),
                            tr["loss"], timing, info, log)
            emit({"kind": "epoch_end", **row})
            if cfg.early_stop and state["bad_epochs"] >= cfg.early_stop:
                stop_reason = f"early stop: no better val_{cfg.select_metric} for {cfg.early_stop} epochs"
                break
        return {"run_dir": str(run.run_dir), "best": state["best"], "best_epoch": state["best_epoch"],
                "select_metric": cfg.select_metric, "epochs_run": state["epoch"], "stop": stop_reason,
                "history": state["history"], "class_names": list(run.class_names), "world_size": info.world,
                "train_items": len(run.train_data), "val_items": len(run.val_data)}
    finally:
        cleanup(info)


def _trainable(model) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in model.parameters())


def _check_resume(blob: dict, cfg: TrainConfig, class_names: tuple[str, ...]) -> None:
    saved = blob["state"].get("config", {})
    names = blob["state"].get("class_names")
    if names is not None and list(names) != list(class_names):
        raise TrainError(f"--resume: the run was trained on classes {names}, this manifest/preset "
                         f"gives {list(class_names)}; resume with the same manifest and --preset")
    if saved.get("model") not in (None, cfg.model):
        raise TrainError(f"--resume: the run trained model {saved.get('model')!r}, not {cfg.model!r}")
    # a resumed run is the same run: only how long and where it runs may change (runs saved
    # before the whole config was kept compare the fields they have)
    now = cfg.to_dict()
    changed = [k for k in saved if k not in RESUME_MAY_CHANGE and k in now and _same(saved[k]) != _same(now[k])]
    if changed:
        was = ", ".join(f"{k}={saved[k]!r}" for k in changed)
        asked = ", ".join(f"{k}={now[k]!r}" for k in changed)
        raise TrainError(f"--resume: the run was started with {was}; this command asks {asked}. Resume with "
                         f"the run's own options (only {', '.join(sorted(RESUME_MAY_CHANGE - {'resume'}))} may "
                         "change) or train into another --out")


# what a resume may change: how long, where (a copied run folder) and on what hardware the run goes
# on, never what it learns from
RESUME_MAY_CHANGE = frozenset({"epochs", "resume", "out", "device", "workers", "threads", "tensorboard"})


def _same(v):
    """Tuples and lists compare alike (a saved state may hold either)."""
    if isinstance(v, dict):
        return {k: _same(x) for k, x in v.items()}
    return [_same(x) for x in v] if isinstance(v, (list, tuple)) else v
