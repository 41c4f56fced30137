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
