#!/usr/bin/env python3
"""Loads a kvcompress checkpoint into the PyTorch CompressorPair and runs it on an HDF5 KV file.

    $PYTHON tools/load_torch.py CKPT.h5 KV.h5 [--compare INFER_OUT.h5] [--out OUT.h5]

Run with PYTHON=/usr/bin/python3 on Debian (the first python3 on PATH there has no torch).

- CKPT.h5: a kvcompress checkpoint (docs/formats.md): root attributes compressor, heads,
  dim_head, block, expand, dropout, reduction; /params/<key> float32 datasets named by the full
  state_dict key. They are loaded with load_state_dict(strict=True) and no renaming: this is the
  check that the checkpoint layout is PyTorch's.
- KV.h5: datasets k and v, shape (N, h, seq, d), float32 or float16 (docs/formats.md); read
  --chunk sequences at a time, so a file larger than memory works.
- The pair runs in eval mode (dropout off), by default in float64 (the float32 weights widened
  exactly), so it is a reference for kvcompress's float32 `infer`.
- --compare INFER_OUT.h5: datasets k_compressed, v_compressed (N, h, w, d) from
  `kvcompress infer`; prints the relative error ||ours - theirs|| / ||ours|| of each and exits 1
  if the larger is above --tol (default 1e-5).
- --out OUT.h5: writes this run's k_compressed and v_compressed (float32), the infer format.

Exit codes: 0 ok, 1 a failed comparison or bad input (a one-line message), 2 usage.
"""

import argparse
import os
import sys

try:
  import h5py
  import numpy as np
  import torch
except ImportError as missing:
  # One line instead of a traceback: on Debian the first python3 on PATH is often not the one
  # that sees python3-torch.
  sys.exit(f"load_torch.py: {sys.executable} cannot import {missing.name}; run it with an "
           "interpreter that has numpy, h5py and torch, e.g. PYTHON=/usr/bin/python3 on Debian "
           "(apt-get install python3-torch python3-h5py), then $PYTHON tools/load_torch.py ...")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_modules as tm  # noqa: E402


class LoadError(Exception):
  pass


def _attr(f, name, cast, path):
  if name not in f.attrs:
    raise LoadError(f"{path}: missing root attribute '{name}' (a kvcompress checkpoint has it)")
  value = f.attrs[name]
  if isinstance(value, bytes):
    value = value.decode()
  if isinstance(value, np.ndarray):  # h5py gives 1-element arrays for some writers
    if value.size != 1:
      raise LoadError(f"{path}: attribute '{name}' has {value.size} values, expected 1")
    value = value.reshape(()).item()
    if isinstance(value, bytes):
      value = value.decode()
  try:
    return cast(value)
  except (TypeError, ValueError):
    raise LoadError(f"{path}: attribute '{name}' = {value!r} is not a {cast.__name__}")


def load_pair(path, dtype=torch.float64):
  """The CompressorPair of a checkpoint, its weights loaded strictly, in eval mode."""
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise LoadError(f"cannot open checkpoint {path}: {e}")
  with f:
    fmt = f.attrs.get("format")
    if fmt is not None:
      fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
      if fmt != "kvcompress-checkpoint":
        raise LoadError(f"{path}: format attribute is '{fmt}', not 'kvcompress-checkpoint'")
    config = dict(kind=_attr(f, "compressor", str, path), heads=_attr(f, "heads", int, path),
                  dim_head=_attr(f, "dim_head", int, path), block=_attr(f, "block", int, path),
                  expand=_attr(f, "expand", float, path), dropout=_attr(f, "dropout", float, path),
                  reduction=_attr(f, "reduction", int, path))
    if "params" not in f or not isinstance(f["params"], h5py.Group):
      raise LoadError(f"{path}: no /params group")
    state = {}
    for key, ds in f["params"].items():
      if not isinstance(ds, h5py.Dataset):
        raise LoadError(f"{path}: /params/{key} is a group; parameters are datasets directly "
                        "under /params named by their full key")
      state[key] = torch.from_numpy(np.asarray(ds[()], dtype=np.float64))
  try:
    pair = tm.CompressorPair(config["kind"], config["heads"], config["dim_head"], config["block"],
                             config["expand"], config["dropout"], config["reduction"])
  except ValueError as e:
    raise LoadError(f"{path}: {e}")
  pair = pair.to(dtype)
  try:
    pair.load_state_dict(state, strict=True)  # the contract: no renaming, nothing missing/extra
  except RuntimeError as e:
    msg = " ".join(str(e).split())
    raise LoadError(f"{path}: load_state_dict(strict=True) failed: {msg}")
  return pair.eval(), config


