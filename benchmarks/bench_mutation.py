"""Mutation score of the modules that compute what users read (`make bench-mutation`).

mutmut (https://github.com/boxed/mutmut, pinned in the `mutation` extra) makes small changes to
one module at a time (a `-` for a `+`, `<` for `<=`, a constant, a dropped argument) and runs
that module's own test files against each change. A change no test notices ("survived") is a
line whose behaviour the tests do not pin. Score = killed / (mutants - equivalent), where an
equivalent mutant is one that cannot change behaviour (named in EQUIVALENT below with the
reason); mutants in code that no selected test reaches ("no tests") count as not killed.

Why mutmut and not cosmic-ray (both measured 2026-12-05 on train/losses.py with
tests/test_losses.py, 2-core CPU shared with a training job, no GPU): mutmut 3.8.1 records which
tests reach each function and forks a warm pytest (torch already imported) per mutant: 258
mutants in 6.6 min, all of them run. cosmic-ray 8.7.0 starts the whole test command for every
mutant: 425 mutants, 4 of them took 49.5 s (12.4 s each), so about 88 min for this one small
module and days for the eight. It also rewrites the files in place, where mutmut writes a
mutants/ copy; both run here, only mutmut fits the time.

The tools rewrite source files, so nothing runs in the checkout: the tracked files (or
`--ref`'s tree) are copied to `--workdir` and mutated there. One module at a time; the JSON
keeps the other modules' last results, so modules can be re-run one by one.

    python benchmarks/bench_mutation.py [--module train/metrics.py ...] [--ref HEAD]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import io
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> (its own test files, mutant-name patterns or None for the whole module)
MODULES: dict[str, tuple[list[str], list[str] | None]] = {
    "features/labels.py": (["tests/test_features.py"], None),
    "features/manifest.py": (["tests/test_features.py", "tests/test_faults.py", "tests/test_manifest_values.py"],
                             None),
    "train/metrics.py": (["tests/test_metrics.py"], None),
    "train/calibrate.py": (["tests/test_calibrate.py"], None),
    # what decides the numbers a report holds: which rows and labels are scored, the TTA views,
    # the logits, ensembles, the honest variants and the scores; the orchestration (`evaluate`'s
    # reading, writing and refusals) and the plot writers around it are not in this run (1,351
    # mutants in all do not fit one run on the shared 2-core machine)
    "train/evaluate.py": (["tests/test_eval.py"],
                          [f"train.evaluate.x{f}__mutmut_*"
                           for f in ("_label_mapping", "__ckpt_label_set", "ǁLabelMappingǁas_dict", "_read_rows",
                                     "_clip_rows", "__inputs", "__tta_views", "_model_logits", "_variants",
                                     "__scores", "_ensemble_logits", "_worst_confused")]),
    "train/losses.py": (["tests/test_losses.py"], None),
    # the split and leak logic only: the readers and writers around it have their own fault tests
    "pipeline/ingest.py": (["tests/test_splits.py", "tests/test_ingest.py"],
                           [f"pipeline.ingest.x_{f}__mutmut_*"
                            for f in ("holdout", "_group_key", "assign_splits", "flag_duplicates")]),
    "pipeline/balance.py": (["tests/test_balance.py"], None),
}

# Mutants that cannot change any result, by name, with the reason (checked by reading the diff
# that `mutmut show NAME` prints in the workdir).
_POSITIVE = "the top-label confidence of a probability row is in [1/C, 1], so ceil(conf * n) - 1 already lies in [0, n - 1]: this clip bound never acts"
_TAG = "the tag only keeps rows without a group apart from group keys; any other string does the same"
_DIM = "logits are (B, C) by contract: dim=-1, dim=+1 and torch's implicit dim for 2-D input are the same axis"
_INT_IDX = "comparing a float bin index with the integer bin number gives the same masks"
_NULL_SIGN = ("null counts are only tested for being non-zero, and a running sum of counts >= 0 is "
              "non-zero exactly when its negation is")
_INFERRED = ("numpy infers int64 / bool from a non-empty list of Python ints / bools (leak is a non-null "
             "column), the dtype named; read_rows refuses a split with no rows, or none it can score, "
             "so the list is never empty")
EQUIVALENT: dict[str, str] = {
    "train.metrics.x_expected_calibration_error__mutmut_12": 'float("NAN") is the same NaN as float("nan")',
    "train.metrics.x_expected_calibration_error__mutmut_17": "astype(None) is float64, the same dtype",
    "train.metrics.x_expected_calibration_error__mutmut_23": _POSITIVE,
    "train.metrics.x_expected_calibration_error__mutmut_24": _POSITIVE,
    "train.metrics.x_expected_calibration_error__mutmut_29": _INT_IDX,
    "train.metrics.x_expected_calibration_error__mutmut_34": _POSITIVE,
    "train.metrics.x_reliability_bins__mutmut_16": _POSITIVE,
    "train.metrics.x_reliability_bins__mutmut_17": _POSITIVE,
    "train.metrics.x_reliability_bins__mutmut_22": _INT_IDX,
    "train.metrics.x_reliability_bins__mutmut_27": _POSITIVE,
    "train.metrics.x_group_average__mutmut_13": _TAG,
    "train.metrics.x_group_average__mutmut_14": _TAG,
    "train.metrics.x_score__mutmut_33": "a 0/1 target vector as float64 gives scikit-learn the same AUCs as int",
    "train.metrics.x_score__mutmut_104": "as _107: no scored class can hit F1's zero division, so the default "
                                         "('warn') neither warns nor changes a value",
    "train.metrics.x_score__mutmut_107": "macro-F1 is over classes present in the targets, so each has a positive row "
                                         "(2tp + fp + fn > 0): zero_division never applies to its F1",
    **{f"train.losses.{m}": _DIM for m in (
        "x_distill_kl__mutmut_6", "x_distill_kl__mutmut_8", "x_distill_kl__mutmut_10", "x_distill_kl__mutmut_14",
        "x_distill_kl__mutmut_16", "x_distill_kl__mutmut_18", "xǁFocalLossǁforward__mutmut_4",
        "xǁFocalLossǁforward__mutmut_6", "xǁFocalLossǁforward__mutmut_7")},
    "train.metrics.x_score__mutmut_121": "softmax probabilities are <= 1: the upper clip never acts",
    "train.metrics.x_score__mutmut_126": "softmax probabilities are <= 1: the upper clip never acts",
    **{f"features.manifest.x__check_file_values__mutmut_{n}": _NULL_SIGN for n in (26, 39)},
    **{f"features.manifest.x__check_file_values__mutmut_{n}": "a missing producer key gives None, and "
       "`None or b'{}'` is the same b'{}' as the default" for n in (51, 53)},
    **{f"features.manifest.x__check_file_values__mutmut_{n}": "the cache is read by membership "
       "(`key in _checked`), never by the value stored" for n in (81, 82)},
    **{f"features.manifest.x_check_values__mutmut_{n}": "pa.array of str names infers pa.string(); with no "
       "names (only reached with 0 rows) an empty null array compares the same: no mismatch" for n in (70, 72)},
    "features.manifest.x__tmp_for__mutmut_13": "os.umask returns the old mask whatever it sets, and the next "
                                               "line restores it; the value set in between is never used",
    "features.manifest.x_atomic_write_many__mutmut_2": "the loop sets `current` before anything in it can raise",
    "features.manifest.x_atomic_write_many__mutmut_30": "fsync needs only the descriptor: a text-mode open that "
                                                        "never reads syncs the same file",
    **{f"features.manifest.x_file_sha256__mutmut_{n}": "the chunk size (or one read of the whole file) "
       "changes memory use, not the digest of the bytes fed in order" for n in (13, 15, 16)},
    "features.manifest.x_sweep_stale_tmp__mutmut_7": "with a name, every file the wider glob adds fails the "
                                                     "exact name check below it",
    **{f"features.manifest.x_{f}__mutmut_{n}": "pyarrow reads codec names case-insensitively: 'ZSTD' is zstd"
       for f, n in (("write_manifest", 24), ("write_manifest_set", 32))},
    **{f"features.manifest.x_to_table__mutmut_{n}": "Table.from_arrays(schema=...) casts an all-null array to "
       "the field's type: pa.nulls(n) gives the same typed column as pa.nulls(n, f.type)" for n in (11, 13)},
    **{f"pipeline.ingest.x_holdout__mutmut_{n}": "holdout takes sequences of str (group keys, label names): "
       "np.asarray of str gives the same strings after .astype(str) with or without dtype=object"
       for n in (21, 23, 32, 34)},
    "pipeline.ingest.x_holdout__mutmut_43": "counting each row twice keeps every group's most common label "
                                            "(and Counter's tie order, which is insertion order)",
    **{f"pipeline.ingest.x_holdout__mutmut_{n}": "most_common(None) and most_common(2) list the same most "
       "common label first, the only one read" for n in (61, 62)},
    **{f"pipeline.ingest.x_holdout__mutmut_{n}": "scikit-learn's shuffle splits are drawn one after another from "
       "one RandomState(seed): the first split, the only one taken, does not depend on n_splits"
       for n in (76, 79, 92, 95, 146, 149)},
    **{f"pipeline.ingest.x_holdout__mutmut_{n}": "GroupShuffleSplit reads only the groups: its _iter_indices "
       "shuffles the unique groups and never reads X or y" for n in (137, 138)},
    "pipeline.balance.x__replay_parents__mutmut_22": "oversample asks imblearn only for classes below their "
                                                     "target, so no class has 0 rows to draw: never reached",
    **{f"pipeline.balance.x__replay_parents__mutmut_{n}": "oversample only asks whether the answer is "
       "'replayed'; any other word sends it to the search, which sets 'searched'"
       for n in (34, 35, 66, 67, 129, 130, 146, 147)},
    **{f"pipeline.balance.x__replay_parents__mutmut_{n}": "the check's windows then overlap or run on, but "
       "still cover every new row: the largest miss is the same" for n in (73, 77, 78, 79, 86)},
    **{f"pipeline.balance.x__replay_parents__mutmut_{n}": "astype(None) is float64, the same dtype"
       for n in (88, 89)},
    "pipeline.balance.x__replay_parents__mutmut_113": "at a step of exactly 0.5 both parents are equally near: "
                                                      "either order is 'nearer parent first'",
    "pipeline.balance.x__sampler__mutmut_17": "'borderline-1' is BorderlineSMOTE's default kind",
    **{f"pipeline.balance.x_oversample__mutmut_{n}": "y holds integer class ids: any integer dtype gives the "
       "same counts and draws, and new labels are cast to int64 after resampling" for n in (8, 10)},
    **{f"pipeline.balance.x_oversample__mutmut_{n}": "X is float32 from the first line and imblearn returns "
       "rows of X's dtype (_generate_samples ends with astype(X.dtype); RandomOverSampler indexes X)"
       for n in (58, 60)},
    **{f"pipeline.balance.x_oversample__mutmut_{n}": "y is int64 from the second line and imblearn's new "
       "labels take y's dtype (np.full(..., dtype=y.dtype))" for n in (62, 64)},
    **{f"pipeline.balance.x_oversample__mutmut_{n}": "the next line casts the stacked copies to int64"
       for n in (85, 87)},
    **{f"pipeline.balance.x_oversample__mutmut_{n}": "the `or` operand is read only when BorderlineSMOTE "
       "found no danger rows and the replay failed; with no danger rows imblearn draws nothing and the "
       "replay of nothing succeeds" for n in (130, 131, 132, 133, 134)},
    **{f"train.calibrate.x_calibrate__mutmut_{n}": "load_trained builds registry models, all subclasses of "
       "FERModel, which sets input_kind ('image') and needs_text (False): getattr's default is never read"
       for n in (20, 23, 26, 27, 33, 36, 39)},
    **{f"train.calibrate.x_calibrate__mutmut_{n}": "both add_logit_bias implementations (FERModel's, CMAEN's) "
       "cast the bias to the head's own dtype: a float64 bias gives the same float32 values" for n in (192, 194)},
    **{f"train.calibrate.x_class_prior__mutmut_{n}": "reading every column of the manifest instead of the two "
       "used gives the same split and label_id columns" for n in (3, 5)},
    "train.calibrate.x_class_prior__mutmut_31": "astype(None) is float64, the same dtype",
    **{f"train.calibrate.x_adjustment_curve__mutmut_{n}": "targets are integer class indices: asarray keeps an "
       "integer dtype, and scikit-learn's scores do not depend on its width" for n in (3, 5)},
    **{f"train.evaluate.x__inputs__mutmut_{n}": "getattr's default for a model without input_kind: any value "
       "but 'clip' takes the same branch as 'image'" for n in (3, 6, 9, 10)},
    **{f"train.evaluate.x__tta_views__mutmut_{n}": "align_corners=None, or left out, is False for bilinear "
       "interpolation (torch's default)" for n in (25, 30)},
    **{f"train.evaluate.x_{f}__mutmut_{n}": _INFERRED for f, ns in (("clip_rows", (44, 46, 48, 50)),
       ("read_rows", (56, 58, 78, 80, 140, 142)), ("variants", (15, 17))) for n in ns},
    **{f"train.evaluate.x_label_mapping__mutmut_{n}": "only mode 'none' refuses another label set; any other "
       "default maps it zero-shot, as 'auto' does" for n in (1, 2)},
    **{f"train.evaluate.x_read_rows__mutmut_{n}": "reading every column instead of those listed gives the same "
       "columns by name, rows and values" for n in (26, 28)},
    "train.evaluate.x_read_rows__mutmut_111": "frame_index is a core column (features/schema.py): open_manifest "
    "refuses a manifest without it before read_rows runs",
    "train.evaluate.x_worst_confused__mutmut_13": "numpy reads the sort kind case-insensitively: 'STABLE' is 'stable'",
}

KILLED = {1, 3, 36, 24, -24, 152, 255}  # killed or timed out (mutmut's own status table)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def copy_tree(dest: Path, ref: str | None) -> None:
    """The tracked files of the checkout (or of `ref`) into `dest`, nothing else."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if ref:
        data = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest, filter="data")
        return
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _function_of(pattern: str) -> str:
    """A mutant-name pattern's function as the code spells it: mutmut names a function's mutants
    `pkg.mod.x_NAME__mutmut_N` and a method's `pkg.mod.xǁClassǁNAME__mutmut_N`."""
    name = pattern.split("__mutmut")[0].rsplit(".", 1)[1][1:]
    return name.strip("ǁ").replace("ǁ", ".") if name.startswith("ǁ") else name[1:]


