#!/usr/bin/env python3
"""Checks a `kvcompress export` file against its checkpoint, reading safetensors by hand.

    $PYTHON tests/check_safetensors.py CKPT.h5 WEIGHTS.safetensors

The safetensors file is parsed with json + numpy only (no safetensors package), following the
format: an 8-byte little-endian header length N, N bytes of JSON (may end in spaces), then the
data; each tensor's data_offsets are [begin, end) relative to the data, and together they cover
it exactly. Every tensor must be F32 with the shape and the values (bit for bit) of
/params/<key> in the checkpoint (read with h5py). The PyTorch CompressorPair is then built from
the file's own metadata and loads the tensors with load_state_dict(strict=True), and its output
matches the pair that tools/load_torch.py builds from the checkpoint. Exit 0 when all holds.
"""

import json
import os
import struct
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import load_torch  # noqa: E402
import torch_modules as tm  # noqa: E402


def fail(msg):
  sys.exit(f"check_safetensors.py: {msg}")


def read_safetensors(path):
  """(tensors: key -> float32 numpy, metadata: dict) from the raw bytes."""
  with open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 8:
    fail(f"{path}: {len(raw)} bytes, shorter than the 8-byte header length")
  (n,) = struct.unpack("<Q", raw[:8])
  if 8 + n > len(raw):
    fail(f"{path}: header length {n} runs past the file's {len(raw)} bytes")
  text = raw[8:8 + n].decode("utf-8")
  if not text.startswith("{") or text.rstrip(" ") != text.rstrip():
    fail(f"{path}: the header does not start with '{{' or is padded with something but spaces")
  header = json.loads(text)
  data = raw[8 + n:]
  metadata = header.pop("__metadata__", {})
  if not all(isinstance(v, str) for v in metadata.values()):
    fail(f"{path}: __metadata__ values must be strings: {metadata}")
  spans, tensors = [], {}
  for key, info in header.items():
    if info["dtype"] != "F32":
      fail(f"{path}: {key} has dtype {info['dtype']}, expected F32")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - begin != 4 * int(np.prod(shape, dtype=np.int64)):
      fail(f"{path}: {key} spans {end - begin} bytes for shape {shape}")
    tensors[key] = np.frombuffer(data[begin:end], dtype="<f4").reshape(shape)
    spans.append((begin, end))
  spans.sort()
  covered = 0
  for begin, end in spans:
    if begin != covered:
      fail(f"{path}: the data has a hole or an overlap at byte {covered} (next tensor at {begin})")
    covered = end
  if covered != len(data):
    fail(f"{path}: the tensors cover {covered} of {len(data)} data bytes")
  return tensors, metadata


def main():
  if len(sys.argv) != 3:
    sys.exit("usage: check_safetensors.py CKPT.h5 WEIGHTS.safetensors")
  ckpt, st_path = sys.argv[1:]
  tensors, meta = read_safetensors(st_path)
  with h5py.File(ckpt, "r") as f:
    params = {k: np.asarray(ds[()]) for k, ds in f["params"].items()}
  if set(params) != set(tensors):
    fail(f"keys differ: only in the checkpoint {sorted(set(params) - set(tensors))}, only in "
         f"the export {sorted(set(tensors) - set(params))}")
  for key, want in params.items():
    got = tensors[key]
    if got.shape != want.shape or not np.array_equal(got, want.astype(np.float32)):
      fail(f"{key}: shape {got.shape} vs {want.shape} or values differ")

  pair = tm.CompressorPair(meta["compressor"], int(meta["heads"]), int(meta["dim_head"]),
                           int(meta["block"]), float(meta["expand"]), float(meta["dropout"]),
                           int(meta["reduction"])).double()
  state = {k: torch.from_numpy(v.astype(np.float64)) for k, v in tensors.items()}
  pair.load_state_dict(state, strict=True)
  pair.eval()
  reference, _ = load_torch.load_pair(ckpt)
  gen = torch.Generator().manual_seed(0)
  h, d, n = int(meta["heads"]), int(meta["dim_head"]), int(meta["block"])
  k = torch.randn(2, h, 4 * n, d, generator=gen, dtype=torch.float64)
  v = torch.randn(2, h, 4 * n, d, generator=gen, dtype=torch.float64)
  with torch.no_grad():
    ours, theirs = pair.compress(k, v), reference.compress(k, v)
  for a, b in zip(ours, theirs):
    if not torch.equal(a, b):
      fail(f"the exported pair's output differs from the checkpoint's by {(a - b).abs().max()}")
  print(f"ok: {len(tensors)} tensors, metadata {sorted(meta)}")


if __name__ == "__main__":
  main()