def run_pair(pair, config, kv_path, chunk, dtype=torch.float64):
  """(k_compressed, v_compressed) as float64 numpy (N, h, w, d) for every sequence of KV.h5."""
  try:
    f = h5py.File(kv_path, "r")
  except OSError as e:
    raise LoadError(f"cannot open KV file {kv_path}: {e}")
  with f:
    for name in ("k", "v"):
      if name not in f or not isinstance(f[name], h5py.Dataset):
        raise LoadError(f"{kv_path}: missing dataset '{name}' of shape (N, h, seq, d)")
    k_ds, v_ds = f["k"], f["v"]
    for name, ds in (("k", k_ds), ("v", v_ds)):
      if ds.dtype not in (np.float32, np.float16):
        raise LoadError(f"{kv_path}: dataset '{name}' is {ds.dtype}, expected float32 or float16")
      if ds.ndim != 4:
        raise LoadError(f"{kv_path}: dataset '{name}' has shape {ds.shape}, expected "
                        "(N, h, seq, d)")
    if k_ds.shape != v_ds.shape:
      raise LoadError(f"{kv_path}: k {k_ds.shape} and v {v_ds.shape} differ in shape")
    count, h, seq, d = k_ds.shape
    if h != config["heads"] or d != config["dim_head"]:
      raise LoadError(f"{kv_path}: k is {k_ds.shape} but the checkpoint has heads "
                      f"{config['heads']} and dim_head {config['dim_head']}")
    w = seq // config["block"]
    if w < 1:
      raise LoadError(f"{kv_path}: seq {seq} is shorter than one block of {config['block']}")
    kc = np.empty((count, h, w, d), dtype=np.float64)
    vc = np.empty((count, h, w, d), dtype=np.float64)
    with torch.no_grad():
      for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        k = torch.from_numpy(k_ds[start:stop].astype(np.float32)).to(dtype)
        v = torch.from_numpy(v_ds[start:stop].astype(np.float32)).to(dtype)
        if not (torch.isfinite(k).all() and torch.isfinite(v).all()):
          raise LoadError(f"{kv_path}: NaN or Inf in k or v among sequences {start}..{stop - 1}")
        a, b = pair.compress(k, v)
        kc[start:stop], vc[start:stop] = a.double().numpy(), b.double().numpy()
  return kc, vc


def compare(kc, vc, path, tol):
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise LoadError(f"cannot open infer output {path}: {e}")
  worst = 0.0
  with f:
    for name, ours in (("k_compressed", kc), ("v_compressed", vc)):
      if name not in f:
        raise LoadError(f"{path}: missing dataset '{name}'")
      theirs = np.asarray(f[name][()], dtype=np.float64)
      if theirs.shape != ours.shape:
        raise LoadError(f"{path}: {name} has shape {theirs.shape}, PyTorch gives {ours.shape}")
      den = np.linalg.norm(ours)
      err = np.linalg.norm(theirs - ours) / (den if den > 0 else 1.0)
      print(f"{name}: relative error {err:.3e} (max abs diff {np.abs(theirs - ours).max():.3e})")
      worst = max(worst, err) if np.isfinite(err) else float("inf")
  ok = worst <= tol
  print(f"max relative error {worst:.3e} {'<=' if ok else '>'} {tol:g}: {'PASS' if ok else 'FAIL'}")
  return ok


def write_out(kc, vc, path):
  tmp = path + ".tmp"
  try:
    with h5py.File(tmp, "w") as f:
      f.create_dataset("k_compressed", data=kc.astype(np.float32))
      f.create_dataset("v_compressed", data=vc.astype(np.float32))
    os.replace(tmp, path)  # never a half-written file in place of a good one
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise LoadError(f"cannot write {path}: {e}")


def main(argv=None):
  ap = argparse.ArgumentParser(
      prog="load_torch.py", description=__doc__.split("\n\n")[0],
      epilog="Run with PYTHON=/usr/bin/python3 on Debian.\n\n" + __doc__.split("\n\n", 2)[2],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("checkpoint", help="kvcompress checkpoint .h5")
  ap.add_argument("kv", help="HDF5 file with datasets k, v (N, h, seq, d)")
  ap.add_argument("--compare", metavar="INFER_OUT.h5", help="kvcompress infer output to check")
  ap.add_argument("--out", metavar="OUT.h5", help="write PyTorch's k_compressed, v_compressed")
  ap.add_argument("--tol", type=float, default=1e-5, help="max relative error (default 1e-5)")
  ap.add_argument("--chunk", type=int, default=64, help="sequences per batch (default 64)")
  ap.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                  help="PyTorch compute dtype (default float64, the reference)")
  args = ap.parse_args(argv)
  if args.chunk < 1:
    ap.error(f"--chunk must be >= 1, got {args.chunk}")
  dtype = torch.float64 if args.dtype == "float64" else torch.float32
  try:
    pair, config = load_pair(args.checkpoint, dtype)
    nparams = sum(p.numel() for p in pair.parameters())
    print(f"loaded {args.checkpoint}: {config['kind']}, heads {config['heads']}, dim_head "
          f"{config['dim_head']}, block {config['block']}, {nparams} parameters (strict)")
    kc, vc = run_pair(pair, config, args.kv, args.chunk, dtype)
    print(f"compressed {kc.shape[0]} sequences of {args.kv}: k_compressed, v_compressed "
          f"{tuple(kc.shape)}")
    if args.out:
      write_out(kc, vc, args.out)
      print(f"wrote {args.out}")
    if args.compare and not compare(kc, vc, args.compare, args.tol):
      return 1
  except LoadError as e:
    print(f"load_torch: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
