"""`pipeline caption`: tiny BLIP / BLIP-VQA through the CLI's model paths, resume, errors, leakage report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.blip import load_blip
from features.manifest import producer_of, read_manifest
from pipeline.caption import (
    CaptionConfig,
    CaptionError,
    CaptionStage,
    answer_questions,
    caption_images,
    emotion_word_report,
    emotion_words,
)
from pipeline.cli import app
from pipeline.parts import RunConfig
from pipeline.runner import run_stage
from tiny_models import tiny_blip_captioner, tiny_blip_vqa, write_face_manifest

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip")
    return {"caption": tiny_blip_captioner(root / "cap"), "vqa": tiny_blip_vqa(root / "vqa", seed=1)}


def _faces(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(n)]


# ------------------------------------------------------------------ leakage report


def test_emotion_words_are_whole_words():
    assert emotion_words("A Smiling woman, looking HAPPY.") == ["smiling", "happy"]
    assert emotion_words("a madness of sadder glasses") == []   # not substrings
    assert emotion_words(None) == [] and emotion_words("") == []


def test_emotion_word_report_counts_hand_made_captions():
    caps = ["a woman smiling at the camera", "a man with a beard", "a happy smiling child",  # happy x3
            "a sad man crying", "a man in a hat", None,                                      # sad x3
            "an angry man", "a surprised woman"]                                             # angry x2
    labels = ["happy", "happy", "happy", "sad", "sad", "sad", "angry", "angry"]
    r = emotion_word_report(caps, labels)
    assert list(r) == ["angry", "happy", "sad"]
    assert r["happy"] == {"n": 3, "with_emotion_word": 2, "fraction": 0.6667, "names_own_class": 2,
                          "top_words": {"smiling": 2, "happy": 1}}
    assert (r["sad"]["n"], r["sad"]["with_emotion_word"], r["sad"]["names_own_class"]) == (3, 1, 1)
    assert r["sad"]["top_words"] == {"sad": 1, "crying": 1}
    # "surprised" is an emotion word, but not the row's own class
    assert (r["angry"]["with_emotion_word"], r["angry"]["names_own_class"]) == (2, 1)
    # dataset spellings map to the same emotion ('anger' class, 'angry' caption)
    assert emotion_word_report(["an angry man"], ["anger"])["anger"]["names_own_class"] == 1
    with pytest.raises(ValueError):
        emotion_word_report(["a"], [])


# ------------------------------------------------------------------ model-level functions


def test_batched_captions_equal_one_at_a_time(models):
    blip = load_blip(str(models["caption"]))
    cfg = CaptionConfig(max_new_tokens=6, min_new_tokens=6, dtype="fp32")
    faces = _faces(4)
    batched = caption_images(blip, faces, cfg)
    single = [caption_images(blip, [f], cfg)[0] for f in faces]
    assert batched == single
    assert all(len(c.split()) >= 3 for c in batched)
    assert len(set(batched)) > 1  # the captions depend on the pixels
    beams = caption_images(blip, faces[:2], CaptionConfig(max_new_tokens=6, beams=3, dtype="fp32"))
    assert len(beams) == 2 and all(isinstance(c, str) for c in beams)
    rgb = caption_images(blip, [np.repeat(faces[0][..., None], 3, axis=2)], cfg)
    assert rgb == batched[:1]  # grey input is captioned as its RGB copy


def test_vqa_shares_the_image_encoding_and_matches_generate(models):
    blip = load_blip(str(models["vqa"]), task="vqa")
    questions = ("what is the state of the mouth?", "what is the facial expression?")
    cfg = CaptionConfig(vqa=True, questions=questions, vqa_max_new_tokens=5, dtype="fp32")
    faces = _faces(3, seed=1)
    ans = answer_questions(blip, faces, questions, cfg)
    assert len(ans) == 3 and all(len(a) == 2 for a in ans)
    pix = blip.processor(images=[np.repeat(f[..., None], 3, axis=2) for f in faces], return_tensors="pt")
    for j, q in enumerate(questions):
        qi = blip.processor.tokenizer([q] * 3, return_tensors="pt", return_token_type_ids=False)
        ref = blip.model.generate(input_ids=qi["input_ids"], attention_mask=qi["attention_mask"],
                                  pixel_values=pix["pixel_values"], max_new_tokens=5, do_sample=False)
        ref = [t.strip() for t in blip.processor.batch_decode(ref, skip_special_tokens=True)]
        assert [a[j] for a in ans] == ref


def test_bad_decoding_settings_are_refused():
    with pytest.raises(CaptionError, match="min_new_tokens"):
        CaptionConfig(max_new_tokens=5, min_new_tokens=6)
    with pytest.raises(CaptionError, match="no questions"):
        CaptionConfig(vqa=True, questions=())


# ------------------------------------------------------------------ the CLI


def _text(res) -> str:
    return " ".join(res.output.split())  # rich wraps long messages at the terminal width


def _cli(*args):
    return runner.invoke(app, ["caption", *map(str, args)])


def test_cli_captions_and_vqa_through_model_paths(models, tmp_path):
    src = write_face_manifest(tmp_path / "in.parquet", n=10)
    out = tmp_path / "out.parquet"
    qfile = tmp_path / "q.txt"
    qfile.write_text("what is the state of the mouth?\n\nwhat are the eyebrows doing?\n")
    res = _cli("--in", src, "--out", out, "--model", models["caption"], "--vqa", "--vqa-model", models["vqa"],
               "--questions", qfile, "--max-new-tokens", 5, "--min-new-tokens", 5, "--batch-size", 4,
               "--device", "cpu", "--dtype", "fp32")
    assert res.exit_code == 0, res.output
    assert "Leakage check (caption)" in res.output and "vqa: what are the eyebrows doing?" in res.output
    table, _ = read_manifest(out)
    assert table.num_rows == 10
    caps = table.column("caption").to_pylist()
    assert all(isinstance(c, str) and len(c.split()) == 5 for c in caps)
    assert table.column("vqa_questions").to_pylist() == [["what is the state of the mouth?",
                                                          "what are the eyebrows doing?"]] * 10
    assert all(len(a) == 2 for a in table.column("vqa_answers").to_pylist())
    prov = json.loads(table.column("caption_model")[0].as_py())
    assert prov["model"] == str(models["caption"]) and len(prov["sha256"]) == 16 and prov["max_new_tokens"] == 5
    assert json.loads(table.column("vqa_model")[0].as_py())["model"] == str(models["vqa"])
    # the same labels and pixels as the input: captions are added, nothing else changes
    before, _ = read_manifest(src)
    assert table.select(["sample_id", "label", "pixel_hash"]).sort_by("sample_id").equals(
        before.select(["sample_id", "label", "pixel_hash"]).sort_by("sample_id"))
    summary = producer_of(out)["summary"]["emotion_words"]
    assert set(summary) == {"caption", "vqa: what is the state of the mouth?", "vqa: what are the eyebrows doing?"}
    assert sum(r["n"] for r in summary["caption"].values()) == 10
    assert summary["caption"] == emotion_word_report(caps, table.column("label").to_pylist())


def test_missing_weights_give_a_clear_error(tmp_path, monkeypatch):
    src = write_face_manifest(tmp_path / "in.parquet", n=2)
    res = _cli("--in", src, "--out", tmp_path / "o.parquet", "--model", tmp_path / "nope", "--device", "cpu")
    assert res.exit_code == 2
    assert "no file or folder" in _text(res) and "Traceback" not in res.output
    assert "0%" not in res.output, res.output  # no empty progress bar left above the error line
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    res = _cli("--in", src, "--out", tmp_path / "o.parquet", "--device", "cpu")
    assert res.exit_code == 2
    assert "Salesforce/blip-image-captioning-base" in _text(res) and "not in the Hugging Face cache" in _text(res)
    assert not (tmp_path / "o.parquet").exists()


def test_bad_inputs_give_clear_errors(models, tmp_path):
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "bad.parquet")
    res = _cli("--in", tmp_path / "bad.parquet", "--out", tmp_path / "o.parquet", "--model", models["caption"])
    assert res.exit_code == 2 and "affectlab" in _text(res)
    src = write_face_manifest(tmp_path / "in.parquet", n=2)
    res = _cli("--in", src, "--out", tmp_path / "o.parquet", "--model", models["caption"],
               "--max-new-tokens", 3, "--min-new-tokens", 4)
    assert res.exit_code == 2 and "min_new_tokens" in _text(res)


def test_changing_a_setting_recomputes(models, tmp_path):
    src = write_face_manifest(tmp_path / "in.parquet", n=4)
    work = tmp_path / "work"
    cfg = CaptionConfig(model=str(models["caption"]), max_new_tokens=4, min_new_tokens=4, dtype="fp32")
    r1 = run_stage(CaptionStage(cfg), src, tmp_path / "a.parquet", RunConfig(batch_size=2, work_dir=work, device="cpu"))
    r2 = run_stage(CaptionStage(cfg), src, tmp_path / "b.parquet", RunConfig(batch_size=2, work_dir=work, device="cpu"))
    assert (r1.reused, r2.reused, r2.computed_rows) == (0, r1.batches, 0)
    cfg3 = CaptionConfig(model=str(models["caption"]), max_new_tokens=5, min_new_tokens=5, dtype="fp32")
    r3 = run_stage(CaptionStage(cfg3), src, tmp_path / "c.parquet", RunConfig(batch_size=2, work_dir=work, device="cpu"))
    assert r3.reused == 0 and r3.computed_rows == 4
    assert all(len(c.split()) == 5 for c in read_manifest(tmp_path / "c.parquet")[0].column("caption").to_pylist())


_SLOW_RUN = """
import sys, time
import torch
torch.set_num_threads(1)
from pipeline.caption import CaptionConfig, CaptionStage
from pipeline.parts import RunConfig
from pipeline.runner import run_stage

