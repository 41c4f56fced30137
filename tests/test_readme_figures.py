"""Every number in the checked result tables comes from a committed JSON file, and every
relative link in README.md and docs/ leads to a file that exists.

The convention (docs/results/throughput.md): a results table is introduced by the line
`<!-- figures: ... -->` (FIGURES_MARKER below); it has a column named "figure"; a row whose figure
cell holds a number links, anywhere in the row, the committed `.json` / `.jsonl` file(s) that
hold it, written by the command named in that row. Each number in the figure cell must equal a
number in those files at the precision it is printed with (9,154 matches 9153.7; 0.82 matches
0.818): a numeric value, or a number inside a string value (the benchmarks' notes, e.g.
"3.92 s"). Code spans (commands) and link targets in the figure cell are not figures. A number
that no committed file holds has no place in these tables: drop it or commit the JSON. Marked
tables may sit in README.md or in any page under docs/; links resolve from the page's folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# README.md and every Markdown page under docs/ (results pages included)
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
FIGURES_MARKER = "<!-- figures:"
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
CODE = re.compile(r"`[^`]*`")
# a figure: 9,154 | 3.92 | 4.8e-4 | 2026-11-26 (dates are checked as text); not the 18 of ResNet-18
NUMBER = re.compile(r"(?<![\w.\-/])(\d{4}-\d{2}-\d{2}|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?)(?![\w-])")
# inside the JSON's strings any digits count ("1.46x", "48x48", "0.40x local")
IN_STRING = re.compile(r"(?<![\d.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def checked_tables(text: str, name: str = "README") -> list[list[dict]]:
    """The tables that follow a FIGURES_MARKER line, as lists of {column: cell} plus '_row'."""
    lines = text.splitlines()
    tables = []
    for i, line in enumerate(lines):
        if not line.strip().startswith(FIGURES_MARKER):
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or not lines[j].lstrip().startswith("|"):
            raise AssertionError(f"{name} line {i + 1}: a figures marker must come right before a table")
        header = _cells(lines[j])
        rows = []
        for k in range(j + 2, len(lines)):
            if not lines[k].lstrip().startswith("|"):
                break
            cells = _cells(lines[k])
            rows.append({**dict(zip(header, cells)), "_row": lines[k], "_line": k + 1})
        tables.append(rows)
    return tables


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def figures(cell: str) -> list[str]:
    """The numbers a reader takes from a figure cell (link text kept, targets and code dropped)."""
    cell = LINK.sub(lambda m: m.group(1), CODE.sub(" ", cell))
    return NUMBER.findall(cell)


def json_numbers(path: Path) -> tuple[list[float], str]:
    """Every number in a .json / .jsonl file (values, and numbers inside its strings), and its text."""
    text = path.read_text()
    docs = [json.loads(ln) for ln in text.splitlines() if ln.strip()] if path.suffix == ".jsonl" else [json.loads(text)]
    out: list[float] = []

    def walk(v):
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, (int, float)):
            out.append(float(v))
        elif isinstance(v, str):
            out.extend(_value(n) for n in IN_STRING.findall(v))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for d in docs:
        walk(d)
    return out, text


def _value(token: str) -> float:
    return float(token.replace(",", ""))


def matches(token: str, numbers: list[float], text: str) -> bool:
    """`token` as printed equals one of `numbers` rounded to the printed precision."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", token):
        return token in text
    mant, _, exp = token.replace(",", "").partition("e")
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    tol = 0.5 * 10 ** (-decimals + (int(exp) if exp else 0)) + 1e-12
    value = _value(token)
    return any(abs(v - value) <= tol for v in numbers)


def problems(rows: list[dict], root: Path) -> list[str]:
    """What is wrong with one checked table: unbacked numbers, missing links or files."""
    out = []
    for r in rows:
        if "figure" not in r:
            out.append(f"line {r['_line']}: the table has no 'figure' column")
            continue
        nums = figures(r["figure"])
        if not nums:
            continue
        links = [t for _, t in LINK.findall(r["_row"]) if t.split("#")[0].endswith((".json", ".jsonl"))]
        if not links:
            out.append(f"line {r['_line']}: figures {nums} but no JSON linked in the row")
            continue
        pool, texts = [], []
        for t in links:
            p = root / t.split("#")[0]
            if not p.is_file():
                out.append(f"line {r['_line']}: linked {t} does not exist")
                continue
            n, text = json_numbers(p)
            pool += n
            texts.append(text)
        for tok in nums:
            if not matches(tok, pool, "\n".join(texts)):
                out.append(f"line {r['_line']}: {tok} is in none of {links}")
    return out


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def all_checked_tables() -> list[tuple[Path, list[dict]]]:
    """(page, table) for every marked table in README.md and docs/**/*.md."""
    return [(p, t) for p in PAGES for t in checked_tables(p.read_text(), _rel(p))]


def test_the_docs_have_their_checked_result_tables():
    tables = all_checked_tables()
    assert len(tables) >= 2, "the 'Data and stages' and 'Training and scale-out' tables carry the figures marker"
    assert sum(1 for _, t in tables for r in t if figures(r.get("figure", ""))) >= 8


def test_every_checked_figure_is_in_its_json():
    bad = [f"{_rel(page)} {p}" for page, t in all_checked_tables() for p in problems(t, page.parent)]
    assert not bad, "\n".join(bad)


# A grid table (several figures per row, e.g. README's "Results at a glance") is introduced by
# `<!-- figures-grid: a.json b.json -->`, naming the committed JSON files (relative to the page)
# that hold its numbers: every number in every cell but the first column must be one of them at
# the printed precision; a number printed with "%" may also be a fraction (64.45 % = 0.6445).
GRID_MARKER = re.compile(r"<!--\s*figures-grid:([^>]*)-->")


