"""Class balancing of a training manifest by oversampling (imbalanced-learn).

`balance_manifest` interpolates new images in pixel space at the manifest's own resolution and
appends them as `synthetic` rows whose `parent_ids` name the two real rows they lie between.
`balance_features` does the same on the vectors of a feature file and writes a balanced *feature
file*: the new rows exist only as vectors, there is no image to show for them.

Only a training split is accepted: oversampling before validation or test rows are set aside
would put interpolations of training images into the rows that judge the model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from features.labels import LabelSet

METHODS = ("borderline", "smote", "random")
# FER2013 at 48x48 grey is 2,304 dims; 20,000 leaves room for e.g. 64x64x3 (12,288) and stops
# CMAEN-style 192x192x3 (110,592 dims), whose float32 copies and neighbour searches need tens of GB.
DEFAULT_MAX_DIMS = 20_000


class BalanceError(ValueError):
    """Input balance cannot work on; the message says what to do instead."""


@dataclass(frozen=True)
class BalanceConfig:
    method: str = "borderline"
    seed: int = 0
    target: str | int = "max"  # "max": every class up to the largest; N: every class up to N
    max_dims: int = DEFAULT_MAX_DIMS
    k_neighbors: int = 5
    m_neighbors: int = 10

    def __post_init__(self):
        if self.method not in METHODS:
            raise BalanceError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not (self.target == "max" or (isinstance(self.target, int) and self.target > 0)):
            raise BalanceError(f"--target must be 'max' or a positive count, got {self.target!r}")
        if self.k_neighbors < 1 or self.m_neighbors < 1:
            raise BalanceError("--k-neighbors and --m-neighbors must be >= 1")


def parse_target(text: str) -> str | int:
    if text == "max":
        return "max"
    try:
        return int(text)
    except ValueError:
        raise BalanceError(f"--target must be 'max' or a positive count, got {text!r}") from None


@dataclass(frozen=True)
class Shortfall:
    label: str
    have: int
    target: int
    reason: str

    def message(self) -> str:
        return f"class {self.label!r} reached {self.have} of its target {self.target}: {self.reason}"


@dataclass
class Oversampled:
    """The new rows only, as indices and vectors; the input rows stay as they are."""

    vectors: np.ndarray  # (n_new, dims) float32
    labels: np.ndarray  # (n_new,) int
    parents: np.ndarray  # (n_new, 2) row indices into the input; the same index twice for a copy
    residual: float  # largest distance of a new row from the segment between its parents
    targets: dict[int, int]
    counts_before: dict[int, int]
    counts_after: dict[int, int]
    seconds: dict[str, float] = field(default_factory=dict)
    shortfalls: list[Shortfall] = field(default_factory=list)
    parents_exact: bool = True
    parents_by: str = "replayed"  # replayed (imblearn's draws, checked) | searched | copied


def check_train_only(split: list[str], where: str) -> None:
    others = {s: split.count(s) for s in sorted(set(split)) if s != "train"}
    if others:
        held = ", ".join(f"{n} {s}" for s, n in others.items())
        raise BalanceError(
            f"{where} holds {held} rows; balance works on the training split only (oversampling rows "
            "that validate or test a model leaks interpolated training images into them). Balance the "
            "train manifest (e.g. manifests/fer_train.parquet), or select its train rows first.")


def targets_for(counts: dict[int, int], n_classes: int, target: str | int) -> dict[int, int]:
    """Class -> the count it should reach. Classes already above a numeric target keep theirs
    (this is an oversampler; it never drops rows)."""
    goal = max(counts.values(), default=0) if target == "max" else int(target)
    return {c: max(counts.get(c, 0), goal) for c in range(n_classes)}


def oversample(X: np.ndarray, y: np.ndarray, label_set: LabelSet, cfg: BalanceConfig) -> Oversampled:
    """Run the chosen imbalanced-learn oversampler and return only the new rows, with parents."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    present, n = np.unique(y, return_counts=True)
    counts = {int(c): int(k) for c, k in zip(present, n)}
    targets = targets_for(counts, len(label_set), cfg.target)
    strategy = {c: t for c, t in targets.items() if c in counts and t > counts[c]}
    _check_neighbours(counts, strategy, len(y), label_set, cfg)

    t0 = time.perf_counter()
    if strategy:
        sampler = _sampler(cfg, strategy)
        X_res, y_res = sampler.fit_resample(X, y)
        new_x, new_y = np.asarray(X_res[len(X):], np.float32), np.asarray(y_res[len(y):], np.int64)
    else:
        new_x, new_y = np.zeros((0, X.shape[1]), np.float32), np.zeros(0, np.int64)

    t1 = time.perf_counter()
    if cfg.method == "random":
        # RandomOverSampler copies rows; it records which ones in sample_indices_
        src = sampler.sample_indices_[len(y):] if strategy else np.zeros(0, np.int64)
        parents, residual, how = np.stack([src, src], 1).astype(np.int64), 0.0, "copied"
    else:
        parents, residual, how = _replay_parents(sampler, X, y, new_x, cfg) if strategy else (
            np.zeros((0, 2), np.int64), 0.0, "replayed")
        if how != "replayed":
            # BorderlineSMOTE only interpolates from its 'danger' rows; it keeps their indices
            bases = (np.concatenate(list(sampler.in_danger_indices.values()) or [np.zeros(0, np.int64)])
                     if cfg.method == "borderline" else None)
            parents, residual = recover_parents(X, y, new_x, new_y, cfg.k_neighbors, bases)
            how = "searched"

    after = dict(counts)
    for c, k in zip(*np.unique(new_y, return_counts=True)):
        after[int(c)] += int(k)
    result = Oversampled(new_x, new_y, parents, residual, targets, counts, after,
                         seconds={"oversample": t1 - t0, "parents": time.perf_counter() - t1})
    result.parents_by = how
    # float32 rounding on a d-dim segment stays far below this; above it a parent pair is a guess
    result.parents_exact = residual <= 1e-5 * float(np.abs(X).max(initial=1.0)) * np.sqrt(X.shape[1])
    result.shortfalls = _shortfalls(result, label_set, cfg)
    return result


