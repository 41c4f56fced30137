"""A 2-process `torchrun --standalone` CPU (gloo) run: exact sampler coverage, validation
gathered across ranks equal to one process, resume across world sizes, rank-0 checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import TINY_VGG, write_pair  # noqa: E402

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent('''
    import json, sys
    import torch
    import torch.distributed as dist
    from train.checkpoint import load_checkpoint, preprocess_of
    from train.config import make_config
    from train.data import BatchLoader, input_spec_for, load_split
    from train.distributed import init_from_env
    from train.loop import BatchPrep, fit, validate
    from train.metrics import validation_scores

    args = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    info = init_from_env("cpu")
    model, side = load_checkpoint(args["ckpt"])
    spec = input_spec_for(model, preprocess_of(side))
    train = load_split(args["train"], "train", spec, workers=1)
    cover = {}
    for epoch in (0, 1):
        ld = BatchLoader(train, 4, True, seed=0, rank=info.rank, world=info.world)
        ld.set_epoch(epoch)
        mine = [i for b in ld for i in b["index"].tolist()]
        every = [None] * info.world
        dist.all_gather_object(every, mine)
        cover[epoch] = every
    val = load_split(args["val"], "val", spec, workers=1)
    loader = BatchLoader(val, 4, False, rank=info.rank, world=info.world)
    logits, targets = validate(model, loader, BatchPrep("cpu", spec.preprocess), dist_info=info)
    out = {"world": info.world, "cover": cover, "logits": logits.tolist(), "targets": targets.tolist(),
           "metrics": validation_scores(logits, targets, len(side["labels"]["class_names"]))}
    if info.rank == 0:
        json.dump(out, open(args["report"], "w"))
    # resume the 1-process run under 2 processes (fit tears the process group down at the end)
    fit(make_config(**args["cfg"]))
''')


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    from train.checkpoint import load_checkpoint, preprocess_of
    from train.config import make_config
    from train.data import BatchLoader, input_spec_for, load_split
    from train.loop import BatchPrep, fit, validate
    from train.metrics import validation_scores

    torch.set_num_threads(1)
    tr, va = write_pair(tmp_path, n_train=31, n_val=15)  # odd sizes: shares differ by one row
    cfg = dict(manifest=str(tr), val=str(va), model="vgg", model_options=dict(TINY_VGG), epochs=1,
               batch_size=4, out=str(tmp_path / "one"), device="cpu", workers=1)
    fit(make_config(**cfg))
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    (tmp_path / "worker.py").write_text(WORKER)
    args = {"ckpt": str(tmp_path / "one"), "train": str(tr), "val": str(va),
            "report": str(tmp_path / "report.json"),
            "cfg": cfg | {"out": str(tmp_path / "two"), "epochs": 2, "resume": True}}
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(tmp_path / "worker.py"), json.dumps(args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["world"] == 2

    # every training row exactly once per epoch, across both ranks; a new order each epoch
    for epoch, shares in rep["cover"].items():
        assert sorted(shares[0] + shares[1]) == list(range(31)), epoch
        assert abs(len(shares[0]) - len(shares[1])) <= 1
    assert rep["cover"]["0"] != rep["cover"]["1"]

    # gathered validation == one process on the same checkpoint
    model, side = load_checkpoint(tmp_path / "one")
    spec = input_spec_for(model, preprocess_of(side))
    val = load_split(va, "val", spec, workers=1)
    logits, targets = validate(model, BatchLoader(val, 4, False), BatchPrep("cpu", spec.preprocess))
    assert rep["targets"] == targets.tolist()
    assert torch.allclose(torch.tensor(rep["logits"]), logits, atol=1e-5)
    assert rep["metrics"] == validation_scores(logits, targets, 7)

    # the 2-process resume wrote rank-0 checkpoints for epoch 2, nothing stray
    two = tmp_path / "two"
    side2 = json.loads((two / "last.json").read_text())
    assert side2["epoch"] == 2 and side2["world_size"] == 2
    assert len((two / "log.jsonl").read_text().splitlines()) == 2
    assert not list(two.glob("*.tmp")) and not list(two.glob(".*.tmp"))
