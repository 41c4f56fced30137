"""`pipeline weights`: every pretrained file affectlab can use, where it goes, and whether it is here."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def collect(verify: bool = True) -> list[dict]:
    """One dict per catalogue entry (features.hub.catalogue): name, used_by, location, present,
    path, sha256 (of the present file, when `verify`), expected (known digest or null) and
    status: missing | ok | MISMATCH | present (no known digest to compare)."""
    from features.hub import catalogue
    from features.manifest import file_sha256

    rows = []
    for w in catalogue():
        p = w.path()
        row = {"name": w.name, "used_by": w.used_by, "location": w.location(), "file": w.file,
               "present": p is not None, "path": str(p) if p else None, "get": w.get,
               "sha256": None, "expected": None, "status": "missing"}
        if p is not None:
            row["expected"] = w.expected_sha256(p)
            row["status"] = "present"
            if verify:
                row["sha256"] = file_sha256(p)
                if row["expected"]:
                    # a torchvision name carries only the digest's first 8 hex digits
                    row["status"] = "ok" if row["sha256"].startswith(row["expected"]) else "MISMATCH"
        rows.append(row)
    return rows


def command(
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="sha256 every present file and "
                                         "compare with its known digest.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every pretrained file the toolkit can use (BLIP, BLIP-VQA, CLIP, DistilBERT, SwinIR,
    DDColor, RetinaFace, ImageNet ResNet, MTCNN, EfficientNet-Lite), where each goes, which are
    present, and their sha256. Nothing is downloaded. Exit 1 when a present file does not match
    its known digest (a truncated or replaced file)."""
    rows = collect(verify)
    bad = [r for r in rows if r["status"] == "MISMATCH"]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
        t = Table(title="pretrained files (HF ids: HF cache; files: $AFFECTLAB_WEIGHTS or ./weights; "
                  "ImageNet ResNet: $TORCH_HOME/hub/checkpoints)")
        for c in ("file", "status", "where it goes", "used by", "sha256"):
            t.add_column(c, overflow="fold")
        for r in rows:
            style = {"ok": "green", "present": "green", "MISMATCH": "red"}.get(r["status"], "yellow")
            digest = r["sha256"] or r["expected"] or ""
            t.add_row(escape(f"{r['name']}\n{r['file']}"), f"[{style}]{r['status']}[/]",
                      escape(r["location"] + ("" if r["present"] else f"\nget it: {r['get']}")),
                      escape(r["used_by"]), digest)
        console.print(t)
        n = sum(r["present"] for r in rows)
        console.print(f"{n} of {len(rows)} present; nothing is downloaded by affectlab")
    for r in bad:
        typer.echo(f"pipeline weights: {r['path']} has sha256 {r['sha256']}, expected {r['expected']}: "
                   f"truncated or replaced; get it again from {r['get']}", err=True)
    if bad:
        raise typer.Exit(1)