def grid_tables(text: str) -> list[tuple[list[str], list[dict]]]:
    """(json paths, rows) for every table after a GRID_MARKER line."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = GRID_MARKER.search(line)
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        header = _cells(lines[j])
        rows = []
        for k in range(j + 2, len(lines)):
            if not lines[k].lstrip().startswith("|"):
                break
            rows.append({"cells": _cells(lines[k])[1:], "_line": k + 1, "_header": header})
        out.append((m.group(1).split(), rows))
    return out


def grid_problems(paths: list[str], rows: list[dict], root: Path) -> list[str]:
    pool, texts, out = [], [], []
    for t in paths:
        if not (root / t).is_file():
            out.append(f"{t} named by a figures-grid marker does not exist")
            continue
        n, text = json_numbers(root / t)
        pool += n
        texts.append(text)
    percent_pool = pool + [100 * v for v in pool]
    for r in rows:
        for cell in r["cells"]:
            plain = LINK.sub(lambda m: m.group(1), CODE.sub(" ", cell))
            for m in NUMBER.finditer(plain):
                tok = m.group(1)
                is_pct = plain[m.end():].lstrip().startswith("%")
                # a bare number beside a percentage in the same cell ("flip 65.46", "UAR 46.5") is one too
                pct_cell = "%" in plain
                if not matches(tok, percent_pool if (is_pct or pct_cell) else pool, "\n".join(texts)):
                    out.append(f"line {r['_line']}: {tok} is in none of {paths}")
    return out


def test_every_grid_figure_is_in_its_json():
    grids = [(p, g) for p in PAGES for g in grid_tables(p.read_text())]
    assert any(p == README for p, _ in grids), "README's results table carries a figures-grid marker"
    bad = [f"{_rel(p)} {x}" for p, (paths, rows) in grids for x in grid_problems(paths, rows, p.parent)]
    assert not bad, "\n".join(bad)


def test_the_grid_check_fails_on_a_number_no_json_holds(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"war": 0.6445, "ms": 1.6018, "wild": 62.3}))
    good = "| | acc | ms | wild |\n|---|---|---|---|\n| m | 64.45 % | 1.60 ms | 62.3 % |\n"
    (paths, rows), = grid_tables("<!-- figures-grid: a.json -->\n" + good)
    assert grid_problems(paths, rows, tmp_path) == []
    (paths, rows), = grid_tables("<!-- figures-grid: a.json -->\n" + good.replace("62.3 %", "62.4 %"))
    assert grid_problems(paths, rows, tmp_path) == [f"line 4: 62.4 is in none of ['a.json']"]


# [text](target) and ![alt](target), optionally <target> and a "title"; code is not a link
MD_LINK = re.compile(r"!?\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown page that point into the repository (no URL, no bare #anchor),
    outside code blocks and code spans, without their #anchor."""
    text = CODE.sub(" ", FENCE.sub(" ", text))
    out = []
    for target in MD_LINK.findall(text):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue
        out.append(target.split("#")[0])
    return out


def broken_links(page: Path) -> list[str]:
    return [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]


def test_every_relative_link_resolves():
    bad = [f"{_rel(p)}: {t}" for p in PAGES for t in broken_links(p)]
    assert not bad, "links to files that do not exist:\n" + "\n".join(bad)


def test_the_link_check_fails_on_a_missing_file(tmp_path):
    (tmp_path / "there.md").write_text("x")
    (tmp_path / "img.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-section) ![ok](img.png) [web](https://example.org/x) [here](#top)\n"
                    "`[not a link](gone-in-code.md)`\n```\n[not a link](gone-in-fence.md)\n```\n"
                    "[bad](gone.md) ![bad](sub/gone.png \"title\")\n")
    assert broken_links(page) == ["gone.md", "sub/gone.png"]


@pytest.fixture
def fake(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"rows": [{"ours": 2686.52, "ratio": 1.233,
                                                           "note": "workers=auto, 3.92 s", "at": "2026-11-26 02:24"}],
                                                 "err": 0.00048}))
    (tmp_path / "log.jsonl").write_text('{"epoch": 1, "img_s": 316.3}\n{"epoch": 2, "img_s": 330.8}\n')
    return tmp_path


def _table(*rows: str) -> str:
    return "\n".join([FIGURES_MARKER + " test -->", "", "| what | figure | command |", "|---|---|---|", *rows])


def test_the_check_accepts_printed_precision(fake):
    text = _table("| a | 2,687 img/s (1.23×), 3.92 s, error 4.8e-4, on 2026-11-26 | `make x --n 64` ([json](r.json)) |",
                  "| b | 316–331 img/s | [log](log.jsonl) |",
                  "| c | no number here, ResNet-18 and fp32 are names | `pytest` |")
    (rows,) = checked_tables(text)
    assert problems(rows, fake) == []


@pytest.mark.parametrize("row, want", [
    ("| a | 2,688 img/s | [json](r.json) |", "2,688 is in none"),      # off by one in the last digit
    ("| a | 1.24× | [json](r.json) |", "1.24 is in none"),              # a ratio that rounds otherwise
    ("| a | 4.9e-4 | [json](r.json) |", "4.9e-4 is in none"),
    ("| a | on 2026-11-27 | [json](r.json) |", "2026-11-27 is in none"),
    ("| a | 316–332 img/s | [log](log.jsonl) |", "332 is in none"),
    ("| a | 3.92 s | `make x` |", "no JSON linked"),
    ("| a | 3.92 s | [json](gone.json) |", "does not exist"),
])
def test_the_check_fails_on_an_unbacked_number(fake, row, want):
    (rows,) = checked_tables(_table(row))
    assert any(want in p for p in problems(rows, fake)), problems(rows, fake)
