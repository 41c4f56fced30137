"""FER+ manifests re-split so that their validation rows are FER2013's validation rows.

`make manifests-fer` carves validation from the training split of each dataset separately, so
2,478 of the 2,867 FER2013 validation images sit in FER+'s *training* split (same pixels, FER+
labels). A model trained on FER+ and validated on FER2013 (as the default-model rule does) would
be scored on faces it trained on. This writes:

* PREFIX_train.parquet: FER+ train+val rows whose image is NOT a FER2013 validation image
  (split=train);
* PREFIX_val.parquet: FER+ rows whose image IS one (split=val), so validation on either label
  set uses the same faces.

* with --fer-train, FER_OUT_train.parquet: FER2013's own training rows (FER2013 labels) with
  the FER+ votes of the same image joined on (rows FER+ dropped keep no votes), for
  `train run --targets votes --vote-weight W` (a mix of both label sets on every face).

Matching is by `pixel_hash` (identical pixels). Test rows are never read.

    python benchmarks/ferplus_fer_split.py --ferplus manifests/ferplus --fer-val manifests/fer_val.parquet \
        --out manifests/ferplus_fv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.manifest import open_manifest, read_manifest, write_manifest  # noqa: E402


def resplit(ferplus_prefix: str, fer_val: str, out_prefix: str) -> dict[str, int]:
    parts = []
    for role in ("train", "val"):
        table, _ = read_manifest(f"{ferplus_prefix}_{role}.parquet")
        parts.append(table)
    _, ls = open_manifest(f"{ferplus_prefix}_train.parquet")
    table = pa.concat_tables(parts)
    val_hashes, _ = read_manifest(fer_val, columns=["pixel_hash", "split"])
    if set(val_hashes.column("split").to_pylist()) != {"val"}:
        raise SystemExit(f"{fer_val}: expected a validation manifest (split=val rows only)")
    in_val = pc.is_in(table.column("pixel_hash"), value_set=val_hashes.column("pixel_hash"))
    split_idx = table.schema.get_field_index("split")
    counts = {}
    for role, mask in (("train", pc.invert(in_val)), ("val", in_val)):
        t = table.filter(mask)
        t = t.set_column(split_idx, table.schema.field("split"), pa.array([role] * t.num_rows, pa.string()))
        producer = {"command": "benchmarks/ferplus_fer_split.py", "ferplus": ferplus_prefix,
                    "fer_val": fer_val, "rule": "val = FER+ rows with a FER2013 validation image"}
        write_manifest(t, f"{out_prefix}_{role}.parquet", ls, producer=producer)
        counts[role] = t.num_rows
    return counts


def fer_with_votes(ferplus_prefix: str, fer_train: str, out: str) -> dict[str, int]:
    """FER2013 training rows with `ferplus_votes` of the FER+ row showing the same pixels."""
    votes = {}
    for role in ("train", "val"):
        t, _ = read_manifest(f"{ferplus_prefix}_{role}.parquet", columns=["pixel_hash", "ferplus_votes"])
        for h, v in zip(t.column("pixel_hash").to_pylist(), t.column("ferplus_votes").to_pylist()):
            votes.setdefault(h, v)
    table, _ = read_manifest(fer_train)
    _, ls = open_manifest(fer_train)
    col = pa.array([votes.get(h) for h in table.column("pixel_hash").to_pylist()],
                   pa.list_(pa.int8()))
    from features.manifest import to_table

    groups = ("ferplus",)
    t = to_table(table.append_column("ferplus_votes", col) if "ferplus_votes" not in table.column_names
                 else table, groups=groups)
    write_manifest(t, out, ls, producer={"command": "benchmarks/ferplus_fer_split.py",
                                         "fer_train": fer_train, "votes_from": ferplus_prefix})
    return {"rows": t.num_rows, "with_votes": int(sum(v is not None for v in col.to_pylist()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ferplus", default="manifests/ferplus", help="prefix of ferplus_{train,val}.parquet")
    ap.add_argument("--fer-val", default="manifests/fer_val.parquet")
    ap.add_argument("--out", default="manifests/ferplus_fv")
    ap.add_argument("--fer-train", default=None, help="also write FER2013 train rows with FER+ votes")
    ap.add_argument("--fer-out", default="manifests/fer_votes_train.parquet")
    a = ap.parse_args()
    counts = resplit(a.ferplus, a.fer_val, a.out)
    print(f"{a.out}_train.parquet: {counts['train']} rows; {a.out}_val.parquet: {counts['val']} rows")
    if a.fer_train:
        c = fer_with_votes(a.ferplus, a.fer_train, a.fer_out)
        print(f"{a.fer_out}: {c['rows']} rows, {c['with_votes']} with FER+ votes")


if __name__ == "__main__":
    main()