def configure(tree: Path, module: str, tests: list[str]) -> None:
    """Point mutmut at one module and its own tests (a [tool.mutmut] table in the copy's pyproject)."""
    text = (tree / "pyproject.toml").read_text()
    text = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", text)
    text += (
        "\n[tool.mutmut]\n"
        'source_paths = ["features", "pipeline", "train"]\n'
        f"only_mutate = [{json.dumps(module)}]\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        'also_copy = ["tests", "pyproject.toml", "benchmarks"]\n'
        # torch is not fork-safe after it has run: fork each mutant from a clean server process
        'process_isolation = "forkserver"\n'
    )
    (tree / "pyproject.toml").write_text(text)


# One process for every diff (a `mutmut show` per mutant costs a Python start-up each). This uses
# mutmut's own diff function, the one `mutmut show` prints, of the pinned release.
_DIFFS = """
import json, sys
from pathlib import Path
from mutmut.mutation.diff_apply import get_diff_for_mutant
path = Path(sys.argv[1])
out = {}
for name in sys.argv[2:]:
    try:
        out[name] = get_diff_for_mutant(name, path=path)
    except Exception as e:  # noqa: BLE001 - a diff that cannot be shown is reported, not fatal
        out[name] = f"(no diff: {e})"
print(json.dumps(out))
"""


