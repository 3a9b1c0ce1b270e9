#!/usr/bin/env python3
"""Extracts one attention layer's keys, values and queries from a Hugging Face causal LM into a
kvcompress KV file, so compressors train on a real model's KV (`kvcompress train --data kv.h5`).

    $PYTHON tools/extract_kv.py --model NAME_OR_DIR --text FILE --layer L --seq N --out kv.h5
        [--count C] [--queries NQ (64)] [--q-heads all|first] [--batch B] [--device auto|cpu|cuda]
        [--dtype float32|bfloat16|float16] [--seed S] [--overwrite]

Needs torch, h5py, numpy and transformers (take the interpreter from PYTHON).

- The text is tokenized once and cut into windows of N tokens (the tokenizer's BOS token, when it
  has one, starts every window); --count takes the first C windows (default: all full ones).
- The model runs each window up to layer L (0-based) and stops there. What is captured is what
  that layer's attention computes with: the keys and queries after the rotary position
  embedding (RoPE) and any q/k norm, and the values, per KV head, before GQA repeats them. The
  file's root attribute `rope` says "post-rope".
- Written (float32, one chunk per sequence, through a temp file renamed into place):
    k, v   (count, h, N, d)        h = the layer's KV heads, d = its head size
    q      (count, h*G, nq, d)     --q-heads all: every query head (G = query heads per KV head,
                                   query head j uses KV head j // G, as the model groups them)
           (count, h, nq, d)       --q-heads first: the first query head of each group
    q_pos  (count, nq) int64       the token positions of the queries, sorted; drawn per
                                   sequence without replacement from [0, N) with --seed
  and root attributes model, layer, rope, query_heads (G), q_heads, seed, text.
- Models: Llama-style decoders whose attention module calls the module-level
  apply_rotary_pos_emb(q, k, cos, sin) (Llama, Mistral, Qwen2/3, Gemma and most others in
  transformers); the tool says so and stops for others.

Exit codes: 0 ok, 1 bad input or an unsupported model (a one-line message), 2 usage.
"""

import argparse
import os
import sys

try:
  import h5py
  import numpy as np
  import torch
except ImportError as missing:
  sys.exit(f"extract_kv.py: {sys.executable} cannot import {missing.name}; run it with an "
           "interpreter that has numpy, h5py, torch and transformers (PYTHON=...)")


class ExtractError(Exception):
  pass


