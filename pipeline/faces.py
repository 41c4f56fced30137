"""The faces stage: detect, keep the largest face, crop it square with padding, level the eyes.

The crop replaces the row's image (and so its pixel_hash, width, height); the original image's
hash stays in `face_source_pixel_hash`, the box (in source pixels) in `face_box`. A row whose
image has no face goes to the rejects report with reason "no face found"; with
`no_face="keep"` it also stays in the output, uncropped, with face_count = 0 and a null box,
so a mixed folder can be cropped without losing anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from features.faces import BACKENDS, FaceError, crop_face, detect_faces, retinaface_weights
from features.images import BadImage, decode
from features.manifest import file_sha256
from pipeline.stage import StageError, replace_images, set_columns


@dataclass
class FaceStage:
    backend: str = "haar"
    weights_dir: Path | None = None
    pad: float = 0.25
    size: int | None = 224
    min_size: int = 20
    threshold: float = 0.8
    align: bool = True
    no_face: str = "drop"  # drop | keep
    device: str = "cpu"
    name: str = "faces"
    groups: tuple[str, ...] = ("faces",)
    _weights: Path | None = field(default=None, repr=False, init=False)
    _weights_sha: str = field(default="", repr=False, init=False)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise StageError(f"--backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.no_face not in ("drop", "keep"):
            raise StageError(f"--no-face {self.no_face!r}: expected drop or keep")
        if self.pad < 0 or (self.size is not None and self.size < 8) or self.min_size < 1:
            raise StageError("--pad must be >= 0, --size >= 8 (or 0 for the padded box's own size), --min-size >= 1")
        if self.backend == "retinaface":
            # fail at once (before any batch) when the checkpoint is not here
            self._weights = retinaface_weights(self.weights_dir)
            self._weights_sha = file_sha256(self._weights, 16)  # once: settings() is asked per batch
        if self.backend == "mtcnn":
            from features.faces import load_mtcnn

            try:  # fail at once when facenet-pytorch or its weights are missing or corrupt
                load_mtcnn(self.device)
            except FaceError as e:
                raise StageError(str(e)) from None

    def settings(self) -> dict:
        s = {"backend": self.backend, "pad": self.pad, "size": self.size, "min_size": self.min_size,
             "align": self.align, "no_face": self.no_face}
        if self.backend == "retinaface":
            s |= {"threshold": self.threshold, "weights": self._weights.name,
                  "weights_sha256": self._weights_sha}
        if self.backend == "mtcnn":
            s |= {"threshold": self.threshold, "weights": "facenet-pytorch==2.6.0"}
        return s

    def setup(self) -> None:
        if self.backend == "retinaface":
            from features.faces import load_retinaface

            load_retinaface(str(self._weights), self.device)  # loaded once, cached per process
        elif self.backend == "mtcnn":
            from features.faces import load_mtcnn

            load_mtcnn(self.device)
        else:
            import numpy as np

            detect_faces(np.zeros((32, 32), np.uint8))  # loads the cascades once (and checks they exist)

    def process(self, batch: pa.Table) -> tuple[pa.Table, list[dict]]:
        model = json.dumps(self.settings(), sort_keys=True)
        crops, keep, boxes, scores, counts, src_hashes, rejects = [], [], [], [], [], [], []
        rows = batch.select(["sample_id", "source_path", "image", "pixel_hash"]).to_pylist()
        for i, row in enumerate(rows):
            try:
                img, _ = decode(row["image"])
                # the score threshold is RetinaFace's; MTCNN keeps its cascade's (as train predict does)
                faces = detect_faces(img, self.backend, self._weights, self.min_size,
                                     self.threshold if self.backend == "retinaface" else None, device=self.device)
            except (BadImage, FaceError) as e:
                rejects.append(_reject(row, f"cannot run the detector: {e}"))
                continue
            if not faces:
                rejects.append(_reject(row, "no face found" + (" (kept uncropped)" if self.no_face == "keep" else "")))
                if self.no_face == "keep":
                    keep.append(i), crops.append(img), boxes.append(None), scores.append(None)
                    counts.append(0), src_hashes.append(row["pixel_hash"])
                continue
            face = faces[0]
            keep.append(i)
            crops.append(crop_face(img, face, self.pad, self.size or None, self.align))
            boxes.append(list(face.box)), scores.append(face.score), counts.append(len(faces))
            src_hashes.append(row["pixel_hash"])
        out = replace_images(batch.take(pa.array(keep, pa.int64())), crops)
        n = len(keep)
        out = set_columns(out, {
            "face_box": pa.array(boxes, pa.list_(pa.int32())),
            "face_score": pa.array(scores, pa.float32()),
            "face_count": pa.array(counts, pa.int16()),
            "face_model": pa.array([model] * n, pa.string()),
            "face_source_pixel_hash": pa.array(src_hashes, pa.string()),
        })
        return out, rejects

    def summarize(self, table: pa.Table) -> dict:
        counts = table.column("face_count").to_pylist() if table.num_rows else []
        return {"rows_with_face": sum(1 for c in counts if c), "rows_with_several_faces": sum(1 for c in counts if c and c > 1)}


def _reject(row: dict, reason: str) -> dict:
    return {"sample_id": row["sample_id"], "source_path": row["source_path"], "reason": reason}
