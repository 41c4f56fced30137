"""`train eval --html`: one self-contained report.html, escaped, with every plot embedded, and
loaded in headless Chromium (images load, no console errors)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from test_eval import manifest, tiny_checkpoint


@pytest.fixture(scope="module")
def html_report(tmp_path_factory):
    from typer.testing import CliRunner

    from train.cli import app

    run = tmp_path_factory.mktemp("run")
    tiny_checkpoint(run, log=True)
    test = manifest(tmp_path_factory.mktemp("m") / "fer_test.parquet", "fer2013")
    out = tmp_path_factory.mktemp("eval")
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--manifest", str(test), "--tta", "flip",
                                 "--out", str(out), "--html"])
    assert r.exit_code == 0, r.output
    return out, run, test


def test_every_plot_is_embedded_and_nothing_is_fetched(html_report):
    out, _, _ = html_report
    report = json.loads((out / "report.json").read_text())
    html = (out / "report.html").read_text()
    assert {"confusion_counts", "roc", "pr", "reliability", "tsne", "training_curves",
            "worst_confused"} <= set(report["plots"])
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == len(report["plots"])
    assert all(base64.b64decode(u).startswith(b"\x89PNG") for u in uris)
    for key, fname in report["plots"].items():
        assert f'id="fig-{key}"' in html
        assert base64.b64encode((out / fname).read_bytes()).decode() in uris  # the very file written
    # no network: nothing refers to another resource by URL
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_tables_hold_every_variant_and_the_command(html_report):
    out, run, test = html_report
    report = json.loads((out / "report.json").read_text())
    html = (out / "report.html").read_text()
    for vname, modes in report["variants"].items():
        for mode, s in modes.items():
            assert re.search(rf'<td class="name">{vname}</td><td class="name">{mode}</td><td>{s["n"]}</td>'
                             rf'<td>{100 * s["war"]:.2f} %</td>', html), (vname, mode)
    assert {"leak_free", "private_test"} <= set(report["variants"])
    assert f"train eval --checkpoint {run} --manifest {test} --tta flip --out {out} --html</pre>" in html


def test_worst_confused_are_the_most_confident_mistakes():
    from train.evaluate import worst_confused

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    targets = np.array([0, 0, 1, 0, 1])
    # mistakes: rows 1 (0.8), 2 (0.6), 3 (0.7), 4 (0.95)
    assert worst_confused(probs, targets, 3).tolist() == [4, 1, 3]
    assert worst_confused(probs, np.argmax(probs, 1), 3).tolist() == []


def test_text_is_escaped_and_missing_plots_are_named(html_report, tmp_path):
    from train.report_html import render_html

    out, _, _ = html_report
    report = json.loads((out / "report.json").read_text())
    report["model"] = "<script>alert(1)</script>"
    report["plots"] = {**report["plots"], "extra": "gone.png"}
    html = render_html(report, out, command="train eval <x>")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "train eval &lt;x&gt;" in html
    assert "gone.png" in html


def test_unwritable_out_is_one_line_exit_2(html_report, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    _, run, test = html_report
    blocker = tmp_path / "out"
    blocker.mkdir()
    (blocker / "report.html").mkdir()  # a folder where the page should go
    r = CliRunner().invoke(app, ["eval", "-c", str(run), "-m", str(test), "--out", str(blocker), "--no-plots",
                                 "--html"])
    assert r.exit_code == 2, r.output
    assert "report.html" in r.output and "Traceback" not in r.output


def test_report_opens_from_disk_in_chromium(html_report, tmp_path):
    from browser import broken_images, chromium, console_errors

    out, _, _ = html_report
    with chromium(tmp_path / "profile") as drv:
        drv.get((out / "report.html").resolve().as_uri())
        drv.execute_script("window.scrollTo(0, 0)")
        n_images = drv.execute_script("return document.images.length")
        broken = broken_images(drv)
        errors = console_errors(drv)
        drv.save_screenshot(str(tmp_path / "report.png"))
    assert n_images == len(json.loads((out / "report.json").read_text())["plots"])
    assert broken == []
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'report.png'}")
