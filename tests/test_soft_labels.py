"""FER+ probability targets (`train run --targets votes`) and training on another label set's
classes (`--classes fer2013` on a FER+ manifest): the targets against a hand computation, the
loss against the cross-entropy formula, a run end to end, and clear refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import single_thread, synth_rows, train_config, write_pair  # noqa: E402,F401

torch = pytest.importorskip("torch")

from features.labels import FERPLUS_VOTE_COLUMNS, get_label_set  # noqa: E402
from features.manifest import to_table, write_manifest  # noqa: E402
from train.data import DataError, class_map, vote_targets  # noqa: E402

# FER+ vote column order: neutral happiness surprise sadness anger disgust fear contempt unknown NF
assert FERPLUS_VOTE_COLUMNS[:8] == ("neutral", "happiness", "surprise", "sadness", "anger",
                                    "disgust", "fear", "contempt")
FERPLUS = get_label_set("ferplus")  # angry contempt disgust fear happy neutral sad surprise


def test_votes_become_the_normalised_distribution_by_hand():
    names, mapping = class_map(FERPLUS, "7", None, Path("m"))
    votes = [[6, 2, 0, 0, 0, 0, 0, 1, 1, 0],   # 6 neutral, 2 happy, 1 contempt; unknown dropped
             [0, 0, 0, 0, 0, 0, 0, 0, 9, 1],   # only unknown/NF: falls back to its one-hot label
             [0, 0, 5, 0, 5, 0, 0, 0, 0, 0]]   # surprise/anger tie
    y = np.array([5, 4, 7])
    soft = vote_targets(votes, FERPLUS, mapping, y, len(names), Path("m"))
    want = np.zeros((3, 8), np.float32)
    want[0, [5, 4, 1]] = [6 / 9, 2 / 9, 1 / 9]   # neutral, happy, contempt (ferplus order)
    want[1, 4] = 1.0
    want[2, [7, 0]] = [0.5, 0.5]                 # surprise, angry
    np.testing.assert_allclose(soft, want, rtol=1e-6)


def test_fer2013_classes_drop_contempt_votes_and_rows():
    names, mapping = class_map(FERPLUS, "7", "fer2013", Path("m"))
    assert names == get_label_set("fer2013").names
    assert mapping[FERPLUS.index("contempt")] is None
    assert mapping[FERPLUS.index("happy")] == names.index("happy")
    soft = vote_targets([[6, 2, 0, 0, 0, 0, 0, 1, 1, 0]], FERPLUS, mapping, np.array([4]), 7, Path("m"))
    np.testing.assert_allclose(soft[0, [names.index("neutral"), names.index("happy")]], [0.75, 0.25])
    assert soft.sum() == pytest.approx(1.0)


def test_classes_refuse_a_set_with_missing_classes():
    with pytest.raises(DataError, match="has no rows of"):
        class_map(get_label_set("ckplus"), "7", "fer2013", Path("ck.parquet"))  # CK+ has no neutral
    with pytest.raises(DataError, match="--preset 7"):
        class_map(FERPLUS, "5", "fer2013", Path("m"))
    with pytest.raises(DataError, match="unknown label set"):
        class_map(FERPLUS, "7", "nope", Path("m"))


def test_cross_entropy_with_probability_targets_is_the_formula():
    """What the trainer's loss computes for a soft target: -sum_k q_k log softmax(z)_k."""
    from train.losses import build_loss

    z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    q = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.0, 0.8]])
    want = -(q * torch.log_softmax(z, 1)).sum(1).mean()
    torch.testing.assert_close(build_loss("ce")(z, q), want)


def _write_votes(path: Path, n: int, split: str, seed: int) -> Path:
    """A FER+-labelled synthetic manifest whose votes put 7 of 10 votes on the label."""
    rows = synth_rows(n, split, seed, label_set="ferplus")
    rng = np.random.default_rng(seed)
    col_of = {"angry": 4, "contempt": 7, "disgust": 5, "fear": 6, "happy": 1, "neutral": 0,
              "sad": 3, "surprise": 2}
    for r in rows:
        v = [0] * 10
        v[col_of[r["label"]]] = 7
        v[int(rng.integers(0, 10))] += 3
        r["ferplus_votes"] = v
    return write_manifest(to_table(rows, groups=("ferplus",)), path, FERPLUS, producer={"test": "soft_labels"})


