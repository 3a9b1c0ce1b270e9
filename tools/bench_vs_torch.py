#!/usr/bin/env python3
"""Runs `kvcompress bench` and tools/compare_torch.py on the same GPU in one go and compares each
kvcompress precision with the *fastest* PyTorch variant (naive, sdpa, torch.compile) of the same
precision, printing which variant won.

Usage (on the GPU machine, where plain python3 has PyTorch; on Debian use PYTHON=/usr/bin/python3):
  $PYTHON tools/bench_vs_torch.py --kvcompress build/kvcompress --config nsa
      [--precision fp32,tf32,bf16|all] [--compressor all|KIND,...] [--variant all] [--reps 20]
      [--json OUT.json]

Both sides update the weights alike: with --clip 0 (the default) neither clips, as PyTorch's
step (compare_torch.py) has no clip, and kvcompress's Adam takes the gradient norm `train` logs
as it reads the gradients (`bench --clip 0`); with --clip X both clip the global norm at X
(clip_grad_norm_ on the PyTorch side).

ratio = kvcompress step time / fastest PyTorch step time (< 1: kvcompress is faster); the
memory column is kvcompress's peak over the winning variant's. The floor column is the time
the step cannot beat on this GPU: max(FLOPs / matrix rate, compulsory bytes / copy bandwidth),
both rates measured here first with PyTorch (a large matmul in the precision, a large copy), and
"of floor" is floor / kvcompress time. For fp32 the matrix rate is the faster of the FP32 rate
and a third of the TF32 rate: float32 accuracy from three TF32 products of split operands (as
kvcompress's fp32 attention target computes on Hopper) is within the GPU's reach, so a floor at
the FP32 rate alone would be one the step can beat.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PRECISIONS = ("fp32", "tf32", "bf16")


def run_json(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "{" not in proc.stdout:
        sys.exit(f"bench_vs_torch: {' '.join(cmd)} failed ({proc.returncode}): "
                 f"{proc.stderr.strip()[-2000:] or proc.stdout.strip()[-2000:]}")
    out = proc.stdout
    start = out.index("{")  # compare_torch may print notes before its JSON
    return json.loads(out[start:])


def measure_peaks():
    """Matrix rate per precision (TFLOP/s, 8192^3 on random data) and copy bandwidth (GB/s,
    bytes read + written), medians over repeats; None without CUDA."""
    import torch
    if not torch.cuda.is_available():
        return None

    def timed(fn, reps=10):
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
        return sorted(times)[len(times) // 2]

    n = 8192
    peaks = {}
    for p in PRECISIONS:
        torch.backends.cuda.matmul.allow_tf32 = p == "tf32"
        dtype = torch.bfloat16 if p == "bf16" else torch.float32
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        peaks[p + "_tflops"] = 2 * n ** 3 / timed(lambda: a @ b) * 1e-12
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(1 << 30, device="cuda")  # 4 GiB
    y = torch.empty_like(x)
    peaks["copy_gbps"] = 2 * x.numel() * 4 / timed(lambda: y.copy_(x)) * 1e-9
    del a, b, x, y
    torch.cuda.empty_cache()
    return peaks


def matrix_rate(precision, peaks):
    """TFLOP/s the floor counts a precision's FLOPs at (see the module's docstring for fp32)."""
    rate = peaks[precision + "_tflops"]
    if precision == "fp32" and "tf32_tflops" in peaks:
        rate = max(rate, peaks["tf32_tflops"] / 3)
    return rate


def step_floor_ms(result, precision, peaks):
    """The step's floor in ms from kvcompress bench's work model; nan without measured rates."""
    if not peaks:
        return float("nan")
    flops = result["forward_flops"] + result["backward_flops"]
    return 1e3 * max(flops / (matrix_rate(precision, peaks) * 1e12),
                     result["step_bytes"] / (peaks["copy_gbps"] * 1e9))


def compare(a, precision, peaks):
    # Each comma-separated kind runs as its own pair of processes (at `long`, one kind's compiled
    # graphs and memory are gone before the next); their results are merged.
    kvc, torch_res = None, None
    for kind in a.compressor.split(","):
        common = ["--config", a.config, "--compressor", kind, "--precision", precision,
                  "--device", a.device, "--reps", str(a.reps), "--warmup-reps", str(a.warmup_reps),
                  "--clip", str(a.clip)]
        k = run_json([a.kvcompress, "bench", *common, "--json"])
        t = run_json([sys.executable, os.path.join(HERE, "compare_torch.py"), *common,
                      "--variant", a.variant, "--json"])
        if kvc is None:
            kvc, torch_res = k, t
            continue
        kvc["results"].extend(k["results"])
        for variant, per_kind in t["results"].items():
            torch_res["results"].setdefault(variant, {}).update(per_kind)
    rows = []
    for r in kvc["results"]:
        best = None
        for variant, per_kind in torch_res["results"].items():
            t = per_kind.get(r["kind"])
            if t and "step_ms" in t and (best is None or t["step_ms"] < best[1]["step_ms"]):
                best = (variant, t)
        if best is None:
            continue
        variant, t = best
        floor_ms = step_floor_ms(r, precision, peaks)
        rows.append({
            "kind": r["kind"], "precision": precision, "torch_variant": variant,
            "kvc_step_ms": r["step_ms"], "torch_step_ms": t["step_ms"],
            "ratio": r["step_ms"] / t["step_ms"],
            "kvc_fwd_ms": r["forward_ms"], "torch_fwd_ms": t["fwd_ms"],
            "kvc_bwd_ms": r["backward_ms"], "torch_bwd_ms": t["bwd_ms"],
            # Both over the timed steps; kvcompress's peak while building the pair, the
            # optimizer and the batch (and timing the phases) is kept beside it.
            "kvc_peak_mib": r["peak_bytes"] / 2**20, "torch_peak_mib": t["peak_mem_bytes"] / 2**20,
            "kvc_setup_peak_mib": r.get("setup_peak_bytes", float("nan")) / 2**20,
            # What each allocator held at most (in use plus cached) over the timed steps.
            "kvc_reserved_mib": r.get("peak_reserved_bytes", float("nan")) / 2**20,
            "torch_reserved_mib": t.get("peak_reserved_bytes", float("nan")) / 2**20,
            "floor_ms": floor_ms, "of_floor": floor_ms / r["step_ms"],
            "floor_rate_tflops": matrix_rate(precision, peaks) if peaks else float("nan"),
            "torch_all": {v: per_kind.get(r["kind"], {}).get("step_ms")
                          for v, per_kind in torch_res["results"].items()},
        })
    return kvc, torch_res, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kvcompress", default="build/kvcompress")
    ap.add_argument("--config", default="nsa", choices=["small", "nsa", "long"])
    ap.add_argument("--compressor", default="all",
                    help="all (one run), one kind, or several comma-separated (one run each)")
    ap.add_argument("--precision", default="all",
                    help="fp32, tf32, bf16, several comma-separated, or all (default all)")
    ap.add_argument("--variant", default="all", help="PyTorch variants to try (default all)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--clip", type=float, default=0.0,
                    help="global gradient-norm clip of both sides' steps (default 0: none)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup-reps", type=int, default=5, help="untimed steps first (default 5)")
    ap.add_argument("--no-peaks", action="store_true", help="skip measuring the floor's rates")
    ap.add_argument("--json", help="write the raw results and the comparison here")
    a = ap.parse_args()
    precisions = list(PRECISIONS) if a.precision == "all" else a.precision.split(",")
    if any(p not in PRECISIONS for p in precisions):
        ap.error(f"--precision: '{a.precision}' (expected {', '.join(PRECISIONS)} or all)")

    peaks = None if a.no_peaks else measure_peaks()
    if peaks:
        print("measured: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()), flush=True)
    doc = {"config": a.config, "clip": a.clip, "peaks": peaks, "runs": []}
    # Memory: peak MiB in use (max_memory_allocated and its kvcompress counterpart), and held by
    # each side's caching allocator (in use plus cached).
    hdr = (f"{'prec':<5}{'kind':<22}{'kvc ms':>9}{'torch ms':>10}{'winner':>9}{'ratio':>7}"
           f"{'fwd k/t':>13}{'bwd k/t':>13}{'MiB k/t':>13}{'held k/t':>13}{'floor ms':>10}"
           f"{'of floor':>9}")
    lines = []
    for p in precisions:
        kvc, torch_res, rows = compare(a, p, peaks)
        doc["runs"].append({"precision": p, "kvcompress": kvc, "torch": torch_res, "rows": rows})
        for w in rows:
            lines.append(
                f"{p:<5}{w['kind']:<22}{w['kvc_step_ms']:>9.3f}{w['torch_step_ms']:>10.3f}"
                f"{w['torch_variant']:>9}{w['ratio']:>7.3f}"
                f"{w['kvc_fwd_ms']:>6.2f}/{w['torch_fwd_ms']:<6.2f}"
                f"{w['kvc_bwd_ms']:>6.2f}/{w['torch_bwd_ms']:<6.2f}"
                f"{w['kvc_peak_mib']:>6.0f}/{w['torch_peak_mib']:<6.0f}"
                f"{w['kvc_reserved_mib']:>6.0f}/{w['torch_reserved_mib']:<6.0f}"
                f"{w['floor_ms']:>10.3f}{w['of_floor']:>9.2f}")
            print(lines[-1], flush=True)
        if a.json:  # after every precision: a later failure keeps what was measured
            with open(a.json, "w") as f:
                json.dump(doc, f, indent=2)
    print(f"\nconfig {a.config} on {kvc['device']}, torch {torch_res.get('torch')} on "
          f"{torch_res.get('device')}; "
          f"{'no clipping' if a.clip <= 0 else f'both clip at {a.clip:g}'}; "
          "ratio = kvcompress / fastest PyTorch step (< 1: faster)")
    print(hdr)
    print("-" * len(hdr))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