class SlowCaption(CaptionStage):      # sleeps between batches so the test can kill it mid-run
    def process(self, batch):
        out = super().process(batch)
        time.sleep(0.4)
        return out

model, src, out, work = sys.argv[1:5]
cfg = CaptionConfig(model=model, max_new_tokens=4, min_new_tokens=4, dtype="fp32")
run_stage(SlowCaption(cfg), src, out, RunConfig(batch_size=2, work_dir=work, device="cpu"))
"""


def test_resume_after_sigkill_gives_identical_output(models, tmp_path):
    src = write_face_manifest(tmp_path / "in.parquet", n=12)
    work = tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(models["caption"]), str(src),
                             str(tmp_path / "killed.parquet"), str(work)], env=env, cwd=REPO)
    deadline = time.time() + 45
    while time.time() < deadline and len(list((work / "caption").glob("*.parquet"))) < 2:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    parts = {p: p.stat().st_mtime_ns for p in (work / "caption").glob("*.parquet")}
    assert 2 <= len(parts) < 6, "the run should have been killed mid-way"
    assert not (tmp_path / "killed.parquet").exists()

    res = _cli("--in", src, "--out", tmp_path / "resumed.parquet", "--model", models["caption"],
               "--max-new-tokens", 4, "--min-new-tokens", 4, "--dtype", "fp32", "--batch-size", 2,
               "--device", "cpu", "--work-dir", work)
    assert res.exit_code == 0, res.output
    fresh = run_stage(CaptionStage(CaptionConfig(model=str(models["caption"]), max_new_tokens=4, min_new_tokens=4,
                                                 dtype="fp32")),
                      src, tmp_path / "fresh.parquet", RunConfig(batch_size=2, work_dir=tmp_path / "w2", device="cpu"))
    assert fresh.reused == 0
    resumed, _ = read_manifest(tmp_path / "resumed.parquet")
    uninterrupted, _ = read_manifest(tmp_path / "fresh.parquet")
    assert resumed.num_rows == 12
    assert resumed.equals(uninterrupted)
    assert all(p.stat().st_mtime_ns == t for p, t in parts.items())  # finished batches were reused, not redone
    assert len(list((work / "caption").glob("*.parquet"))) == 6


def test_blip_ids_are_one_set_of_defaults():
    """The command, the stage, train predict --describe and `pipeline weights` name the same BLIP ids."""
    import inspect

    from features import blip, hub
    from pipeline.commands import caption as caption_command
    from train.predict import PredictConfig

    where = {w.name: w.where for w in hub.catalogue()}
    assert (where["BLIP captioning"], where["BLIP-VQA"]) == (blip.CAPTION_MODEL, blip.VQA_MODEL)
    assert (CaptionConfig().model, CaptionConfig().vqa_model) == (blip.CAPTION_MODEL, blip.VQA_MODEL)
    assert (PredictConfig().caption_model, PredictConfig().vqa_model) == (blip.CAPTION_MODEL, blip.VQA_MODEL)
    params = inspect.signature(caption_command.command).parameters
    assert (params["model"].default, params["vqa_model"].default) == (blip.CAPTION_MODEL, blip.VQA_MODEL)
