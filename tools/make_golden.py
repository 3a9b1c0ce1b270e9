#!/usr/bin/env python3
"""Writes the PyTorch goldens of tests/golden/ (float64, deterministic) that the C++ tests read.

Regenerate all of them (run with PYTHON=/usr/bin/python3 on Debian, whose torch is 1.13):

    PYTHON=/usr/bin/python3; $PYTHON tools/make_golden.py --out tests/golden

Before writing, it checks the PyTorch modules themselves against independent references (index
formulas of the layers (nn/) written out with numpy, torch.autograd.gradcheck, a hand-written
Adam) and prints the results; it writes nothing if any check fails.

Golden file format (every float dataset float64, written with h5py)
-------------------------------------------------------------------
Layer goldens, one file per (kind, shape): `<kind>_<tag>.h5`, tag a (b=2 h=2 w=3 n=4 d=6,
expand 1.0) and b (b=1 h=3 w=2 n=5 d=4, expand 0.5); reduction 2, dropout 0.
- root attributes: `kind` (str), `b`, `h`, `w`, `n`, `d`, `reduction` (int64), `expand`,
  `dropout` (float64)
- `/params/<state_dict key>`: every parameter, names and shapes exactly as the layers
  (`/params/conv.weight`, `/params/net.0.weight`, `/params/residual_scale`, ...), random: the
  layer's own init plus N(0, 0.25^2) noise, so identity and constant inits cannot hide a bug
- `/input` (b,h,w,n,d); `/output` (b,h,w,d); `/grad_output` (b,h,w,d) a fixed random upstream
  gradient
- `/grads/input` (b,h,w,n,d) and `/grads/params/<key>` for every parameter: the gradients of
  sum(output * grad_output)

Pair goldens `pair_<kind>.h5`, every kind, for the distill task; b=2 h=2 n=4
d=6 nq=5, seq 14 (not a multiple of n: the trailing 2 tokens are dropped, w=3) for conv,
attention_pool, grouped_mlp, mlp and seq 12 (w=3) for the others; expand 0.5, reduction 2,
dropout 0.
- root attributes: `kind`, `b`, `h`, `seq`, `n`, `d`, `nq`, `w`, `reduction` (int64), `expand`,
  `dropout` (float64)
- `/params/<key>` with the pair's keys (`k_compress.conv.weight`, ..., `k_intrablock_positions`,
  `v_intrablock_positions`); the positions are nonzero random so their gradient path is
  exercised
- `/k`, `/v` (b,h,seq,d), `/q` (b,h,nq,d)
- `/k_compressed`, `/v_compressed` (b,h,w,d); `/target` (b,h,nq,d) the full-attention output;
  `/prediction` (b,h,nq,d); `/loss` scalar (shape ())
- `/grads/params/<key>`: gradients of the distill loss; also `/grads/k`, `/grads/v`
  (b,h,seq,d), the gradients with respect to the inputs (through the compressed branch only:
  the target is under no_grad; the dropped trailing tokens get 0)

NSA goldens `nsa_<kind>.h5` (conv, mlp, attention_pool): the distill task with overlapping
blocks, GQA and causal masking, and the selection recall; b=2 h=2 n=16 stride 8 d=6 nq=6 G=2,
seq 43 (w=4; the 3 tokens past the last window are dropped), topk 2; expand 0.5, reduction 2.
- root attributes as the pair goldens', plus `stride`, `query_heads`, `causal` (1), `topk`
  (int64)
- `/params/<key>`, `/k`, `/v` (b,h,seq,d), `/q` (b,h*G,nq,d), `/q_pos` (b,nq) the positions
  (float64 whole numbers; some see no complete block)
- `/k_compressed`, `/v_compressed` (b,h,w,d); `/target`, `/prediction` (b,h*G,nq,d); `/loss`
- `/grads/params/<key>`, `/grads/k`, `/grads/v` as for the pair goldens
- `/recall` scalar: selection recall@topk; `/recall_queries` scalar: queries counted in it

Optimizer golden `optim.h5`: groups `/adam` (torch.optim.Adam, weight_decay 0), `/adamw`
(torch.optim.AdamW, decoupled weight_decay 0.1) and `/adam_l2` (torch.optim.Adam with
weight_decay 0.01, the L2 penalty added to the gradient), float64, each with attributes `lr`,
`beta1`, `beta2`, `eps`, `weight_decay` (float64), `steps` (int64) and datasets
`param_init` (numel,), `grads` (steps, numel) the gradient fed at step t, `params`
(steps, numel) the parameter after step t.
"""

