"""`parquet`: a `.parquet` file or a folder of them with `image` bytes and `label` (or a 0-based
`label_id`), optional `usage`/`orig_split`, `split`, `source_path`: the format of
`../shared/data/fer2013/*.parquet`. The split is the `split` column, else the file name
(`train.parquet`), else carved. `--ferplus-parquet` joins FER+ votes by `source_path`."""

from __future__ import annotations

from pathlib import Path

from features.labels import FERPLUS_VOTE_COLUMNS, LABEL_SETS
from pipeline.layouts.base import (
    SPLIT_DIRS,
    IngestConfig,
    IngestError,
    Record,
    Reject,
    Source,
    id_label,
    label_map,
    resolve_label_set,
)
from pipeline.layouts.fer_files import ferplus_majority, read_ferplus_votes
from pipeline.layouts.registry import register_layout, unrecognised


def has_parquet_images(p: Path) -> bool:
    """Does the file (or a *.parquet in the folder) have an `image` and a `label`/`label_id` column?"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [p] if p.is_file() else sorted(p.glob("*.parquet"))
    for f in files:
        try:
            names = pq.read_schema(f).names
        except (pa.ArrowInvalid, OSError):
            continue
        if "image" in names and ("label" in names or "label_id" in names):
            return True
    return False


def looks_like_parquet(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".parquet" and has_parquet_images(path)
    if not any(path.glob("*.parquet")):
        return False
    if (path / "ferplus.parquet").exists() and not has_parquet_images(path):
        raise unrecognised(path)  # FER+ votes with no images to join them onto: no layout fits
    return has_parquet_images(path)


def parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = [f for f in sorted(root.glob("*.parquet")) if f.name != "ferplus.parquet"]
    if not files:
        raise IngestError(f"{root}: no *.parquet files (the parquet layout wants image bytes + label columns)")
    return files


@register_layout("parquet", dataset=None, detect=looks_like_parquet, detect_order=60, reads_files=True,
                 joins=("ferplus_parquet",))
def read_parquet(root: Path, cfg: IngestConfig) -> Source:
    import pyarrow.parquet as pq

    ferplus = read_ferplus_votes(Path(cfg.ferplus_parquet)) if cfg.ferplus_parquet else None
    default = "ferplus" if ferplus else (cfg.dataset if cfg.dataset in LABEL_SETS else "fer2013")
    label_set = resolve_label_set(cfg, default)
    recs, rejects, notes = [], [], []
    votes_file = (root if root.is_dir() else root.parent) / "ferplus.parquet"
    if ferplus is None and votes_file.exists():
        notes.append(f"ignored {votes_file} (FER+ crowd votes): these are the FER2013 labels; for FER+ "
                     f"labels and votes pass --layout ferplus, or --ferplus-parquet {votes_file}")
    for f in parquet_files(root):
        table = pq.read_table(f)
        cols = set(table.column_names)
        if "image" not in cols or not ({"label", "label_id"} & cols):
            notes.append(f"skipped {f.name}: no image + label/label_id columns")
            continue
        n = table.num_rows

        def column(name: str) -> list:
            return table.column(name).to_pylist() if name in cols else [None] * n

        data, lab, lid = column("image"), column("label"), column("label_id")
        usage = column("usage") if "usage" in cols else column("orig_split")
        split, paths = column("split"), column("source_path")
        file_split = SPLIT_DIRS.get(f.stem.lower())
        if ferplus is None:
            found = {x for x in lab if x is not None} if "label" in cols else set()
            names = label_map(found, label_set, "label(s)") if found else {}
        else:
            names = label_map(FERPLUS_VOTE_COLUMNS[:8], label_set, "FER+ class(es)")
        for i in range(n):
            sp = paths[i] or f"{f.name}#{i}"
            s = SPLIT_DIRS.get((split[i] or "").lower(), file_split)
            orig = usage[i] or split[i] or (f.stem if file_split else None)
            votes = None
            if ferplus is not None:
                votes = ferplus.get(sp)
                if votes is None:
                    rejects.append(Reject(sp, "ferplus: no FER+ row for this image", "dropped"))
                    continue
                name, why = ferplus_majority(votes)
                if name is None:
                    rejects.append(Reject(sp, why, "dropped"))
                    continue
                label = names[name]
            elif lab[i] is not None:
                label = names[lab[i]]
            elif lid[i] is not None:
                label = id_label(int(lid[i]), label_set, 0, f"{f.name}#{i}")
            else:
                rejects.append(Reject(sp, "no label", "bad-image"))
                continue
            recs.append(Record(sp, label, s, orig, data=data[i], votes=votes))
    return Source(label_set, recs, rejects=rejects, notes=notes, groups=("ferplus",) if ferplus else ())
