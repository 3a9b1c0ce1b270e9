#!/usr/bin/env python3
"""The PyTorch half of the GPU benchmark: times the compressor pair's distill step, written the
ways a PyTorch user would write it.

    $PYTHON tools/compare_torch.py [--config small|nsa|long] [--compressor KIND|all]
                                   [--precision fp32|tf32|bf16] [--variant naive|sdpa|compile|all]
                                   [--json [PATH]]

Run with PYTHON=/usr/bin/python3 on Debian (torch 1.13, CPU only); on the GPU machine plain
python3 has a CUDA torch.

Variants (--variant, several comma-separated, or all):
- naive:   the modules of torch_modules.py as written: attention as matmul, softmax, matmul
- sdpa:    the same modules with F.scaled_dot_product_attention for the full-attention target and
           for the attention over the compressed blocks (flash / memory-efficient kernels)
- compile: the sdpa variant's loss under torch.compile (default mode); dynamo is reset between
           kinds so each kind gets its own graph and nothing falls back to eager
Precisions (--precision): fp32 (TF32 off for matmul and cuDNN), tf32 (TF32 on), bf16 (autocast
to bfloat16 around the forward; float32 master weights, Adam and inputs; the loss in float32).

Per kind, the same work as `kvcompress bench`: the distill task on random K, V (b, h, seq, d) and
Q (b, h, nq, d), float32 tensors:
- fwd_ms:  pair.distill_loss(q, k, v): the full-attention target (no_grad), split_blocks, both
           compressors, attention over the compressed blocks, the MSE loss
- bwd_ms:  loss.backward()
- opt_ms:  torch.optim.Adam(fused=True).step() over all the pair's parameters (fused needs CUDA;
           on CPU the default implementation, with a note), after
           torch.nn.utils.clip_grad_norm_(parameters, X) with --clip X > 0 (default 0: no clip)
- step_ms: the whole training step, zero_grad(set_to_none=True) + fwd + bwd + opt, timed as one
Each phase is timed with CUDA events (perf_counter on CPU) around it, after --warmup-reps untimed
steps; the median of --reps steps is reported. peak_mem_bytes is torch.cuda.max_memory_allocated
over the timed steps (parameters, gradients, Adam state, inputs and activations), and
peak_reserved_bytes torch.cuda.max_memory_reserved (what the caching allocator held); 0 on CPU.
cuDNN autotuning (benchmark mode) is on, as PyTorch users with fixed shapes run it;
--no-cudnn-benchmark turns it off.

Output: a table on stdout; with --json, a JSON document (per variant and kind: fwd_ms, bwd_ms,
opt_ms, step_ms, peak_mem_bytes, peak_reserved_bytes, tokens_per_s, params) on stdout instead
(the table goes to stderr) or, with --json PATH, into PATH.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_modules as tm  # noqa: E402

VARIANTS = ("naive", "sdpa", "compile")

CONFIGS = {  # the benchmark shapes of kvcompress bench --config
    "small": dict(batch=2, heads=2, seq=256, block=8, dim_head=32, queries=32),
    "nsa": dict(batch=4, heads=8, seq=8192, block=16, dim_head=64, queries=512),
    "long": dict(batch=1, heads=8, seq=131072, block=32, dim_head=128, queries=1024),
}


class Timer:
  """Brackets phases with CUDA events (no host sync until read) or with perf_counter on CPU."""

  def __init__(self, cuda):
    self.cuda = cuda

  def mark(self):
    if self.cuda:
      e = torch.cuda.Event(enable_timing=True)
      e.record()
      return e
    return time.perf_counter()

  def ms(self, a, b):
    return a.elapsed_time(b) if self.cuda else (b - a) * 1e3


def _is_oom(e):
  oom = getattr(torch.cuda, "OutOfMemoryError", None)
  return (oom is not None and isinstance(e, oom)) or "out of memory" in str(e)


def sdpa_distill_loss(pair, q, k, v):
  """The distill loss with F.scaled_dot_product_attention for both attentions (default scale
  d^-0.5), the MSE in float32 (as autocast would run mse_loss)."""
  with torch.no_grad():
    target = F.scaled_dot_product_attention(q, k, v)
  kc, vc = pair.compress(k, v)
  prediction = F.scaled_dot_product_attention(q, kc, vc)
  return ((prediction.float() - target.float()) ** 2).mean()


def make_loss_fn(variant, pair):
  if variant == "naive":
    return pair.distill_loss
  loss = lambda q, k, v: sdpa_distill_loss(pair, q, k, v)  # noqa: E731
  if variant == "compile":
    torch._dynamo.reset()  # a fresh cache per kind: no recompile limit, no eager fallback
    return torch.compile(loss)
  return loss


def bench_kind(kind, variant, shape, args, device, timer):
  torch.manual_seed(args.seed)
  b, h, seq, n, d, nq = (shape[k] for k in ("batch", "heads", "seq", "block", "dim_head",
                                            "queries"))
  pair = tm.CompressorPair(kind, h, d, n, args.expand, args.dropout, args.reduction).to(device)
  pair.train()
  k = torch.randn(b, h, seq, d, device=device)
  v = torch.randn(b, h, seq, d, device=device)
  q = torch.randn(b, h, nq, d, device=device)
  fused = device.type == "cuda"
  if fused:
    opt = torch.optim.Adam(pair.parameters(), lr=args.lr, fused=True)
  else:
    opt = torch.optim.Adam(pair.parameters(), lr=args.lr)
  loss_fn = make_loss_fn(variant, pair)
  bf16 = args.precision == "bf16"

  def step(marks):
    opt.zero_grad(set_to_none=True)
    marks.append(timer.mark())
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      loss = loss_fn(q, k, v)
    marks.append(timer.mark())
    loss.backward()
    marks.append(timer.mark())
    if args.clip > 0:
      torch.nn.utils.clip_grad_norm_(pair.parameters(), args.clip)
    opt.step()
    marks.append(timer.mark())
    return loss

  for _ in range(args.warmup_reps):
    step([])
  if device.type == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
  runs = []
  for _ in range(args.reps):
    marks = []
    loss = step(marks)
    runs.append(marks)
  if device.type == "cuda":
    torch.cuda.synchronize()
  times = {name: statistics.median(timer.ms(m[i], m[j]) for m in runs)
           for name, i, j in (("fwd_ms", 0, 1), ("bwd_ms", 1, 2), ("opt_ms", 2, 3),
                              ("step_ms", 0, 3))}
  final_loss = float(loss.detach())
  if not torch.isfinite(torch.tensor(final_loss)):
    raise RuntimeError(f"{kind}: the loss is {final_loss}")
  cuda = device.type == "cuda"
  result = dict(times, peak_mem_bytes=int(torch.cuda.max_memory_allocated()) if cuda else 0,
                peak_reserved_bytes=int(torch.cuda.max_memory_reserved()) if cuda else 0,
                tokens_per_s=b * seq / (times["step_ms"] * 1e-3),
                params=sum(p.numel() for p in pair.parameters()), loss=final_loss,
                fused_adam=fused)
  del pair, opt, k, v, q, loss, loss_fn
  return result


def main(argv=None):
  ap = argparse.ArgumentParser(
      prog="compare_torch.py", description=__doc__.split("\n\n")[0],
      epilog="Run with PYTHON=/usr/bin/python3 on Debian.\n\n" + __doc__.split("\n\n", 2)[2],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
  ap.add_argument("--compressor", default="all", help=f"one of {', '.join(tm.KINDS)} or all")
  for flag, key in (("--batch", "batch"), ("--heads", "heads"), ("--seq", "seq"),
                    ("--block", "block"), ("--dim-head", "dim_head"), ("--queries", "queries")):
    ap.add_argument(flag, type=int, dest=key, help=f"override the config's {key}")
  ap.add_argument("--expand", type=float, default=1.0)
  ap.add_argument("--dropout", type=float, default=0.0)
  ap.add_argument("--reduction", type=int, default=2)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--clip", type=float, default=0.0,
                  help="clip_grad_norm_ before each optimizer step (default 0: none)")
  ap.add_argument("--warmup-reps", type=int, default=5, help="untimed steps first (default 5)")
  ap.add_argument("--reps", type=int, default=20, help="timed steps, median taken (default 20)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
  ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
  ap.add_argument("--variant", default="naive",
                  help=f"{', '.join(VARIANTS)}, several comma-separated, or all (default naive)")
  ap.add_argument("--no-cudnn-benchmark", action="store_true")
  ap.add_argument("--json", nargs="?", const="-", metavar="PATH",
                  help="JSON results: on stdout (table to stderr), or into PATH")
  args = ap.parse_args(argv)

  variants = list(VARIANTS) if args.variant == "all" else args.variant.split(",")
  if any(v not in VARIANTS for v in variants):
    ap.error(f"--variant: '{args.variant}' (expected {', '.join(VARIANTS)}, a comma-separated "
             "list of them, or all)")
  kinds = list(tm.KINDS) if args.compressor == "all" else [args.compressor]
  if any(kind not in tm.KINDS for kind in kinds):
    ap.error(f"--compressor: unknown kind '{args.compressor}' (expected one of "
             f"{', '.join(tm.KINDS)} or all)")
  shape = dict(CONFIGS[args.config])
  for key in shape:
    if getattr(args, key) is not None:
      shape[key] = getattr(args, key)
  bad = [f"{key} {val}" for key, val in shape.items() if val < 1]
  if bad or args.reps < 1 or args.warmup_reps < 0:
    ap.error(f"bad values: {', '.join(bad) or f'reps {args.reps}, warmup-reps {args.warmup_reps}'}")
  if shape["seq"] < shape["block"]:
    ap.error(f"--seq {shape['seq']} is shorter than one block of {shape['block']}")

  table = sys.stderr if args.json == "-" else sys.stdout
  notes = []
  if args.device == "cuda" and not torch.cuda.is_available():
    print("compare_torch: error: --device cuda but torch.cuda.is_available() is False "
          f"(torch {torch.__version__})", file=sys.stderr)
    return 1
  use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
  device = torch.device("cuda" if use_cuda else "cpu")
  if use_cuda:
    tf32 = args.precision == "tf32"  # bf16 runs its float32 leftovers without TF32, as autocast
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    device_name = torch.cuda.get_device_name(0)
  else:
    notes.append("no CUDA: timing on the CPU with perf_counter, Adam not fused "
                 "(fused=True needs CUDA); these numbers are a smoke test, not the benchmark")
    device_name = f"cpu ({platform.processor() or platform.machine()}, "\
                  f"{torch.get_num_threads()} threads)"
  for note in notes:
    print(f"note: {note}", file=table)
  print(f"compare_torch: torch {torch.__version__} on {device_name}; config {args.config} "
        f"b={shape['batch']} h={shape['heads']} seq={shape['seq']} n={shape['block']} "
        f"d={shape['dim_head']} nq={shape['queries']}; {args.precision}; median of {args.reps} "
        f"after {args.warmup_reps} untimed", file=table)
  header = (f"{'variant':<8} {'kind':<22} {'fwd ms':>9} {'bwd ms':>9} {'opt ms':>9} {'step ms':>9} "
            f"{'tokens/s':>11} {'peak MiB':>9} {'params':>10}")
  print(header, file=table)
  print("-" * len(header), file=table)

  timer = Timer(use_cuda)
  results, failed = {v: {} for v in variants}, False
  for variant in variants:
    for kind in kinds:
      try:
        r = bench_kind(kind, variant, shape, args, device, timer)
      except Exception as e:  # noqa: BLE001 - one kind or variant failing must not stop the rest
        msg = " ".join(str(e).split())[:300]
        if use_cuda and _is_oom(e):
          msg = f"out of GPU memory: {msg}"
        results[variant][kind] = {"error": f"{type(e).__name__}: {msg}"}
        failed = True
        print(f"{variant:<8} {kind:<22} error: {type(e).__name__}: {msg}", file=table)
        if use_cuda:
          torch.cuda.empty_cache()
        continue
      results[variant][kind] = r
      print(f"{variant:<8} {kind:<22} {r['fwd_ms']:9.3f} {r['bwd_ms']:9.3f} {r['opt_ms']:9.3f} "
            f"{r['step_ms']:9.3f} {r['tokens_per_s']:11.4g} {r['peak_mem_bytes'] / 2**20:9.1f} "
            f"{r['params']:10d}", file=table, flush=True)
      if use_cuda:
        torch.cuda.empty_cache()

  if args.json:
    doc = dict(tool="compare_torch", torch=torch.__version__, device=device_name,
               config=args.config, shape=shape, precision=args.precision, variants=variants,
               expand=args.expand, dropout=args.dropout, reduction=args.reduction,
               warmup_reps=args.warmup_reps, reps=args.reps, notes=notes, results=results)
    text = json.dumps(doc, indent=2)
    if args.json == "-":
      print(text)
    else:
      with open(args.json, "w") as f:
        f.write(text + "\n")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