import argparse
import math
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_modules as tm  # noqa: E402  (the tools' one definition of the modules)

SEED = 1234
PARAM_NOISE = 0.25
LAYER_SHAPES = {  # tag: (b, h, w, n, d, expand)
    "a": (2, 2, 3, 4, 6, 1.0),
    "b": (1, 3, 2, 5, 4, 0.5),
}
REDUCTION = 2
PAIR_SHAPE = dict(b=2, h=2, n=4, d=6, nq=5, expand=0.5)
PAIR_SEQ_UNEVEN = ("conv", "attention_pool", "grouped_mlp", "mlp")  # seq 14, else 12

# The parameter names and shapes of each layer (nn/), written out independently of the modules:
# a module whose state_dict differs from these fails before anything is written.
def spec_params(kind, h, n, d, expand, r):
  i = n * d
  hid = int(math.floor(i * expand))
  if kind == "conv":
    return {"conv.weight": (h * d, d, n), "conv.bias": (h * d,)}
  if kind == "efficient_conv":
    return {"channel_reduction.weight": (h * d // r, d, 1), "channel_reduction.bias": (h * d // r,),
            "grouped_conv.weight": (h * d // r, d // r, n), "grouped_conv.bias": (h * d // r,),
            "channel_expansion.weight": (h * d, d // r, 1), "channel_expansion.bias": (h * d,)}
  if kind in ("attention_pool", "scaled_attention_pool"):
    return {"to_attn_logits.weight": (d, d)}
  if kind == "grouped_mlp":
    return {"net.0.weight": (h, i, hid), "net.0.bias": (h, hid), "net.2.weight": (h, hid, d),
            "net.2.bias": (h, d)}
  if kind == "enhanced_mlp":
    return {"net.0.weight": (h, i, hid), "net.0.bias": (h, hid), "net.3.weight": (h, hid, d),
            "net.3.bias": (h, d), "residual_scale": (1,)}
  if kind == "mlp":
    return {"net.0.weight": (hid, i), "net.0.bias": (hid,), "net.2.weight": (d, hid),
            "net.2.bias": (d,)}
  raise ValueError(kind)


# ---- independent numpy references: the layers' formulas, index by index ---------------------
def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def reference_forward(kind, p, x):
  """x (b,h,w,n,d) numpy, p {key: numpy} -> (b,h,w,d), from the formulas, no torch."""
  b, h, w, n, d = x.shape
  if kind == "conv":
    # group hh owns output channels hh*d..hh*d+d-1 and reads input channels hh*d+i at w*n+k
    wt = p["conv.weight"].reshape(h, d, d, n)  # (group, out, in, k)
    return np.einsum("goik,bgwki->bgwo", wt, x) + p["conv.bias"].reshape(h, 1, d)
  if kind == "efficient_conv":
    dr = d // REDUCTION
    w1 = p["channel_reduction.weight"].reshape(h, dr, d)
    z1 = np.einsum("goi,bgwki->bgwko", w1, x) + p["channel_reduction.bias"].reshape(h, 1, 1, dr)
    w2 = p["grouped_conv.weight"].reshape(h, dr, dr, n)
    z2 = np.einsum("goik,bgwki->bgwo", w2, z1) + p["grouped_conv.bias"].reshape(h, 1, dr)
    w3 = p["channel_expansion.weight"].reshape(h, d, dr)
    return np.einsum("goi,bgwi->bgwo", w3, z2) + p["channel_expansion.bias"].reshape(h, 1, d)
  if kind in ("attention_pool", "scaled_attention_pool"):
    logits = np.einsum("bhwnj,ij->bhwni", x, p["to_attn_logits.weight"])
    if kind == "scaled_attention_pool":
      logits = logits / math.sqrt(d)
    return (x * _softmax(logits, axis=3)).sum(axis=3)
  xf = x.reshape(b, h, w, n * d)
  if kind == "grouped_mlp":
    z = np.maximum(np.einsum("bhwi,hio->bhwo", xf, p["net.0.weight"]) + p["net.0.bias"][:, None], 0)
    return np.einsum("bhwi,hio->bhwo", z, p["net.2.weight"]) + p["net.2.bias"][:, None]
  if kind == "enhanced_mlp":
    z = _gelu(np.einsum("bhwi,hio->bhwo", xf, p["net.0.weight"]) + p["net.0.bias"][:, None])
    z = np.einsum("bhwi,hio->bhwo", z, p["net.3.weight"]) + p["net.3.bias"][:, None]
    return x.mean(axis=3) + p["residual_scale"][0] * z
  if kind == "mlp":
    z = np.maximum(xf @ p["net.0.weight"].T + p["net.0.bias"], 0)
    return z @ p["net.2.weight"].T + p["net.2.bias"]
  raise ValueError(kind)


def reference_pair(kind, p, k, v, q, n):
  """The distill task's (k_compressed, v_compressed, target, prediction, loss) in numpy."""
  def attend(q, k, v):
    return _softmax(np.einsum("bhqd,bhsd->bhqs", q, k) / math.sqrt(q.shape[-1]), 3) @ v

  b, h, seq, d = k.shape
  w = seq // n
  sub = lambda prefix: {key[len(prefix):]: val for key, val in p.items() if key.startswith(prefix)}
  kb = k[:, :, :w * n].reshape(b, h, w, n, d) + p["k_intrablock_positions"][:, None]
  vb = v[:, :, :w * n].reshape(b, h, w, n, d) + p["v_intrablock_positions"][:, None]
  kc = reference_forward(kind, sub("k_compress."), kb)
  vc = reference_forward(kind, sub("v_compress."), vb)
  target = attend(q, k, v)
  pred = attend(q, kc, vc)
  return kc, vc, target, pred, ((pred - target) ** 2).mean()


def reference_adam(p0, grads, lr, b1, b2, eps, wd, decoupled):
  """Adam (Kingma & Ba, bias-corrected) / AdamW (Loshchilov & Hutter), written out."""
  p, m, s, out = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), []
  for t, g in enumerate(grads, start=1):
    if decoupled:
      p = p * (1 - lr * wd)
    else:
      g = g + wd * p
    m = b1 * m + (1 - b1) * g
    s = b2 * s + (1 - b2) * g * g
    m_hat, s_hat = m / (1 - b1 ** t), s / (1 - b2 ** t)
    p = p - lr * m_hat / (np.sqrt(s_hat) + eps)
    out.append(p.copy())
  return np.stack(out)


# ---- generation ------------------------------------------------------------------------------
def perturb(module, gen):
  with torch.no_grad():
    for p in module.parameters():
      p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * PARAM_NOISE)


def numpy_params(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


class Checks:
  def __init__(self):
    self.failed = []

  def close(self, what, got, ref, tol=1e-10):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
      err = float("inf")
    else:
      den = np.linalg.norm(ref)
      err = np.linalg.norm(got - ref) / (den if den > 0 else 1.0)
    ok = err <= tol
    print(f"  {'ok  ' if ok else 'FAIL'} {what}: rel err {err:.2e}")
    if not ok:
      self.failed.append(what)

  def true(self, what, cond):
    print(f"  {'ok  ' if cond else 'FAIL'} {what}")
    if not cond:
      self.failed.append(what)


def check_keys(checks, name, module, want):
  got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
  checks.true(f"{name}: state_dict keys and shapes are the expected {sorted(want)}", got == want)


def layer_golden(kind, tag, gen, checks):
  b, h, w, n, d, expand = LAYER_SHAPES[tag]
  module = tm.make_compressor(kind, h, d, n, expand, 0.0, REDUCTION).double()
  check_keys(checks, f"{kind}_{tag}", module, spec_params(kind, h, n, d, expand, REDUCTION))
  perturb(module, gen)
  x = torch.randn(b, h, w, n, d, generator=gen, dtype=torch.float64, requires_grad=True)
  grad_out = torch.randn(b, h, w, d, generator=gen, dtype=torch.float64)
  y = module(x)
  names = [k for k, _ in module.named_parameters()]
  grads = torch.autograd.grad((y * grad_out).sum(), [x] + [p for _, p in module.named_parameters()])

  checks.close(f"{kind}_{tag}: forward vs numpy formula", y.detach().numpy(),
               reference_forward(kind, numpy_params(module), x.detach().numpy()))
  checks.true(f"{kind}_{tag}: gradcheck (float64, finite differences, input and params)",
              torch.autograd.gradcheck(lambda xx, *ps: _functional(module, names, xx, ps),
                                       [x.detach().requires_grad_()] +
                                       [p.detach().clone().requires_grad_()
                                        for p in module.parameters()], eps=1e-6, atol=1e-7))
  return {
      "attrs": dict(kind=kind, b=b, h=h, w=w, n=n, d=d, reduction=REDUCTION, expand=expand,
                    dropout=0.0),
      "data": {"input": x, "output": y, "grad_output": grad_out, "grads/input": grads[0],
               **{f"params/{k}": p for k, p in module.named_parameters()},
               **{f"grads/params/{k}": g for k, g in zip(names, grads[1:])}},
  }


def _functional_call(module, params, args):
  """torch.func.functional_call (torch 2.x), or torch.nn.utils.stateless's (torch 1.13)."""
  try:
    from torch.func import functional_call
  except ImportError:
    from torch.nn.utils.stateless import functional_call
  return functional_call(module, params, args)


def _functional(module, names, x, params):
  """module(x) with `params` in place of its parameters, so gradcheck covers them too."""
  return _functional_call(module, dict(zip(names, params)), (x,))


def pair_golden(kind, gen, checks):
  s = PAIR_SHAPE
  b, h, n, d, nq, expand = s["b"], s["h"], s["n"], s["d"], s["nq"], s["expand"]
  seq = 14 if kind in PAIR_SEQ_UNEVEN else 12
  w = seq // n
  pair = tm.CompressorPair(kind, h, d, n, expand, 0.0, REDUCTION).double()
  want = {f"{side}_compress.{k}": v for side in ("k", "v")
          for k, v in spec_params(kind, h, n, d, expand, REDUCTION).items()}
  want.update(k_intrablock_positions=(h, n, d), v_intrablock_positions=(h, n, d))
  check_keys(checks, f"pair_{kind}", pair, want)
  perturb(pair, gen)  # the positions, zero at init, become N(0, 0.25^2)
  k = torch.randn(b, h, seq, d, generator=gen, dtype=torch.float64, requires_grad=True)
  v = torch.randn(b, h, seq, d, generator=gen, dtype=torch.float64, requires_grad=True)
  q = torch.randn(b, h, nq, d, generator=gen, dtype=torch.float64)
  loss, pred, target, kc, vc = pair.distill(q, k, v)
  names = [key for key, _ in pair.named_parameters()]
  grads = torch.autograd.grad(loss, [k, v] + [p for _, p in pair.named_parameters()])

  ref = reference_pair(kind, numpy_params(pair), k.detach().numpy(), v.detach().numpy(),
                       q.numpy(), n)
  for what, got, r in zip(("k_compressed", "v_compressed", "target", "prediction", "loss"),
                          (kc, vc, target, pred, loss), ref):
    checks.close(f"pair_{kind}: {what} vs numpy formula", got.detach().numpy(), r)
  if kind in ("conv", "enhanced_mlp"):  # a finite-difference check of the whole pair, twice
    checks.true(f"pair_{kind}: gradcheck of the distill loss (k, v, params; target fixed)",
                torch.autograd.gradcheck(
                    lambda kk, vv, *ps: _pair_loss(pair, names, q, target, kk, vv, ps),
                    [k.detach().requires_grad_(), v.detach().requires_grad_()] +
                    [p.detach().clone().requires_grad_() for p in pair.parameters()],
                    eps=1e-6, atol=1e-8))
  if seq % n:
    checks.true(f"pair_{kind}: the {seq % n} trailing tokens get zero gradient",
                bool((grads[0][:, :, w * n:] == 0).all() and (grads[1][:, :, w * n:] == 0).all()))
  return {
      "attrs": dict(kind=kind, b=b, h=h, seq=seq, n=n, d=d, nq=nq, w=w, reduction=REDUCTION,
                    expand=expand, dropout=0.0),
      "data": {"k": k, "v": v, "q": q, "k_compressed": kc, "v_compressed": vc, "target": target,
               "prediction": pred, "loss": loss, "grads/k": grads[0], "grads/v": grads[1],
               **{f"params/{key}": p for key, p in pair.named_parameters()},
               **{f"grads/params/{key}": g for key, g in zip(names, grads[2:])}},
  }


NSA_SHAPE = dict(b=2, h=2, n=16, stride=8, d=6, nq=6, g=2, seq=43, topk=2, expand=0.5)
NSA_KINDS = ("conv", "mlp", "attention_pool")


def nsa_golden(kind, gen, checks):
  s = NSA_SHAPE
  b, h, n, st, d, nq, g, seq = (s[x] for x in ("b", "h", "n", "stride", "d", "nq", "g", "seq"))
  w = (seq - n) // st + 1
  pair = tm.CompressorPair(kind, h, d, n, s["expand"], 0.0, REDUCTION, stride=st, query_heads=g,
                           causal=True).double()
  perturb(pair, gen)
  k = torch.randn(b, h, seq, d, generator=gen, dtype=torch.float64, requires_grad=True)
  v = torch.randn(b, h, seq, d, generator=gen, dtype=torch.float64, requires_grad=True)
  q = torch.randn(b, h * g, nq, d, generator=gen, dtype=torch.float64)
  # Positions before the first block's last token (n - 1 = 15) see no block: left out.
  q_pos = torch.tensor([[3, 15, 16, 30, 42, 23], [24, 0, 38, 31, 17, 14]])
  loss, pred, target, kc, vc = pair.distill(q, k, v, q_pos)
  names = [key for key, _ in pair.named_parameters()]
  grads = torch.autograd.grad(loss, [k, v] + [p for _, p in pair.named_parameters()])
  recall, counted = tm.selection_recall(q, k, kc, q_pos, n, st, s["topk"], h)
  checks.true(f"nsa_{kind}: queries without a block get zero prediction",
              bool((pred.reshape(b, h * g, nq, d)[0, :, 0] == 0).all()))
  checks.true(f"nsa_{kind}: 9 of 12 queries count in the recall", counted == 9)
  if kind == "conv":
    checks.true(f"nsa_{kind}: gradcheck of the causal GQA distill loss over overlapping blocks",
                torch.autograd.gradcheck(
                    lambda kk, vv, *ps: _pair_loss(pair, names, q, target, kk, vv, ps, q_pos),
                    [k.detach().requires_grad_(), v.detach().requires_grad_()] +
                    [p.detach().clone().requires_grad_() for p in pair.parameters()],
                    eps=1e-6, atol=1e-8))
  return {
      "attrs": dict(kind=kind, b=b, h=h, seq=seq, n=n, d=d, nq=nq, w=w, stride=st, query_heads=g,
                    causal=True, topk=s["topk"], reduction=REDUCTION, expand=s["expand"],
                    dropout=0.0),
      "data": {"k": k, "v": v, "q": q, "q_pos": q_pos.double(), "k_compressed": kc,
               "v_compressed": vc, "target": target, "prediction": pred, "loss": loss,
               "recall": torch.tensor(recall, dtype=torch.float64),
               "recall_queries": torch.tensor(float(counted), dtype=torch.float64),
               "grads/k": grads[0], "grads/v": grads[1],
               **{f"params/{key}": p for key, p in pair.named_parameters()},
               **{f"grads/params/{key}": g for key, g in zip(names, grads[2:])}},
  }


def _pair_loss(pair, names, q, target, k, v, params, q_pos=None):
  """The distill loss with `params` substituted and the target held at its value: what the
  autograd gradient is (the target is under no_grad), so finite differences over k and v must
  not move it. q and target (b, h*G, nq, d); with q_pos the pair's causal loss."""
  qg = tm.group_queries(q, pair.heads)
  target = tm.group_queries(target, pair.heads)
  blk_vis = pair.visibility(q_pos, k.shape[2])[1]

  class _Loss(torch.nn.Module):
    def __init__(self, inner):
      super().__init__()
      self.inner = inner

    def forward(self, k, v):
      kc, vc = self.inner.compress(k, v)
      return tm.CompressorPair.loss_of(tm.full_attention(qg, kc, vc, blk_vis), target, blk_vis)

  return _functional_call(_Loss(pair), {f"inner.{key}": p for key, p in zip(names, params)},
                          (k, v))


def optim_golden(gen, checks):
  numel, steps = 10, 6
  configs = {  # group: (class, lr, beta1, beta2, eps, weight_decay, decoupled)
      "adam": (torch.optim.Adam, 1e-2, 0.9, 0.999, 1e-8, 0.0, False),
      "adamw": (torch.optim.AdamW, 1e-2, 0.9, 0.95, 1e-8, 0.1, True),
      "adam_l2": (torch.optim.Adam, 1e-2, 0.8, 0.99, 1e-6, 0.01, False),
  }
  out = {}
  for group, (cls, lr, b1, b2, eps, wd, decoupled) in configs.items():
    p0 = torch.randn(numel, generator=gen, dtype=torch.float64)
    # gradients of different scales per element and step, a few of them tiny (eps matters)
    grads = torch.randn(steps, numel, generator=gen, dtype=torch.float64) * \
        torch.logspace(-6, 1, numel, dtype=torch.float64)
    param = torch.nn.Parameter(p0.clone())
    opt = cls([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    params = []
    for t in range(steps):
      param.grad = grads[t].clone()
      opt.step()
      params.append(param.detach().clone())
    params = torch.stack(params)
    checks.close(f"optim {group}: torch vs hand-written Adam", params.numpy(),
                 reference_adam(p0.numpy(), grads.numpy(), lr, b1, b2, eps, wd, decoupled),
                 tol=1e-13)
    out[group] = {
        "attrs": dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, steps=steps),
        "data": {"param_init": p0, "grads": grads, "params": params},
    }
  return out


def _attr(value):
  if isinstance(value, str):
    return value
  if isinstance(value, (bool, int, np.integer)):
    return np.int64(value)
  return np.float64(value)


def write_file(path, groups):
  """groups: {group path ('' = root): {"attrs": ..., "data": {relative path: tensor}}}."""
  tmp = path + ".tmp"
  with h5py.File(tmp, "w") as f:
    for group, content in groups.items():
      g = f.require_group(group) if group else f
      for key, value in content["attrs"].items():
        g.attrs[key] = _attr(value)
      for key, t in content["data"].items():
        arr = t.detach().cpu().numpy().astype(np.float64) if torch.is_tensor(t) else t
        g.create_dataset(key, data=arr)  # dots in names stay (h5py splits only on '/')
  os.replace(tmp, path)


def main(argv=None):
  ap = argparse.ArgumentParser(
      description=__doc__,
      epilog="Regenerate: PYTHON=/usr/bin/python3; $PYTHON tools/make_golden.py --out tests/golden",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default="tests/golden", help="output folder (default tests/golden)")
  args = ap.parse_args(argv)

  torch.manual_seed(SEED)  # module inits draw from the global generator
  gen = torch.Generator().manual_seed(SEED)  # noise, inputs, gradients
  checks = Checks()
  files = {}
  print("layer goldens")
  for kind in tm.KINDS:
    for tag in LAYER_SHAPES:
      files[f"{kind}_{tag}.h5"] = {"": layer_golden(kind, tag, gen, checks)}
  print("pair goldens (distill task)")
  for kind in tm.KINDS:
    files[f"pair_{kind}.h5"] = {"": pair_golden(kind, gen, checks)}
  print("optimizer golden")
  files["optim.h5"] = optim_golden(gen, checks)
  print("NSA goldens (stride, GQA, causal, selection recall)")
  for kind in NSA_KINDS:
    files[f"nsa_{kind}.h5"] = {"": nsa_golden(kind, gen, checks)}

  if checks.failed:
    print(f"make_golden: {len(checks.failed)} check(s) failed, nothing written: "
          f"{'; '.join(checks.failed)}", file=sys.stderr)
    return 1
  os.makedirs(args.out, exist_ok=True)
  total = 0
  for name, groups in files.items():
    path = os.path.join(args.out, name)
    write_file(path, groups)
    total += os.path.getsize(path)
  print(f"wrote {len(files)} files to {args.out} ({total / 1024:.0f} KiB in all)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
