"""Run a row-to-row stage on Ray Data: the same stage object, the same parts, the same answer.

How it stays identical to the local executor: the driver plans the batches exactly as
`run_stage` does, through the same pipeline/parts.py (deterministic, content-addressed keys),
and skips those already on disk.
Ray then reads the manifest (`ray.data.read_parquet`), tags each row with its planned batch,
groups by that tag and maps each group through `_StageActor`, a callable class that loads the
model once per actor and writes the batch's part file atomically under the same key the local
executor would use. Finally the ordinary local `run_stage` runs: every part is found, nothing
is recomputed, and it combines the parts (sorted by sample_id) into the output. A worker that
dies mid-stage costs only its batch: Ray retries the task on a restarted actor, and whatever
is still missing is computed by the local pass (our resume).

Ray is an optional extra, imported only here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa

from features.manifest import open_manifest, read_manifest
from features.schema import groups_of
from pipeline.parts import (
    RayConfig,
    RunConfig,
    batch_key,
    bind_device,
    normalise,
    part_path,
    plan_batches,
    read_part,
    write_part,
)
from pipeline.stage import Stage, StageError

INSTALL_HINT = ("--executor ray needs the optional Ray extra: `pip install 'affectlab[ray]'` "
                "(or `make setup-ray`), then run the command again")


def import_ray():
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise StageError(INSTALL_HINT) from None
    return ray


def init_ray(rc: RayConfig):
    ray = import_ray()
    if not ray.is_initialized():
        kwargs = dict(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
        if rc.address:  # 'auto' or 'ray://host:port' joins a running cluster
            ray.init(address=rc.address, **kwargs)
        else:
            # The actor pool reserves its CPUs for the whole run; with exactly os.cpu_count()
            # logical CPUs the read and shuffle tasks then wait forever (seen here with 2 cores
            # and 2 actors). One spare logical CPU per machine keeps the pipeline moving.
            need = rc.concurrency * rc.num_cpus_per_worker + 1
            ray.init(num_cpus=max(os.cpu_count() or 1, int(need + 0.999)), **kwargs)
    return ray


class _StageActor:
    """Loads the stage's model once per actor; computes one planned batch per call."""

    def __init__(self, stage: Stage, stage_dir: str, device: str, in_groups: list[str], expected: set[str]):
        self.stage = stage
        self.stage_dir = Path(stage_dir)
        self.in_groups = in_groups
        self.expected = expected
        bind_device(stage, device)
        stage.setup()

    def __call__(self, group: pa.Table) -> pa.Table:
        from features.manifest import to_table

        batch = to_table(group.drop_columns(["_batch"]), groups=tuple(self.in_groups)).sort_by("sample_id")
        key = batch_key(self.stage, batch)
        if key not in self.expected:
            # the group does not reproduce a planned batch: refuse rather than write a part no one reads
            raise StageError(f"Ray group does not match a planned batch (key {key[:12]})")
        part = part_path(self.stage_dir, key)
        if read_part(part) is None:  # a retried task may find its part already written
            out, rejects = self.stage.process(batch)
            write_part(part, normalise(self.stage, out, self.in_groups), rejects)
        return pa.table({"key": [key], "rows": [batch.num_rows]})


def compute_parts(stage: Stage, in_path: str | Path, stage_dir: str | Path, cfg: RunConfig,
                  rc: RayConfig = RayConfig()) -> dict:
    """Compute on Ray every planned batch whose part is missing from `stage_dir`. Returns counts:
    batches planned, computed (batches run here), rows (rows in them) and seconds (wall time
    of the Ray pass), so the caller can report the images/s of the Ray run."""
    t0 = time.perf_counter()
    in_path = Path(in_path).resolve()
    schema, _ = open_manifest(in_path)
    in_groups = groups_of(schema)
    meta, _ = read_manifest(in_path, columns=[n for n in schema.names if n != "image"])
    stage_dir = Path(stage_dir).resolve()
    stage_dir.mkdir(parents=True, exist_ok=True)

    pending: dict[str, int] = {}
    keys: set[str] = set()
    n_batches = 0
    for i, batch in enumerate(plan_batches(meta, cfg.batch_size, cfg.shard)):
        n_batches += 1
        key = batch_key(stage, batch)  # batch_key ignores the image column, so meta rows give the same key
        if read_part(part_path(stage_dir, key)) is None:
            keys.add(key)
            pending.update({sid: i for sid in batch.column("sample_id").to_pylist()})
    if not pending:
        return {"batches": n_batches, "computed": 0, "rows": 0, "seconds": 0.0}

    ray = init_ray(rc)
    assign = ray.put(pending)

    def tag(t: pa.Table, assign=assign) -> pa.Table:
        import ray as _ray

        table = _ray.get(assign) if isinstance(assign, _ray.ObjectRef) else assign
        ids = t.column("sample_id").to_pylist()
        tags = [table.get(s, -1) for s in ids]
        t = t.append_column("_batch", pa.array(tags, pa.int64()))
        return t.filter(pa.compute.greater_equal(t.column("_batch"), 0))

    ds = ray.data.read_parquet(str(in_path))
    ds = ds.map_batches(tag, batch_format="pyarrow")
    # one partition per pending batch at most: the default (200) costs seconds of empty tasks
    n_parts = max(1, min(len(keys), 4 * max(1, rc.concurrency)))
    done = ds.groupby("_batch", num_partitions=n_parts).map_groups(
        _StageActor,
        batch_format="pyarrow",
        fn_constructor_args=(stage, str(stage_dir), cfg.device, in_groups, keys),
        compute=ray.data.ActorPoolStrategy(size=max(1, rc.concurrency)),
        num_cpus=rc.num_cpus_per_worker,
        num_gpus=rc.num_gpus_per_worker or None,
        max_restarts=-1,          # a dead actor is replaced ...
        max_task_retries=-1,      # ... and its batch retried
    ).take_all()
    return {"batches": n_batches, "computed": len(done), "rows": sum(int(r["rows"]) for r in done),
            "seconds": time.perf_counter() - t0}
