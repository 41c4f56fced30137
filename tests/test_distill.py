"""Knowledge distillation in `train run --teacher`: the soft-target loss, how it mixes with the
hard loss, that the teacher's logits really reach the student, and clear refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import TINY_VGG, single_thread, train_config, write_pair  # noqa: E402,F401

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("kd"), n_train=35, n_val=14)


@pytest.fixture(scope="module")
def teacher(pair, tmp_path_factory):
    """A tiny vgg fitted to the 35 synthetic faces (well above chance on val)."""
    from train.loop import fit

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("teacher") / "run"
    res = fit(train_config(pair, out, epochs=8, lr=3e-3, augment="none", scheduler="none",
                           batch_size=16, select_metric="acc"))
    assert res["best"] > 0.5, res["best"]
    return out


def test_distill_kl_is_hintons_soft_target_term():
    from train.losses import distill_kl

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g) * 2, torch.randn(5, 7, generator=g) * 2
    T = 3.0
    q, log_p = torch.softmax(t / T, 1), torch.log_softmax(s / T, 1)
    by_hand = (q * (q.log() - log_p)).sum(1).mean() * T * T
    torch.testing.assert_close(distill_kl(s, t, T), by_hand)
    assert distill_kl(t, t, T).item() == pytest.approx(0.0, abs=1e-6)
    # the T^2 factor keeps the gradient on the same scale across temperatures (for small logits)
    small = s * 0.01
    g1 = torch.autograd.grad(distill_kl(small.requires_grad_(), t * 0.01, 1.0), small)[0]
    small2 = (s * 0.01).requires_grad_()
    g8 = torch.autograd.grad(distill_kl(small2, t * 0.01, 8.0), small2)[0]
    torch.testing.assert_close(g1, g8, rtol=0.05, atol=1e-5)


def test_loss_mixes_hard_and_soft_terms(pair, tmp_path):
    import torch.nn.functional as F

    from train.loop import compute_loss, make_loss
    from train.losses import distill_kl

    cfg = train_config(pair, tmp_path / "x", teacher="some/teacher", distill_alpha=0.3,
                       distill_temperature=2.0, label_smoothing=0.1)
    fn = make_loss(cfg)
    g = torch.Generator().manual_seed(1)
    s, t, y = torch.randn(6, 7, generator=g), torch.randn(6, 7, generator=g), torch.randint(7, (6,), generator=g)
    hard = F.cross_entropy(s, y, label_smoothing=0.1)
    torch.testing.assert_close(compute_loss(fn, {"logits": s}, y, None, t),
                               0.7 * hard + 0.3 * distill_kl(s, t, 2.0))
    torch.testing.assert_close(compute_loss(fn, {"logits": s}, y, None), hard)  # no teacher batch


def test_student_learns_from_the_teacher_alone(pair, teacher, tmp_path):
    """alpha = 1: the hard labels carry no weight, so whatever the student learns comes through
    the teacher's logits; it ends up agreeing with the teacher far above chance."""
    from train.checkpoint import load_checkpoint
    from train.loop import fit

    res = fit(train_config(pair, tmp_path / "s", epochs=8, lr=3e-3, augment="none", scheduler="none",
                           batch_size=16, select_metric="acc", teacher=str(teacher), distill_alpha=1.0,
                           distill_temperature=2.0, seed=3))
    assert res["best"] > 0.4, res["history"]  # chance is 1/7
    side = json.loads((tmp_path / "s" / "best.json").read_text())
    assert side["teacher"]["path"] == str(teacher) and len(side["teacher"]["sha256"]) == 64
    assert side["train_config"]["distill_alpha"] == 1.0
    import pyarrow.parquet as pq

    from features.images import decode
    from train.checkpoint import preprocess_of

    student, sside = load_checkpoint(tmp_path / "s")
    teach, _ = load_checkpoint(teacher)
    x = preprocess_of(sside).apply([decode(b)[0] for b in pq.read_table(pair[1]).column("image").to_pylist()])
    with torch.no_grad():
        agree = (student(x).argmax(1) == teach(x).argmax(1)).float().mean().item()
    assert agree > 0.35, agree  # two unrelated 7-way classifiers agree ~1/7 of the time


