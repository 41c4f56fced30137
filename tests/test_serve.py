"""`train serve` checked as a person would: the real command on a free loopback port, driven with
gradio_client (photos, hostile uploads, a short video) and looked at in headless Chromium.

The server is `train serve --stop-after`, so it ends by itself even if a test run is killed; the
fixture also stops it (bounded waits) when the module is done."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="gradio is not installed (the serve extra: pip install -e '.[serve]')")
pytest.importorskip("gradio_client", reason="gradio_client is not installed (the serve extra)")

FER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013" / "train.parquet"
ASTRONAUT_FACE = (160, 40, 300, 200)  # x0, y0, x1, y1: where the face is in skimage's astronaut
STARTUP_S = 180  # a cold import of gradio + torch on a busy 2-core machine
LIFETIME_S = 900  # the server stops itself after this, whatever happens to the test run


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio-tmp"))}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "train.cli", "serve", "--host", "127.0.0.1", "--port",
                                 str(port), "--stop-after", str(LIFETIME_S)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_S
        while not _up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"train serve did not come up on {url}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url, proc, log
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the command closes the page and exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image
    from skimage.data import astronaut

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(astronaut()).save(d / "astronaut.png")
    if FER.exists():  # a real FER2013 training face (48x48 grey)
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(FER).iter_batches(batch_size=1, columns=["image"]))
        (d / "fer2013.png").write_bytes(batch.column("image")[0].as_py())
    else:  # the same kind of input: a tight 48x48 grey face crop
        Image.fromarray(astronaut()[40:200, 160:300]).convert("L").resize((48, 48)).save(d / "fer2013.png")
    (d / "notes.png").write_text("not an image, whatever the name says")
    Image.new("L", (10_000, 10_000)).save(d / "huge.png")  # 100 megapixels, ~100 KB on disk
    (d / "empty.mp4").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def predictor():
    from train.api import EmotionPredictor

    return EmotionPredictor.from_checkpoint(None)


def _photos(client, *paths):
    from gradio_client import handle_file

    boxed, panels, label, records, message = client.predict([handle_file(str(p)) for p in paths],
                                                          api_name="/photos")
    return boxed, panels, label, records, message


def test_astronaut_and_a_fer_face_are_boxed_and_labelled_as_the_api_does(client, photos, predictor):
    boxed, panels, label, records, message = _photos(client, photos / "astronaut.png", photos / "fer2013.png")
    assert [Path(b["image"]).is_file() for b in boxed] == [True, True]  # both photos drawn with boxes
    astro = [r for r in records if r["image"] == "astronaut.png"]
    fer = [r for r in records if r["image"] == "fer2013.png"]
    assert astro and fer
    x, y, w, h = astro[0]["box"]
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert astro[0]["face_source"] == "detector" and x0 <= x + w / 2 <= x1 and y0 <= y + h / 2 <= y1
    bx, by, bw, bh = fer[0]["box"]
    assert 0 <= bx and 0 <= by and bx + bw <= 48 and by + bh <= 48
    # the page says what EmotionPredictor says, face for face
    for name, rows in (("astronaut.png", astro), ("fer2013.png", fer)):
        api = predictor.predict(photos / name, k=3)
        assert [r["label"] for r in rows] == [f.label for f in api]
        assert [r["box"] for r in rows] == [list(f.box) for f in api]
        assert [r["prob"] for r in rows] == pytest.approx([f.prob for f in api], abs=1e-3)
        assert all(len(r["topk"]) == 3 and r["topk"][0][0] == r["label"] for r in rows)
    assert label["label"] == astro[0]["label"]  # the bars show the first face's top-k
    from PIL import Image

    with Image.open(panels) as im:  # one panel per face, stacked
        assert im.height >= len(records) * 200
    assert message.startswith("2 photo(s)")


def test_a_webcam_snapshot_is_analysed_like_a_photo(client, photos, predictor):
    from gradio_client import handle_file

    _, _, label, records, message = client.predict(handle_file(str(photos / "astronaut.png")), api_name="/webcam")
    api = predictor.predict(photos / "astronaut.png", k=3)
    assert [r["image"] for r in records] == ["webcam"] * len(api)
    assert [(r["label"], r["box"]) for r in records] == [(f.label, list(f.box)) for f in api]
    assert label["label"] == records[0]["label"] and message.startswith("1 photo(s)")


@pytest.mark.parametrize("name, says", [("notes.png", "not a readable image"), ("huge.png", "too large"),
                                        ("empty.mp4", "not a readable image")])
def test_a_hostile_photo_is_a_message_and_the_server_answers_the_next_request(client, photos, name, says):
    boxed, panels, label, records, message = _photos(client, photos / name)
    assert records == [] and boxed == []
    assert name in message and says in message
    assert str(photos) not in message and "/gradio" not in message  # names the upload, not a temp path
    _, _, _, records, _ = _photos(client, photos / "astronaut.png")
    assert records and records[0]["image"] == "astronaut.png"


def test_an_empty_video_is_a_message_and_a_short_one_is_a_timeline(client, photos, tmp_path):
    import cv2
    from gradio_client import handle_file
    from skimage.data import astronaut

    plot, summary, message = client.predict(handle_file(str(photos / "empty.mp4")), api_name="/video")
    assert plot is None and "empty.mp4" in message
    video = tmp_path / "short.avi"
    frame = cv2.cvtColor(cv2.resize(astronaut(), (256, 256)), cv2.COLOR_RGB2BGR)
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    for i in range(12):  # 8 frames of the astronaut moving, then 4 black ones
        w.write(np.roll(frame, i, axis=1) if i < 8 else np.zeros_like(frame))
    w.release()
    plot, summary, message = client.predict(handle_file(str(video)), api_name="/video")
    assert Path(plot).is_file()
    assert summary["frames"] == 12 and summary["frames_with_face"] == 8 and summary["frames_without_face"] == 4
    assert [e["label"] is None for e in summary["timeline"]] == [False] * 8 + [True] * 4
    assert sum(summary["labels"].values()) == 8
    _, _, _, records, _ = _photos(client, photos / "astronaut.png")  # still answering
    assert records


def test_page_renders_in_chromium_without_console_errors(server, photos, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from browser import broken_images, chromium, console_errors

    url, _, _ = server
    with chromium(tmp_path / "profile", height=1500) as drv:
        drv.get(url)
        wait = WebDriverWait(drv, 60)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#photos-in input[type=file]")))
        drv.find_element(By.CSS_SELECTOR, "#photos-in input[type=file]").send_keys(
            str(photos / "astronaut.png"))
        wait.until(lambda d: "astronaut" in d.find_element(By.ID, "photos-in").text)  # uploaded
        drv.find_element(By.XPATH, "//button[normalize-space()='Analyse']").click()
        wait.until(lambda d: "face(s) found" in d.find_element(By.TAG_NAME, "body").text)
        wait.until(lambda d: len(d.find_elements(By.TAG_NAME, "img")) >= 2)  # the boxed photo and its panel
        time.sleep(1)  # let the images finish decoding before the picture is taken
        body = drv.find_element(By.TAG_NAME, "body").text
        errors = console_errors(drv)
        broken = broken_images(drv)
        drv.save_screenshot(str(tmp_path / "serve.png"))
    assert "happy" in body or any(c in body for c in ("angry", "sad", "neutral", "surprise", "fear", "disgust"))
    assert errors == []
    assert broken == []
    assert (tmp_path / "serve.png").stat().st_size > 20_000
    print(f"screenshot: {tmp_path / 'serve.png'}")


def test_serve_names_its_url_and_flag_not_gradios_python_hint(server):
    """The banner says where the page is and names `--share`, not Gradio's `share=True`."""
    url, _, log = server
    text = log.read_text()
    assert f"serving on {url}" in text and "--share" in text, text[-2000:]
    assert "share=True" not in text and "launch()" not in text, text[-2000:]


