"""`ferplus`: FER+ labels and crowd votes on FER2013 (label set `ferplus`, 8 classes; the
`ferplus_votes` column group is filled), from a folder with `fer2013.csv` + `fer2013new.csv`, or
with FER2013 `*.parquet` + `ferplus.parquet`. Rows the FER+ majority rule gives no label are
dropped and counted by reason."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipeline.layouts.base import IngestConfig, IngestError, Source
from pipeline.layouts.fer_files import join_ferplus_csv
from pipeline.layouts.registry import get_layout, register_layout


def looks_like_ferplus(path: Path) -> bool:
    return (path / "fer2013new.csv").exists() and (path / "fer2013.csv").exists()


@register_layout("ferplus", dataset="ferplus", detect=looks_like_ferplus, detect_order=30, reads_files=True,
                 joins=("ferplus_csv", "ferplus_parquet"))
def read_ferplus(root: Path, cfg: IngestConfig) -> Source:
    fer_csv = root if root.is_file() else root / "fer2013.csv"
    if root.is_file():
        root = root.parent
    if (root / "fer2013new.csv").exists() or cfg.ferplus_csv:
        new = Path(cfg.ferplus_csv) if cfg.ferplus_csv else root / "fer2013new.csv"
        if not fer_csv.exists():
            raise IngestError(f"{fer_csv} not found: FER+ votes join by row onto the original fer2013.csv")
        return join_ferplus_csv(fer_csv, new, cfg)
    if (root / "ferplus.parquet").exists() or cfg.ferplus_parquet:
        # the parquet layout joins the votes itself when given the file
        votes = cfg.ferplus_parquet or str(root / "ferplus.parquet")
        return get_layout("parquet").read(root, replace(cfg, ferplus_parquet=votes))
    raise IngestError(f"{root}: the ferplus layout needs fer2013.csv + fer2013new.csv, or *.parquet + "
                      "ferplus.parquet (or pass --ferplus-csv / --ferplus-parquet)")