def test_teacher_with_other_input_sees_the_same_faces():
    """AdaptedTeacher: a 32 px RGB (ImageNet statistics) teacher fed the student's 16 px grey
    batch computes what it computes on its own preprocessing of the same images."""
    from train.loop import AdaptedTeacher
    from train.models.registry import build_model
    from train.transforms import Preprocess

    torch.manual_seed(0)
    net = build_model("vgg", input_size=32, in_chans=3, stages=(8, 16), fc_dim=16, dropout=0.0).eval()
    student, teach = Preprocess.default_for(16, 1), Preprocess.default_for(32, 3)
    assert teach.mean != student.mean * 3
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(4)]
    with torch.no_grad():
        via_student = AdaptedTeacher(net, student, teach)(student.apply(faces))
        direct = net(teach.apply(faces))  # Preprocess rounds its resize to uint8: small tolerance
    torch.testing.assert_close(via_student, direct, atol=2e-2, rtol=1e-2)
    flipped = AdaptedTeacher(net, student, Preprocess.default_for(32, 1))
    with pytest.raises(RuntimeError):  # a 1-channel view cannot feed a 3-channel net: not silent
        flipped(student.apply(faces))


def test_student_distils_from_a_teacher_at_another_size(pair, teacher, tmp_path):
    from train.loop import fit

    res = fit(train_config(pair, tmp_path / "s", epochs=1, augment="none", scheduler="none",
                           model_options={**TINY_VGG, "input_size": 24}, teacher=str(teacher)))
    assert np.isfinite(res["history"][0]["train_loss"])
    side = json.loads((tmp_path / "s" / "best.json").read_text())
    assert side["preprocess"]["size"] == [24, 24] and side["teacher"]["path"] == str(teacher)


@pytest.mark.parametrize("case", ["classes", "alpha", "missing"])
def test_bad_teacher_is_refused_clearly(pair, teacher, tmp_path, case):
    from typer.testing import CliRunner

    from train.cli import app

    args = ["run", "--manifest", str(pair[0]), "--model", "vgg", "--model-opt", "stages=[8,16]",
            "--model-opt", "fc_dim=32", "--epochs", "1", "--max-steps", "1", "--device", "cpu",
            "--out", str(tmp_path / "bad"), "--teacher", str(teacher)]
    want = {"classes": "trained on the same classes",
            "alpha": "--distill-alpha must be in [0, 1]", "missing": "no checkpoint weights"}[case]
    if case == "classes":
        args += ["--preset", "5"]
    elif case == "alpha":
        args += ["--distill-alpha", "1.5"]
    else:
        args[-1] = str(tmp_path / "nowhere")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert want in r.output, r.output
    assert "Traceback" not in r.output
    assert "items ready" not in r.output  # refused before the manifests were decoded


def test_ensemble_teacher_is_the_mean_of_its_members_logits(pair, teacher, tmp_path):
    """`--teacher A --teacher B`: the soft targets come from the mean of the members' logits,
    computed here by hand on the same batch, and the sidecar records every member."""
    from typer.testing import CliRunner

    from train.checkpoint import load_checkpoint, preprocess_of
    from train.cli import app
    from train.loop import fit, load_teacher

    second = tmp_path / "t2"
    fit(train_config(pair, second, epochs=1, augment="none", scheduler="none", seed=5))
    cfg = train_config(pair, tmp_path / "x", teacher=(str(teacher), str(second)))
    _, side = load_checkpoint(teacher)
    ens, sides = load_teacher(cfg, side["labels"]["class_names"], preprocess_of(side), "cpu")
    assert len(sides) == 2
    x = torch.randn(5, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    a, b = (load_checkpoint(p)[0].eval() for p in (teacher, second))
    with torch.no_grad():
        by_hand = (a(x) + b(x)) / 2
        torch.testing.assert_close(ens(x), by_hand, atol=1e-4, rtol=1e-4)  # BatchNorm folded
        assert not torch.allclose(a(x), b(x), atol=1e-3)  # two different members, not one twice

    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["run", "--manifest", str(pair[0]), "--val", str(pair[1]), "--model", "vgg",
                                 *[arg for k, v in TINY_VGG.items() for arg in ("--model-opt", f"{k}={v}")],
                                 "--epochs", "1", "--max-steps", "2", "--device", "cpu", "--out", str(out),
                                 "--teacher", str(teacher), "--teacher", str(second)])
    assert r.exit_code == 0, r.output
    assert f"distilling from {teacher}, {second} (an ensemble teacher" in " ".join(r.output.split())
    side = json.loads((out / "best.json").read_text())
    assert [t["path"] for t in side["teacher"]] == [str(teacher), str(second)]
    assert side["train_config"]["teacher"] == [str(teacher), str(second)]


def test_one_teacher_given_as_a_string_stays_one_teacher(pair, tmp_path):
    """A recipe, config file or earlier sidecar names a single teacher as a plain string."""
    assert train_config(pair, tmp_path, teacher="a/b").teacher == ("a/b",)
    assert train_config(pair, tmp_path, teacher=None).teacher == ()
