#!/usr/bin/env python3
"""Fit the polynomial of the bf16 MLP kernels' GELU (kernels/math/elementwise.h, gelu_erfc_*).

For x >= 0 those kernels write h(x) = erfc(x / sqrt 2) / 2 = 1 - Phi(x) as

    h = t * 2^(Q(t) - log2(e) x^2 / 2),   t = 1 / (1 + x / (2 sqrt 2)),

so that GELU(x) = max(x, 0) - |x| h(|x|) for either sign of x. Q is a polynomial of degree 7 in
t, in base-2 units (one ex2 instruction, no scaling), with erfc's 1/2 folded in and Q(1) = -1
exactly (h(0) = 1/2, GELU'(0) = 1/2). This script fits it: a minimax fit of Q's error in log2
units (the relative error of h, over ln 2) over |x| <= 12, the bfloat16 inputs the kernels read
that do not round to 0 or to x (Lawson's reweighted least squares on a dense grid), and prints
the coefficients, highest first, as the kernel's Horner loop uses them, with the fit's error.

Needs numpy only. Interpreter from PYTHON, e.g. PYTHON=/usr/bin/python3 on Debian.
"""
import argparse
import math

import numpy as np


def target(t):
    """Q*(t) = log2(h / t) + log2(e) x^2 / 2 at x = 2 sqrt 2 (1 / t - 1), in float64."""
    x = 2.0 * math.sqrt(2.0) * (1.0 / t - 1.0)
    h = np.array([0.5 * math.erfc(v / math.sqrt(2.0)) for v in x])
    return np.log2(h / t) + x * x / (2.0 * math.log(2.0))


def fit(degree, x_max, points, iterations):
    t_min = 1.0 / (1.0 + x_max / (2.0 * math.sqrt(2.0)))
    # Chebyshev points on [t_min, 1] (dense at both ends) plus the ends themselves.
    k = np.arange(points)
    t = 0.5 * (1 + t_min) + 0.5 * (1 - t_min) * np.cos(np.pi * (k + 0.5) / points)
    t = np.concatenate([t, [t_min, 1.0]])
    q = target(t)
    # Q(t) = -1 + (t - 1) R(t), R of degree - 1: Q(1) = -1 holds by construction.
    basis = np.stack([(t - 1.0) * t**j for j in range(degree)], axis=1)
    rhs = q + 1.0
    weights = np.ones_like(t)
    for _ in range(iterations):  # Lawson: weights grow where the error is largest
        sw = np.sqrt(weights)
        r, *_ = np.linalg.lstsq(basis * sw[:, None], rhs * sw, rcond=None)
        err = np.abs(basis @ r - rhs)
        weights *= err / err.max() + 1e-12
        weights /= weights.sum()
    # Coefficients of Q in powers of t: -1 + sum_j r_j (t^(j+1) - t^j).
    coeffs = np.zeros(degree + 1)
    coeffs[0] = -1.0
    for j, rj in enumerate(r):
        coeffs[j + 1] += rj
        coeffs[j] -= rj
    return coeffs, err.max(), t_min


def horner32(c, t):
    """Q(t) in float32 as the kernel evaluates it (coefficients lowest power first)."""
    t = np.float32(t)
    q = c[-1]
    for cj in c[-2::-1]:
        q = np.float32(q * t + cj)  # one rounding an fma, as fmaf's
    return q


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--degree", type=int, default=7, help="degree of Q (default 7)")
    ap.add_argument("--x-max", type=float, default=12.0, help="fit over 0 <= x <= X (default 12)")
    ap.add_argument("--points", type=int, default=4000, help="grid points (default 4000)")
    ap.add_argument("--iterations", type=int, default=200, help="Lawson iterations (default 200)")
    args = ap.parse_args()
    coeffs, err, t_min = fit(args.degree, args.x_max, args.points, args.iterations)
    # Round to float32 as the kernel holds them; then the constant term again, so that the
    # kernel's float32 Horner loop gives Q(1) = -1 exactly.
    # (The last addition rounds: where -1 - (the rest) is not a float32, step t's coefficient
    # an ulp at a time until it is.)
    c32 = coeffs.astype(np.float32)
    for step in range(64):
        c32[0] = np.float32(-1.0) - horner32(np.concatenate([[np.float32(0)], c32[1:]]), 1.0)
        if horner32(c32, 1.0) == np.float32(-1.0):
            break
        c32[1] = np.nextafter(c32[1], np.float32(np.inf) if step % 2 else np.float32(-np.inf))
    print(f"degree {args.degree}, t in [{t_min:.6f}, 1] (|x| <= {args.x_max})")
    print(f"max |Q - Q*| = {err:.3e} log2 units (relative error of h {err * math.log(2):.3e})")
    print(f"Q(1) in float32 = {float(horner32(c32, 1.0)):.9g}")
    print("coefficients, highest power first:")
    for c in c32[::-1]:
        print(f"  {float(c):.9g}f")


if __name__ == "__main__":
    main()
