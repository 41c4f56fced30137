#!/usr/bin/env bash
# A Ray cluster from plain machines that share a filesystem (the manifests and OUT.work/ must be
# visible to every node at the same path), then one stage on it.
#
# on the head node:
#   .venv/bin/ray start --head --port 6379 --num-gpus 1
# on every other node (HEAD = the head's address):
#   .venv/bin/ray start --address HEAD:6379 --num-gpus 1
# then, from any node:
set -euo pipefail
.venv/bin/pipeline caption --in /shared/manifests/fer_train.parquet --out /shared/manifests/fer_train_captions.parquet \
    --executor ray --ray-address auto --concurrency 8 --num-gpus-per-worker 1 --batch-size 64 --device cuda
# a cancelled or crashed job resumes: re-run the same line; finished batches are skipped
.venv/bin/ray status
# when done, on every node:
#   .venv/bin/ray stop