def _sampler(cfg: BalanceConfig, strategy: dict[int, int]):
    from imblearn.over_sampling import SMOTE, BorderlineSMOTE, RandomOverSampler

    # imblearn adds the +1 (the row itself) only for an int k; an estimator gets exactly k + 1
    knn = _recording_neighbours()(n_neighbors=cfg.k_neighbors + 1)
    if cfg.method == "borderline":
        return BorderlineSMOTE(sampling_strategy=strategy, random_state=cfg.seed, k_neighbors=knn,
                               m_neighbors=cfg.m_neighbors, kind="borderline-1")
    if cfg.method == "smote":
        return SMOTE(sampling_strategy=strategy, random_state=cfg.seed, k_neighbors=knn)
    return RandomOverSampler(sampling_strategy=strategy, random_state=cfg.seed)


_RECORDING = None


def _recording_neighbours():
    """A NearestNeighbors that keeps every neighbour table it returns (built on first use so that
    importing this module does not import scikit-learn)."""
    global _RECORDING
    if _RECORDING is None:
        from sklearn.neighbors import NearestNeighbors

        class RecordingNeighbors(NearestNeighbors):
            def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
                out = super().kneighbors(X, n_neighbors, return_distance)
                self.__dict__.setdefault("tables_", []).append(out[1] if return_distance else out)
                return out

        _RECORDING = RecordingNeighbors
    return _RECORDING