class _StopAfterLayer(Exception):
  """Raised once the chosen layer's attention ran: the later layers are not needed."""


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog="extract_kv.py", description="Capture one layer's post-RoPE K, V and Q of a Hugging "
      "Face causal LM into a kvcompress KV file.")
  p.add_argument("--model", required=True, help="model name or local folder (from_pretrained)")
  p.add_argument("--text", required=True, help="UTF-8 text file to run through the model")
  p.add_argument("--layer", type=int, required=True, help="decoder layer index, 0-based")
  p.add_argument("--seq", type=int, required=True, help="tokens per sequence N")
  p.add_argument("--out", required=True, help="output KV file (.h5)")
  p.add_argument("--count", type=int, default=0, help="sequences to write (default: all)")
  p.add_argument("--queries", type=int, default=None,
                 help="queries per sequence nq (default: 64, at most --seq)")
  p.add_argument("--q-heads", choices=("all", "first"), default="all",
                 help="all: every query head (h*G); first: one per KV head (default all)")
  p.add_argument("--batch", type=int, default=1, help="sequences per forward pass (default 1)")
  p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                 help="the model's compute dtype (default float32); the file is float32")
  p.add_argument("--seed", type=int, default=0, help="seed of the query positions (default 0)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  a = p.parse_args(argv)
  if a.queries is None:
    a.queries = min(64, a.seq)
  for name in ("seq", "queries", "batch"):
    if getattr(a, name) < 1:
      p.error(f"--{name.replace('_', '-')} {getattr(a, name)} is not positive")
  if a.layer < 0:
    p.error(f"--layer {a.layer} is negative")
  if a.count < 0:
    p.error(f"--count {a.count} is negative")
  if a.queries > a.seq:
    p.error(f"--queries {a.queries} is more than --seq {a.seq} positions")
  return a


def token_windows(tokenizer, text, seq, count):
  """(windows, seq) int64: the text's tokens cut into windows, BOS first when there is one."""
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  bos = tokenizer.bos_token_id
  body = seq - 1 if bos is not None else seq
  if body < 1:
    raise ExtractError(f"--seq {seq} leaves no room for text after the BOS token")
  n = len(ids) // body
  if n < 1:
    raise ExtractError(f"the text has {len(ids)} tokens, fewer than one window of {body}")
  if count > n:
    raise ExtractError(f"--count {count} is more than the {n} windows of {seq} tokens the text "
                       f"holds ({len(ids)} tokens)")
  n = count or n
  rows = np.asarray(ids[:n * body], dtype=np.int64).reshape(n, body)
  if bos is not None:
    rows = np.concatenate([np.full((n, 1), bos, dtype=np.int64), rows], axis=1)
  return rows


def decoder_layers(model):
  base = getattr(model, getattr(model, "base_model_prefix", "model"), None) or model
  layers = getattr(base, "layers", None)
  if layers is None:
    raise ExtractError(f"{type(model).__name__}: no decoder layer list (model.layers) found; "
                       "extract_kv.py supports Llama-style decoders")
  return layers


class LayerCapture:
  """Captures the chosen layer's post-RoPE q, k (from the model's own apply_rotary_pos_emb call)
  and v (its v_proj output) during one forward pass, then stops the pass."""

  def __init__(self, model, layer):
    layers = decoder_layers(model)
    if layer >= len(layers):
      raise ExtractError(f"--layer {layer} is out of range: the model has {len(layers)} layers")
    self.attn = getattr(layers[layer], "self_attn", None)
    if self.attn is None or not hasattr(self.attn, "v_proj"):
      raise ExtractError(f"layer {layer} has no self_attn with a v_proj; extract_kv.py supports "
                         "Llama-style decoders")
    self.module = sys.modules[type(self.attn).__module__]
    self.original = getattr(self.module, "apply_rotary_pos_emb", None)
    if self.original is None:
      raise ExtractError(f"{type(self.attn).__name__} ({self.module.__name__}) does not use "
                         "apply_rotary_pos_emb; extract_kv.py supports Llama-style decoders")
    self.active, self.q, self.k, self.v = False, None, None, None

  def __enter__(self):
    def rope(q, k, *args, **kwargs):
      q_embed, k_embed = self.original(q, k, *args, **kwargs)
      if self.active:
        self.q, self.k = q_embed.detach(), k_embed.detach()
      return q_embed, k_embed

    def before(_module, _args):
      self.active = True

    def after(_module, _args, _output):
      self.active = False
      raise _StopAfterLayer()

    def value(_module, _args, output):
      if self.active:
        self.v = output.detach()

    self.module.apply_rotary_pos_emb = rope
    self.hooks = [self.attn.register_forward_pre_hook(before),
                  self.attn.register_forward_hook(after),
                  self.attn.v_proj.register_forward_hook(value)]
    return self

  def __exit__(self, *exc):
    self.module.apply_rotary_pos_emb = self.original
    for h in self.hooks:
      h.remove()
    return False

  def run(self, model, input_ids):
    """(q (b, H, s, d), k (b, h, s, d), v (b, h, s, d)) as float32 on the CPU."""
    self.q = self.k = self.v = None
    try:
      with torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    except _StopAfterLayer:
      pass
    if self.q is None or self.v is None:
      raise ExtractError("the chosen layer's attention did not call apply_rotary_pos_emb and "
                         "v_proj as Llama-style attention does; this model is not supported")
    b, s, _ = self.v.shape
    h, d = self.k.shape[1], self.k.shape[-1]
    if self.k.shape != (b, h, s, d) or self.q.shape[0] != b or self.q.shape[2] != s:
      raise ExtractError(f"unexpected layouts: q {tuple(self.q.shape)}, k {tuple(self.k.shape)}, "
                         f"v_proj output {tuple(self.v.shape)} (expected (b, heads, {s}, d))")
    v = self.v.reshape(b, s, h, d).transpose(1, 2)
    return self.q.float().cpu(), self.k.float().cpu(), v.float().cpu()


def query_positions(seed, index, seq, nq):
  rng = np.random.default_rng([seed, index])
  return np.sort(rng.choice(seq, size=nq, replace=False)).astype(np.int64)


def write_kv(args, model_name, windows, model, capture, device):
  n = windows.shape[0]
  tmp = os.path.join(os.path.dirname(os.path.abspath(args.out)),
                     f".{os.path.basename(args.out)}.tmp-{os.getpid()}")
  try:
    with h5py.File(tmp, "w") as f:
      for start in range(0, n, args.batch):
        ids = torch.from_numpy(windows[start:start + args.batch]).to(device)
        q, k, v = capture.run(model, ids)
        b, h, s, d = k.shape
        heads_q = q.shape[1]
        if heads_q % h:
          raise ExtractError(f"{heads_q} query heads are not a multiple of {h} KV heads")
        group = heads_q // h
        if start == 0:
          nq_heads = heads_q if args.q_heads == "all" else h
          for name, shape in (("k", (n, h, s, d)), ("v", (n, h, s, d)),
                              ("q", (n, nq_heads, args.queries, d))):
            f.create_dataset(name, shape, dtype="<f4", chunks=(1,) + shape[1:])
          f.create_dataset("q_pos", (n, args.queries), dtype="<i8", chunks=(1, args.queries))
          for key, val in (("model", model_name), ("layer", args.layer), ("rope", "post-rope"),
                           ("query_heads", group), ("q_heads", args.q_heads),
                           ("seed", args.seed), ("text", os.path.basename(args.text))):
            f.attrs[key] = val
        if args.q_heads == "first":
          q = q[:, ::group]
        for i in range(b):
          pos = query_positions(args.seed, start + i, s, args.queries)
          f["k"][start + i] = k[i].numpy()
          f["v"][start + i] = v[i].numpy()
          f["q"][start + i] = q[i][:, pos].numpy()
          f["q_pos"][start + i] = pos
        print(f"extract_kv.py: {min(start + b, n)}/{n} sequences", file=sys.stderr, flush=True)
    os.replace(tmp, args.out)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def main(argv):
  args = parse_args(argv)
  try:
    import transformers
  except ImportError:
    raise ExtractError(f"{sys.executable} cannot import transformers; run with an interpreter "
                       "that has it (PYTHON=...)")
  if os.path.exists(args.out) and not args.overwrite:
    raise ExtractError(f"{args.out} exists; pass --overwrite to replace it")
  try:
    with open(args.text, encoding="utf-8") as fh:
      text = fh.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ExtractError(f"cannot read --text {args.text}: {e}")
  device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
      else args.device
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model)
  except (OSError, ValueError) as e:
    raise ExtractError(f"cannot load --model {args.model}: {' '.join(str(e).split())}")
  # The dtype after loading: the from_pretrained keyword for it changed across versions.
  model.to(device=device, dtype=getattr(torch, args.dtype)).eval()
  windows = token_windows(tokenizer, text, args.seq, args.count)
  with LayerCapture(model, args.layer) as capture:
    write_kv(args, args.model, windows, model, capture, device)
  print(f"extract_kv.py: wrote {windows.shape[0]} sequences of {args.seq} tokens from layer "
        f"{args.layer} to {args.out}")


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except ExtractError as e:
    sys.exit(f"extract_kv.py: {e}")