def test_serve_refuses_a_taken_port_in_one_line(server):
    from typer.testing import CliRunner

    from train.cli import app

    port = int(server[0].rstrip("/").rsplit(":", 1)[1])
    r = CliRunner().invoke(app, ["serve", "--port", str(port), "--stop-after", "5"])
    assert r.exit_code == 2, r.output
    assert "--port" in r.output and "Traceback" not in r.output


def test_serve_takes_the_retinaface_weights_folder_its_message_names(tmp_path):
    """`--detector retinaface` without weights names `--weights-dir`, and serve accepts that flag."""
    from typer.testing import CliRunner

    from train.cli import app

    r = CliRunner().invoke(app, ["serve", "--detector", "retinaface", "--weights-dir", str(tmp_path),
                                 "--stop-after", "5"])
    assert r.exit_code == 2, r.output
    assert "--weights-dir" in r.output and "No such option" not in r.output and "Traceback" not in r.output


def test_serve_resolves_device_as_predict_does():
    """`--device auto` works and `--device cuda` without a GPU is one line (serve passed the
    string to torch as it was)."""
    import torch
    from typer.testing import CliRunner

    from train.cli import app

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: --device cuda is valid here")
    r = CliRunner().invoke(app, ["serve", "--device", "cuda", "--stop-after", "5"])
    assert r.exit_code == 2 and "torch sees no CUDA GPU" in r.output and "Traceback" not in r.output
