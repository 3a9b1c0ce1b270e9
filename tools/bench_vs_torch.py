#!/usr/bin/env python3
"""Runs `kvcompress bench` and tools/compare_torch.py on the same GPU in one go and prints the
ratios side by side (SPEC section 9): speedup = PyTorch time / kvcompress time, so > 1 means
kvcompress is faster; memory ratio = PyTorch peak / kvcompress peak.

Usage (on the GPU machine, where plain python3 has PyTorch; on Debian use PYTHON=/usr/bin/python3):
  $PYTHON tools/bench_vs_torch.py --kvcompress build/kvcompress --config nsa [--compressor all]
      [--precision fp32|tf32] [--reps 20] [--json OUT.json]
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_vs_torch: {' '.join(cmd)} failed ({proc.returncode}): "
                 f"{proc.stderr.strip() or proc.stdout.strip()}")
    out = proc.stdout
    start = out.index("{")  # compare_torch may print notes before its JSON
    return json.loads(out[start:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kvcompress", default="build/kvcompress")
    ap.add_argument("--config", default="nsa", choices=["small", "nsa", "long"])
    ap.add_argument("--compressor", default="all")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", help="write both raw results and the ratios here")
    a = ap.parse_args()

    common = ["--config", a.config, "--compressor", a.compressor, "--precision", a.precision,
              "--device", a.device, "--reps", str(a.reps), "--warmup", str(a.warmup)]
    kvc = run_json([a.kvcompress, "bench", *common, "--json"])
    torch_res = run_json([sys.executable, os.path.join(HERE, "compare_torch.py"), *common,
                          "--json"])

    rows = []
    for r in kvc["results"]:
        t = torch_res["results"].get(r["kind"])
        if t is None:
            continue
        ratio = lambda key_t, key_k: t[key_t] / r[key_k] if r[key_k] > 0 else float("nan")
        rows.append({
            "kind": r["kind"],
            "kvc_step_ms": r["step_ms"], "torch_step_ms": t["step_ms"],
            "step_speedup": ratio("step_ms", "step_ms"),
            "fwd_speedup": ratio("fwd_ms", "forward_ms"),
            "bwd_speedup": ratio("bwd_ms", "backward_ms"),
            "opt_speedup": ratio("opt_ms", "optimizer_ms"),
            "kvc_peak_mib": r["peak_bytes"] / 2**20,
            "torch_peak_mib": t["peak_mem_bytes"] / 2**20,
        })

    print(f"config {a.config}, {a.precision}, device {kvc['device']} vs torch "
          f"{torch_res.get('torch')} on {torch_res.get('device')}; speedup = torch / kvcompress")
    hdr = (f"{'kind':<22}{'kvc step ms':>12}{'torch ms':>10}{'step x':>8}{'fwd x':>8}"
           f"{'bwd x':>8}{'opt x':>8}{'kvc MiB':>10}{'torch MiB':>11}")
    print(hdr)
    print("-" * len(hdr))
    for w in rows:
        print(f"{w['kind']:<22}{w['kvc_step_ms']:>12.3f}{w['torch_step_ms']:>10.3f}"
              f"{w['step_speedup']:>8.2f}{w['fwd_speedup']:>8.2f}{w['bwd_speedup']:>8.2f}"
              f"{w['opt_speedup']:>8.2f}{w['kvc_peak_mib']:>10.1f}{w['torch_peak_mib']:>11.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"kvcompress": kvc, "torch": torch_res, "ratios": rows}, f, indent=2)


if __name__ == "__main__":
    main()