@pytest.fixture(scope="module")
def votes_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("votes")
    return (_write_votes(d / "fp_train.parquet", 48, "train", 1),
            _write_votes(d / "fp_val.parquet", 24, "val", 2))


def test_train_on_votes_as_fer2013_classes(votes_pair, tmp_path):
    from train.data import input_spec_for, load_split
    from train.loop import fit
    from train.models.registry import build_model

    spec = input_spec_for(build_model("vgg", stages=(8,), fc_dim=8, num_classes=7))
    data = load_split(votes_pair[0], "train", spec, classes="fer2013", targets="votes")
    assert len(data) == 48 - 6  # the 6 contempt rows are dropped
    assert data.soft.shape == (42, 7)
    torch.testing.assert_close(data.soft.sum(1), torch.ones(42))
    assert (data.soft.argmax(1) == data.labels).float().mean() > 0.85  # 7 of 10 votes on the label
    assert "soft" in data.take(torch.arange(4))

    res = fit(train_config(votes_pair, tmp_path / "r", epochs=2, classes="fer2013", targets="votes"))
    assert np.isfinite(res["history"][-1]["train_loss"])
    side = json.loads((tmp_path / "r" / "best.json").read_text())
    assert side["labels"]["class_names"] == list(get_label_set("fer2013").names)
    assert side["train_config"]["targets"] == "votes"


def test_votes_are_refused_without_a_votes_column(tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    tr, _ = write_pair(tmp_path)
    r = CliRunner().invoke(app, ["run", "--manifest", str(tr), "--model", "vgg", "--targets", "votes",
                                 "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "has no FER+ votes" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r" / "best.safetensors").exists()
    r = CliRunner().invoke(app, ["run", "--manifest", str(tr), "--model", "vgg", "--targets", "votes",
                                 "--loss", "focal", "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "--loss focal takes hard labels" in r.output


def test_init_starts_from_a_checkpoint_and_refuses_another_model(votes_pair, tmp_path):
    """--init: fine-tuning starts from the checkpoint's weights (a 0-step run keeps them) and a
    checkpoint of another shape is refused in one line."""
    from train.checkpoint import load_checkpoint
    from train.loop import TrainError, fit

    base = tmp_path / "base"
    fit(train_config(votes_pair, base, epochs=1, classes="fer2013"))
    tuned = tmp_path / "tuned"
    fit(train_config(votes_pair, tuned, epochs=1, classes="fer2013", targets="votes", init=str(base),
                     lr=1e-12, augment="none"))
    a, _ = load_checkpoint(base)
    b, side = load_checkpoint(tuned)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        if va.is_floating_point() and "running" not in k:
            torch.testing.assert_close(va, vb, atol=1e-6, rtol=0)  # lr 1e-12: nothing moved
    assert side["init"]["path"] == str(base) and len(side["init"]["sha256"]) == 64
    with pytest.raises(TrainError, match="--init .* Pass the same --model"):
        fit(train_config(votes_pair, tmp_path / "bad", classes="fer2013", init=str(base),
                         model_options={"stages": [8, 8], "fc_dim": 16, "convs_per_stage": 1}))


def test_vote_weight_mixes_votes_with_the_manifests_own_label():
    """w * votes + (1 - w) * one-hot(label); a row without votes is its one-hot label."""
    fer = get_label_set("fer2013")
    names, mapping = class_map(fer, "7", None, Path("m"))
    votes = [[6, 2, 0, 0, 0, 0, 0, 0, 0, 0], None]  # 6 neutral, 2 happiness; second row: none
    y = np.array([names.index("sad"), names.index("fear")])  # FER2013's own labels
    soft = vote_targets(votes, fer, mapping, y, 7, Path("m"), vote_weight=0.4)
    want = np.zeros((2, 7), np.float32)
    want[0, names.index("neutral")] = 0.4 * 0.75
    want[0, names.index("happy")] = 0.4 * 0.25
    want[0, names.index("sad")] = 0.6
    want[1, names.index("fear")] = 1.0
    np.testing.assert_allclose(soft, want, rtol=1e-6)
    with pytest.raises(DataError, match="no row has FER\\+ votes"):
        vote_targets([None, None], fer, mapping, y, 7, Path("m"))
