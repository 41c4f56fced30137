"""Usage errors (a bad option value, an unknown option, a missing argument or command) end in one
line naming the command and where its options are listed, exit 2: features/cli_edge.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipeline.cli import app as pipeline_app
from train.cli import app as train_app

CASES = [
    (train_app, ["predict", "x.jpg", "--top-k", "0"], "train predict", "Invalid value for '--top-k'"),
    (train_app, ["predict", "x.jpg", "--pad", "abc"], "train predict", "Invalid value for '--pad'"),
    (train_app, ["predict", "x.jpg", "--model-opt", "a"], "train predict", "No such option: --model-opt"),
    (train_app, ["predict"], "train predict", "Missing argument"),
    (train_app, ["export"], "train export", "Missing option '--checkpoint'"),
    (train_app, ["bogus"], "train", "No such command 'bogus'"),
    (pipeline_app, ["balance", "--in"], "pipeline balance", "Option '--in' requires an argument"),
]


@pytest.mark.parametrize("app,args,where,what", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_a_usage_error_is_one_line_naming_the_command(app, args, where, what):
    r = CliRunner().invoke(app, args)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{where}: {what}") and lines[0].endswith(f"(options: {where} --help)")
    assert "Usage:" not in r.output and "Traceback" not in r.output


def test_help_is_still_help():
    r = CliRunner().invoke(train_app, ["predict", "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output and "--top-k" in r.output


def test_command_errors_name_app_and_command_not_a_bare_error_tag(tmp_path):
    """`pipeline balance` and `pipeline synth` said `error: ...` through rich markup, unlike every
    other command's `<app> <command>: ...` (and rich would eat a `[word]` in the message)."""
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n1,2\n")
    r = CliRunner().invoke(pipeline_app, ["balance", "--in", str(csv), "--out", str(tmp_path / "b.parquet")])
    assert r.exit_code == 2 and r.stderr.startswith(f"pipeline balance: {csv}: not a readable Parquet file")
    a_file = tmp_path / "f"
    a_file.write_text("x")
    r = CliRunner().invoke(pipeline_app, ["synth", "--out", str(a_file)])
    assert r.exit_code == 2 and r.stderr.strip() == f"pipeline synth: --out {a_file} is a file; give a folder."


def test_ray_extra_survives_rich_help():
    r = CliRunner().invoke(pipeline_app, ["faces", "--help"], env={"COLUMNS": "300"})
    assert "pip install 'affectlab[ray]'" in r.output


@pytest.mark.parametrize("app", [pipeline_app, train_app], ids=["pipeline", "train"])
def test_no_flag_shows_a_value_type_in_help(app):
    """typer printed `--json <bool>`: a flag that looked as if it took a value."""
    import typer

    group = typer.main.get_command(app)
    names = [None, *group.list_commands(None)]
    for name in names:
        r = CliRunner().invoke(app, ([name] if name else []) + ["--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "<bool>" not in r.output, (name, r.output)


def test_a_stage_never_replaces_its_input_or_a_file_affectlab_did_not_write(tmp_path):
    """`pipeline faces --out /etc/passwd` replaced the file with Parquet, and `pipeline balance
    --out` equal to `--in` rewrote the training manifest in place: both exit 2, files untouched."""
    from tests.train_fixtures import write_pair

    train, _ = write_pair(tmp_path, n_train=14, n_val=7)
    before = train.read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's file\n")
    runner = CliRunner()
    r = runner.invoke(pipeline_app, ["faces", "--in", str(train), "--out", str(notes), "--backend", "haar"])
    assert r.exit_code == 2 and "exists and is not a manifest or feature file affectlab wrote" in r.stderr
    assert notes.read_text() == "a user's file\n" and not (tmp_path / "notes.txt.work").exists()
    r = runner.invoke(pipeline_app, ["balance", "--in", str(train), "--out", str(train)])
    assert r.exit_code == 2 and r.stderr.startswith(f"pipeline balance: --out {train} is also the input")
    assert train.read_bytes() == before
    r = runner.invoke(pipeline_app, ["merge", str(notes), str(train)])
    assert r.exit_code == 2 and notes.read_text() == "a user's file\n"
    # a stage's own earlier output may be replaced (re-running it)
    out = tmp_path / "bal.parquet"
    for _ in range(2):
        assert runner.invoke(pipeline_app, ["balance", "--in", str(train), "--out", str(out)]).exit_code == 0


def test_train_run_help_shows_defaults_and_what_is_required():
    r = CliRunner().invoke(train_app, ["run", "--help"], env={"COLUMNS": "300"})
    line = {ln.split()[1]: ln for ln in r.output.splitlines() if ln.startswith("│ --")}
    assert "[default: (10)]" in line["--epochs"] and "Required" in line["--manifest"]
    assert "MISSING" not in r.output and "default" not in line["--amp"]


@pytest.mark.parametrize("app", [pipeline_app, train_app], ids=["pipeline", "train"])
def test_every_device_option_defaults_to_auto(app):
    """predict, eval, calibrate and serve defaulted to cpu while run and the stages chose auto."""
    import dataclasses

    import typer

    from train.config import TrainConfig

    run_default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}["device"]
    group = typer.main.get_command(app)
    for name in group.list_commands(None):
        for p in group.get_command(None, name).params:
            if "--device" in getattr(p, "opts", ()):  # train run's options default to "not given"
                assert (run_default if p.default is None else p.default) == "auto", (name, p.default)


def test_stage_errors_are_one_clean_line(tmp_path):
    """A failing stage left a blank line (its bar) above the error on a pipe, an OSError showed
    '[Errno 21]', merge said 'pipeline merge: merge:', and faces' list of backends left out auto."""
    from tests.train_fixtures import write_pair

    train, _ = write_pair(tmp_path, n_train=14, n_val=7)
    runner = CliRunner()
    r = runner.invoke(pipeline_app, ["enhance", "--in", str(train), "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert r.stderr == f"pipeline enhance: --out {tmp_path} is a folder; give the path of the file to write\n"
    r = runner.invoke(pipeline_app, ["merge", str(tmp_path / "m.parquet"), str(train), str(train)])
    assert r.exit_code == 2 and r.stderr.startswith("pipeline merge: sample_ids repeated")
    assert "one shard given twice" in r.stderr
    r = runner.invoke(pipeline_app, ["faces", "--in", str(train), "--out", str(tmp_path / "f.parquet"),
                                     "--backend", "dlib"])
    assert r.exit_code == 2
    assert r.stderr.strip() == "pipeline faces: --backend 'dlib': expected one of auto, mtcnn, haar, retinaface"
    r = runner.invoke(pipeline_app, ["caption", "--in", str(train), "--out", str(tmp_path / "c.parquet"),
                                     "--model", str(tmp_path / "no-blip")])
    assert r.exit_code == 2 and r.stderr.startswith("pipeline caption: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
