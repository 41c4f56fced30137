"""FER+ manifests re-split so that their validation rows are FER2013's validation rows.

`make manifests-fer` carves validation from the training split of each dataset separately, so
2,478 of the 2,867 FER2013 validation images sit in FER+'s *training* split (same pixels, FER+
labels). A model trained on FER+ and validated on FER2013 (as the default-model rule does) would
be scored on faces it trained on. This writes:

* PREFIX_train.parquet: FER+ train+val rows whose image is NOT a FER2013 validation image
  (split=train);
* PREFIX_val.parquet: FER+ rows whose image IS one (split=val), so validation on either label
  set uses the same faces.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ferplus", default="manifests/ferplus", help="prefix of ferplus_{train,val}.parquet")
    ap.add_argument("--fer-val", default="manifests/fer_val.parquet")
    ap.add_argument("--out", default="manifests/ferplus_fv")
    a = ap.parse_args()
    counts = resplit(a.ferplus, a.fer_val, a.out)
    print(f"{a.out}_train.parquet: {counts['train']} rows; {a.out}_val.parquet: {counts['val']} rows")


if __name__ == "__main__":
    main()