def mutant_diffs(tree: Path, module: str, names: list[str], env: dict) -> dict[str, str]:
    """name -> the changed lines of its diff, '-' then '+', joined by ' | '."""
    if not names:
        return {}
    r = subprocess.run([sys.executable, "-c", _DIFFS, module, *names], cwd=tree, env=env,
                       capture_output=True, text=True)
    raw = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {n: r.stderr[-200:] for n in names}
    out = {}
    for name, diff in raw.items():
        lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        out[name] = " | ".join(ln.strip()[:160] for ln in lines) or diff.strip()[:200]
    return out


def run_module(module: str, workdir: Path, ref: str | None, max_children: int) -> dict:
    tests, patterns = MODULES[module]
    tree = workdir / "tree"
    copy_tree(tree, ref)
    configure(tree, module, tests)
    # one BLAS/torch thread per mutant: with more, a busy machine turns CPU-heavy mutants into
    # mutmut timeouts (counted as killed without a test failing) and the run crawls
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *(patterns or [])]
    log = workdir / f"{module.replace('/', '_')}.log"
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    meta = tree / "mutants" / f"{module}.meta"
    if not meta.is_file():
        raise SystemExit(f"mutmut produced no results for {module} (exit {rc}); see {log}")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    if patterns:
        import fnmatch

        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
    counts: dict[str, int] = {}
    for c in codes.values():
        counts[STATUS.get(c, "suspicious")] = counts.get(STATUS.get(c, "suspicious"), 0) + 1
    not_killed = sorted((k for k, c in codes.items() if c not in KILLED), key=_natural)
    diffs = mutant_diffs(tree, module, not_killed, env)
    equivalent = [{"mutant": k, "reason": EQUIVALENT[k], "diff": diffs[k]} for k in not_killed if k in EQUIVALENT]
    surviving = [{"mutant": k, "status": STATUS.get(codes[k], "suspicious"), "diff": diffs[k]}
                 for k in not_killed if k not in EQUIVALENT]
    killed = sum(1 for c in codes.values() if c in KILLED)
    scored = len(codes) - len(equivalent)
    return {
        "module": module, "tests": tests, "functions": patterns, "mutants": len(codes),
        "killed": killed, "equivalent": len(equivalent), "not_killed": len(surviving), "status_counts": counts,
        "score": round(100 * killed / scored, 1) if scored else None,
        "seconds": round(seconds, 1), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "surviving": surviving, "equivalent_mutants": equivalent,
    }