def _replay_parents(sampler, X: np.ndarray, y: np.ndarray, new_x: np.ndarray,
                    cfg: BalanceConfig) -> tuple[np.ndarray, float, str]:
    """Parents of SMOTE / BorderlineSMOTE rows by replaying imbalanced-learn's own draws.

    imbalanced-learn does not say which rows it interpolated. Per class it draws, from a fresh
    RandomState(seed), one (base row, neighbour) cell of its k-neighbour table and a step in
    [0, 1) per new row (`_make_samples`, 0.14). The recording neighbour estimator kept those
    tables, so we redraw the same cells and then *check* the result: every new row must equal
    base + step * (neighbour - base). If it does not (another imblearn version), the caller falls
    back to a geometric search (`recover_parents`), which needs no internals but costs minutes.
    """
    tables = list(getattr(sampler.nn_k_, "tables_", []))
    parents = np.zeros((len(new_x), 2), np.int64)
    worst, at = 0.0, 0
    for c, n_new in sampler.sampling_strategy_.items():
        if n_new == 0:
            continue
        members = np.flatnonzero(y == c)
        if cfg.method == "borderline":
            if c not in sampler.in_danger_indices:
                continue  # no danger rows: imblearn drew nothing for this class
            bases = sampler.in_danger_indices[c]
        else:
            bases = members
        if not tables:
            return parents, np.inf, "failed"
        nns = tables.pop(0)[:, 1:]
        rs = np.random.RandomState(cfg.seed)
        cell = rs.randint(low=0, high=nns.size, size=n_new)
        step = rs.uniform(size=n_new)
        rows, cols = np.divmod(cell, nns.shape[1])
        a, b = bases[rows], members[nns[rows, cols]]
        seg = slice(at, at + n_new)
        if seg.stop > len(new_x):
            return parents, np.inf, "failed"
        for lo in range(0, n_new, 2048):  # chunks bound the float64 copies
            part = slice(lo, min(lo + 2048, n_new))
            xa, xb = X[a[part]].astype(np.float64), X[b[part]].astype(np.float64)
            redo = xa + step[part, None] * (xb - xa)
            worst = max(worst, float(np.linalg.norm(redo - new_x[seg][part], axis=1).max()))
        parents[seg] = np.where((step <= 0.5)[:, None], np.stack([a, b], 1), np.stack([b, a], 1))
        at += n_new
    if at != len(new_x) or tables:
        return parents, np.inf, "failed"
    tol = 1e-5 * float(np.abs(X).max(initial=1.0)) * np.sqrt(X.shape[1])
    return parents, worst, "replayed" if worst <= tol else "failed"


def _check_neighbours(counts: dict[int, int], strategy: dict[int, int], n_rows: int, ls: LabelSet,
                      cfg: BalanceConfig) -> None:
    if cfg.method == "random":
        return
    small = {ls.names[c]: counts[c] for c in strategy if counts[c] <= cfg.k_neighbors}
    if small:
        raise BalanceError(
            f"classes {small} have no more rows than --k-neighbors {cfg.k_neighbors}; SMOTE interpolates "
            "between a row and one of its k nearest same-class rows, so each class to grow needs more than "
            "k rows. Lower --k-neighbors, or use --method random for such tiny classes.")
    if cfg.method == "borderline" and cfg.m_neighbors >= n_rows:
        raise BalanceError(f"--m-neighbors {cfg.m_neighbors} must be below the number of rows ({n_rows})")