def reclassify(r: dict) -> dict:
    """Apply the current EQUIVALENT list to a stored result (no re-run needed to name one)."""
    keep, moved = [], list(r["equivalent_mutants"])
    for s in r["surviving"]:
        (moved if s["mutant"] in EQUIVALENT else keep).append(s)
    equivalent = [{"mutant": e["mutant"], "reason": EQUIVALENT.get(e["mutant"], e.get("reason", "")), "diff": e["diff"]}
                  for e in moved]
    scored = r["mutants"] - len(equivalent)
    return {**r, "surviving": keep, "equivalent_mutants": equivalent, "equivalent": len(equivalent),
            "not_killed": len(keep), "score": round(100 * r["killed"] / scored, 1) if scored else None}


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def machine() -> str:
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU, Python {platform.python_version()}"


def render(results: dict) -> str:
    from importlib.metadata import version

    rows = [r for m in MODULES if (r := results["modules"].get(m))]
    out = [
        "# Mutation score",
        "",
        "Written by `make bench-mutation` (`benchmarks/bench_mutation.py`; raw numbers in "
        "[mutation.json](mutation.json)). mutmut changes one module at a time and runs only that "
        "module's own test files; a surviving mutant is a change no test notices. Score = killed / "
        "(mutants - equivalent). Mutants in code that no selected test reaches count as not killed.",
        "",
        f"Tool: mutmut {results.get('mutmut', version('mutmut'))}. Machine: {results['machine']}.",
        "",
        "| module | tests | mutants | killed | equivalent | not killed | score | run | date |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        scope = r["module"] + (" (" + ", ".join(map(_function_of, r["functions"])) + ")" if r["functions"] else "")
        out.append(f"| {scope} | {', '.join(t.split('/')[-1] for t in r['tests'])} | {r['mutants']} | {r['killed']} "
                   f"| {r['equivalent']} | {r['not_killed']} | {r['score']} % | {r['seconds'] / 60:.1f} min | {r['date']} |")
    missing = [m for m in MODULES if m not in results["modules"]]
    if missing:
        out += ["", "Not measured yet: " + ", ".join(missing) + "."]
    for note in results.get("notes", []):
        out += ["", note]
    for r in rows:
        out += ["", f"## {r['module']}: not killed ({r['not_killed']})", ""]
        if not r["surviving"]:
            out.append("none")
        for s in r["surviving"]:
            out.append(f"- `{s['mutant']}` ({s['status']}): `{s['diff'].replace('`', chr(39))}`")
        for e in r["equivalent_mutants"]:
            out.append(f"- equivalent, excluded: `{e['mutant']}`: {e['reason']}")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", choices=list(MODULES),
                    help="module(s) to run (repeatable; default: all, one after another)")
    ap.add_argument("--ref", default=None, help="mutate this git ref's tree instead of the checkout's tracked files")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/affectlab-mutation"),
                    help="where the copy is mutated (never the checkout)")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--render-only", action="store_true",
                    help="re-apply the equivalent-mutant list to the stored JSON and rewrite the table; runs nothing")
    ap.add_argument("--json", type=Path, default=ROOT / "docs/results/mutation/mutation.json")
    ap.add_argument("--md", type=Path, default=ROOT / "docs/results/mutation/README.md")
    args = ap.parse_args(argv)
    try:
        from importlib.metadata import version

        tool = version("mutmut")
    except Exception:  # noqa: BLE001 - any failure here means the extra is not installed
        print("mutmut is not installed; run `make bench-mutation` (it installs the `mutation` extra)",
              file=sys.stderr)
        return 2
    if args.workdir.resolve() == ROOT or ROOT in args.workdir.resolve().parents:
        print(f"--workdir {args.workdir} is inside the checkout; mutation must run on a copy", file=sys.stderr)
        return 2
    results = json.loads(args.json.read_text()) if args.json.is_file() else {"modules": {}}
    results.update({"tool": "mutmut", "mutmut": tool, "machine": machine(),
                    "command": "make bench-mutation"})
    results["modules"] = {m: reclassify(r) for m, r in results["modules"].items()}
    if args.render_only:
        args.md.write_text(render(results))
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    for module in args.module or list(MODULES):
        print(f"mutating {module} ...", flush=True)
        r = run_module(module, args.workdir, args.ref, args.max_children)
        results["modules"][module] = r
        print(f"  {r['killed']}/{r['mutants'] - r['equivalent']} killed = {r['score']} % in {r['seconds']:.0f} s",
              flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        # another module's run may have finished meanwhile: merge into what is on disk now
        on_disk = json.loads(args.json.read_text()) if args.json.is_file() else {"modules": {}}
        on_disk.setdefault("modules", {}).update({module: r})
        results = {**results, "modules": {m: reclassify(v) for m, v in on_disk["modules"].items()}}
        if "notes" in on_disk:
            results["notes"] = on_disk["notes"]
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        args.md.write_text(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