def recover_parents(X: np.ndarray, y: np.ndarray, new_x: np.ndarray, new_y: np.ndarray, k: int,
                    bases: np.ndarray | None = None, chunk: int = 128) -> tuple[np.ndarray, float]:
    """For each new row, the two input rows whose segment it lies on, and the worst miss.

    imbalanced-learn does not return which rows it interpolated, so we find them. SMOTE and
    BorderlineSMOTE-1 place s = a + u (b - a), u in [0, 1), where a is a base row (any row of
    the class for SMOTE, a 'danger' row for BorderlineSMOTE: `bases`, indices into X) and b is
    one of a's k nearest same-class rows. A row closer to s than b lies within a's k-neighbour
    ball, so b is among the k + 1 nearest same-class rows of s; a is then one of the bases that
    count b among their neighbours. We search those pairs (+1 neighbour of slack for ties) and
    keep the one whose segment passes closest to s: for the true pair that distance is float
    rounding, and the worst one is returned so a caller can check it.
    """
    from sklearn.neighbors import NearestNeighbors

    parents = np.zeros((len(new_y), 2), np.int64)
    worst = 0.0
    for c in np.unique(new_y):
        members = np.flatnonzero(y == c)
        xc = X[members]
        base_local = np.flatnonzero(np.isin(members, bases)) if bases is not None else np.arange(len(members))
        nn = NearestNeighbors(n_neighbors=min(k + 2, len(members)), algorithm="brute").fit(xc)
        # reverse neighbour lists: for every row b, the bases a that have b among their neighbours
        rev: list[list[int]] = [[] for _ in members]
        for a, row in zip(base_local, nn.kneighbors(xc[base_local], return_distance=False)):
            for b in row:
                rev[b].append(a)
        todo = np.flatnonzero(new_y == c)
        for lo in range(0, len(todo), chunk):
            rows = todo[lo:lo + chunk]
            near = nn.kneighbors(new_x[rows], return_distance=False)
            sid, aa, bb = [], [], []
            for i, cand in enumerate(near):
                for b in cand:
                    sid += [i] * len(rev[b])
                    aa += rev[b]
                    bb += [b] * len(rev[b])
            pair, miss = _closest_pairs(xc, new_x[rows], np.array(sid), np.array(aa), np.array(bb))
            parents[rows] = members[pair]
            worst = max(worst, float(miss.max()))
    return parents, worst


def _closest_pairs(xc: np.ndarray, s: np.ndarray, sid: np.ndarray, a: np.ndarray,
                   b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Among candidate pairs (a[p], b[p]) for new row sid[p], the one whose segment passes
    closest to s[sid]: (n, 2) indices into xc, nearer parent first, and that distance (n,)."""
    sa = s[sid] - xc[a]
    ab = xc[b] - xc[a]
    den = np.einsum("pd,pd->p", ab, ab)
    u = np.clip(np.einsum("pd,pd->p", sa, ab) / np.where(den > 0, den, 1.0), 0.0, 1.0)
    dist = np.linalg.norm(sa - u[:, None] * ab, axis=1)
    order = np.lexsort((dist, sid))
    first = order[np.r_[True, sid[order][1:] != sid[order][:-1]]]
    if len(first) != len(s):
        # cannot happen (b is always among the near rows) unless neighbour ties exceed the slack
        raise RuntimeError("balance: a synthetic row has no candidate parents; please report this input")
    near_first = np.where((u[first] <= 0.5)[:, None], np.stack([a[first], b[first]], 1),
                          np.stack([b[first], a[first]], 1))
    return near_first, dist[first]


def _shortfalls(r: Oversampled, ls: LabelSet, cfg: BalanceConfig) -> list[Shortfall]:
    out = []
    for c, goal in r.targets.items():
        have = r.counts_after.get(c, 0)
        if have >= goal:
            continue
        if r.counts_before.get(c, 0) == 0:
            reason = "the input has no rows of this class to interpolate from"
        elif cfg.method == "borderline" and have == r.counts_before[c]:
            reason = (f"BorderlineSMOTE found no 'danger' rows in it (rows whose {cfg.m_neighbors} nearest "
                      "neighbours are mostly, but not all, of other classes), so it generated nothing; "
                      "use --method smote, or change --m-neighbors")
        else:
            reason = f"the oversampler generated only {have - r.counts_before[c]} rows"
        out.append(Shortfall(ls.names[c], have, goal, reason))
    return out


# ----------------------------------------------------------------------------- pixel space


def image_geometry(table: pa.Table, where: str) -> tuple[int, int, int]:
    """(height, width, channels) shared by every row, or an error naming what differs."""
    shapes = {(h, w, c) for h, w, c in zip(table.column("height").to_pylist(), table.column("width").to_pylist(),
                                           table.column("channels").to_pylist())}
    if len(shapes) != 1:
        listed = ", ".join(f"{w}x{h}x{c}" for h, w, c in sorted(shapes)[:5])
        raise BalanceError(
            f"{where} mixes image sizes/channels ({listed}); pixel-space balancing needs one shape. "
            "Bring every image to one size and channel count first (`pipeline enhance`), or balance "
            "in a feature space with --features.")
    return shapes.pop()


def check_dims(shape: tuple[int, int, int], max_dims: int) -> int:
    h, w, c = shape
    dims = h * w * c
    if dims > max_dims:
        gb = dims * 4 * 2 * 30_000 / 1e9
        raise BalanceError(
            f"pixel space at {w}x{h}x{c} is {dims:,} dims, above --max-dims {max_dims:,}: SMOTE holds float32 "
            f"copies of every row and searches neighbours in that space (about {gb:.0f} GB for 30,000 rows; "
            "CMAEN balanced 192x192x3 = 110,592 dims). Balance before enhancing (at the source resolution), "
            "or in a feature space with --features FILE from `pipeline embed`; raise --max-dims only if "
            "you have the memory.")
    return dims


def decode_matrix(images: list[bytes], shape: tuple[int, int, int],
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    from features.images import decode

    h, w, c = shape
    X = np.empty((len(images), h * w * c), np.uint8)
    for i, data in enumerate(images):
        arr, _ = decode(data)
        if arr.shape != ((h, w) if c == 1 else (h, w, c)):
            raise BalanceError(f"row {i}: decoded shape {arr.shape} disagrees with its width/height/channels "
                               f"columns ({w}x{h}x{c}); re-create the manifest with `pipeline ingest`")
        X[i] = arr.reshape(-1)
        if progress and i % 1024 == 1023:
            progress(1024)
    if progress:
        progress(len(images) % 1024)
    return X


def synthetic_rows(table: pa.Table, result: Oversampled, label_set: LabelSet, cfg: BalanceConfig,
                   shape: tuple[int, int, int]) -> pa.Table:
    """The new rows as a table with the input's schema (columns a stage added stay null)."""
    from features.images import encode, pixel_hash
    from features.manifest import sample_id

    ids = table.column("sample_id").to_pylist()
    datasets = table.column("dataset").to_pylist()
    h, w, c = shape
    cols: dict[str, list[Any]] = {name: [] for name in table.schema.names}
    per_class: dict[int, int] = {}
    for vec, lab, (p, q) in zip(result.vectors, result.labels, result.parents):
        lab = int(lab)
        k = per_class[lab] = per_class.get(lab, -1) + 1
        pix = np.clip(np.rint(vec), 0, 255).astype(np.uint8).reshape((h, w) if c == 1 else (h, w, c))
        parents = [ids[p]] if p == q else [ids[p], ids[q]]
        source = f"balance:{cfg.method}:seed={cfg.seed}:{label_set.names[lab]}:{k:06d}"
        row = {
            "sample_id": sample_id(datasets[p], source + "<-" + ",".join(parents)),
            "dataset": datasets[p], "split": "train", "source_path": source,
            "label": label_set.names[lab], "label_id": lab, "label_set": label_set.name,
            "image": encode(pix, "png"), "image_format": "png", "width": w, "height": h, "channels": c,
            "pixel_hash": pixel_hash(pix), "synthetic": True, "parent_ids": parents, "leak": False,
        }
        for name in cols:
            cols[name].append(row.get(name))
    return pa.Table.from_pydict(cols, schema=table.schema)


def balance_manifest(table: pa.Table, label_set: LabelSet, cfg: BalanceConfig, where: str = "manifest",
                     progress: Callable[[str], None] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """Training manifest -> the same rows plus synthetic ones, and a report."""
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    check_train_only(table.column("split").to_pylist(), where)
    shape = image_geometry(table, where)
    dims = check_dims(shape, cfg.max_dims)
    say(f"decoding {table.num_rows:,} images ({dims:,} dims)")
    X = decode_matrix(table.column("image").to_pylist(), shape)
    t_decode = time.perf_counter()
    say(f"oversampling with {cfg.method}")
    result = oversample(X, table.column("label_id").to_numpy(), label_set, cfg)
    del X
    say(f"encoding {len(result.labels):,} synthetic images")
    t_encode = time.perf_counter()
    out = pa.concat_tables([table, synthetic_rows(table, result, label_set, cfg, shape)])
    result.seconds = {"decode": t_decode - t0, **result.seconds, "encode": time.perf_counter() - t_encode}
    return out, report(result, label_set, cfg, time.perf_counter() - t0, space=f"pixels {dims}")


# --------------------------------------------------------------------------- feature space


def balance_features(table: pa.Table, vectors: np.ndarray, label_set: LabelSet, cfg: BalanceConfig,
                     where: str = "manifest") -> tuple[pa.Table, dict[str, Any]]:
    """Training manifest + its vectors (row-aligned) -> a balanced feature table:
    sample_id, vector, label, label_id, synthetic, parent_ids. Images are left alone."""
    from features.encoders import features_table
    from features.manifest import sample_id

    t0 = time.perf_counter()
    check_train_only(table.column("split").to_pylist(), where)
    result = oversample(vectors, table.column("label_id").to_numpy(), label_set, cfg)
    ids = table.column("sample_id").to_pylist()
    datasets = table.column("dataset").to_pylist()
    new_ids, parents, per_class = [], [], {}
    for lab, (p, q) in zip(result.labels, result.parents):
        lab = int(lab)
        k = per_class[lab] = per_class.get(lab, -1) + 1
        par = [ids[p]] if p == q else [ids[p], ids[q]]
        source = f"balance-features:{cfg.method}:seed={cfg.seed}:{label_set.names[lab]}:{k:06d}"
        new_ids.append(sample_id(datasets[p], source + "<-" + ",".join(par)))
        parents.append(par)
    all_vec = np.concatenate([np.asarray(vectors, np.float32), result.vectors])
    labels = np.concatenate([table.column("label_id").to_numpy().astype(np.int16), result.labels.astype(np.int16)])
    ft = features_table(ids + new_ids, all_vec)
    ft = ft.append_column("label_id", pa.array(labels, pa.int16()))
    ft = ft.append_column("label", pa.array([label_set.names[i] for i in labels], pa.string()))
    ft = ft.append_column("synthetic", pa.array([False] * len(ids) + [True] * len(new_ids), pa.bool_()))
    ft = ft.append_column("parent_ids", pa.array([None] * len(ids) + parents, pa.list_(pa.string())))
    return ft, report(result, label_set, cfg, time.perf_counter() - t0, space=f"features {all_vec.shape[1]}")


def report(r: Oversampled, ls: LabelSet, cfg: BalanceConfig, seconds: float, space: str) -> dict[str, Any]:
    return {
        "settings": asdict(cfg), "space": space, "seconds": round(seconds, 2),
        "seconds_by_step": {k: round(v, 2) for k, v in r.seconds.items()},
        "rows_in": sum(r.counts_before.values()), "rows_new": len(r.labels),
        "classes": [{"label": ls.names[c], "before": r.counts_before.get(c, 0), "after": r.counts_after.get(c, 0),
                     "target": r.targets[c]} for c in range(len(ls))],
        "parent_max_distance": r.residual, "parents_exact": bool(r.parents_exact),
        "parents_by": r.parents_by,
        "shortfalls": [s.message() for s in r.shortfalls],
    }
