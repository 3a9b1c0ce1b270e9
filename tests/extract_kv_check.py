#!/usr/bin/env python3
"""Test of tools/extract_kv.py on a tiny randomly initialized Llama-style model (no download).

    $PYTHON tests/extract_kv_check.py WORKDIR

Builds a 2-layer Llama (4 query heads sharing 2 KV heads, head size 16) and a word-level
tokenizer from a config into WORKDIR, writes a text, runs extract_kv.py on layer 1 with
--q-heads all and first, and checks the files: shapes, dtypes, attributes, sorted distinct q_pos
in [0, seq), and -- independently of how the tool captures them -- that causal attention
computed from the file's q (at q_pos), k and v reproduces the layer's attention output, read
from the input of its o_proj in a separate full forward pass. Leaves WORKDIR/kv_first.h5 (one
query head per KV head) and WORKDIR/kv_all.h5 (every query head) for training. Exit 0 when all
holds; exit 3 (with the reason) when transformers cannot be imported.
"""

import os
import subprocess
import sys

import h5py
import numpy as np
import torch

try:
  import transformers
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
except ImportError as e:
  print(f"cannot import {e.name} with {sys.executable}")
  sys.exit(3)

TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "extract_kv.py")
SEQ, NQ, LAYER, HEADS, KV_HEADS, HEAD_DIM = 32, 8, 1, 4, 2, 16


def fail(msg):
  sys.exit(f"extract_kv_check.py: {msg}")


def build_model(folder, text):
  tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>"]))
  # PreTrainedTokenizerFast; newer releases also name it TokenizersBackend.
  fast_class = getattr(transformers, "PreTrainedTokenizerFast", None) or getattr(
      transformers, "TokenizersBackend")
  fast = fast_class(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>")
  fast.save_pretrained(folder)
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=tok.get_vocab_size(), hidden_size=HEADS * HEAD_DIM, intermediate_size=128,
      num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
      max_position_embeddings=256, bos_token_id=1)
  transformers.LlamaForCausalLM(config).save_pretrained(folder)


def attention_output(folder, ids):
  """The input of layer LAYER's o_proj, (b, s, HEADS * HEAD_DIM), in a plain forward pass."""
  model = transformers.AutoModelForCausalLM.from_pretrained(folder).float().eval()
  seen = {}
  o_proj = model.model.layers[LAYER].self_attn.o_proj
  hook = o_proj.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
  with torch.no_grad():
    model(input_ids=torch.from_numpy(ids), use_cache=False)
  hook.remove()
  return seen["x"].double().numpy()


def check_file(path, q_heads, windows, reference):
  with h5py.File(path, "r") as f:
    n = windows.shape[0]
    group = HEADS // KV_HEADS
    want_q = HEADS if q_heads == "all" else KV_HEADS
    for name, shape, dtype in (("k", (n, KV_HEADS, SEQ, HEAD_DIM), np.float32),
                               ("v", (n, KV_HEADS, SEQ, HEAD_DIM), np.float32),
                               ("q", (n, want_q, NQ, HEAD_DIM), np.float32),
                               ("q_pos", (n, NQ), np.int64)):
      if f[name].shape != shape or f[name].dtype != dtype:
        fail(f"{path}: {name} is {f[name].shape} {f[name].dtype}, expected {shape} {dtype}")
    if f.attrs["rope"] != "post-rope" or int(f.attrs["query_heads"]) != group:
      fail(f"{path}: attributes {dict(f.attrs)}")
    k, v, q, pos = f["k"][()], f["v"][()], f["q"][()], f["q_pos"][()]
  for i in range(n):
    if not (np.all(np.diff(pos[i]) > 0) and pos[i][0] >= 0 and pos[i][-1] < SEQ):
      fail(f"{path}: q_pos[{i}] = {pos[i]} is not sorted distinct positions in [0, {SEQ})")
    for j in range(want_q):
      head = j if q_heads == "all" else j * group  # the model's query head
      kv = head // group
      scores = q[i, j].astype(np.float64) @ k[i, kv].T.astype(np.float64) / np.sqrt(HEAD_DIM)
      scores[np.arange(SEQ)[None, :] > pos[i][:, None]] = -np.inf
      p = np.exp(scores - scores.max(axis=1, keepdims=True))
      out = (p / p.sum(axis=1, keepdims=True)) @ v[i, kv]
      want = reference[i, pos[i], head * HEAD_DIM:(head + 1) * HEAD_DIM]
      err = np.abs(out - want).max() / max(np.abs(want).max(), 1e-30)
      if not err < 1e-4:
        fail(f"{path}: sequence {i} query head {head}: attention from the file differs from the "
             f"model's by {err:.3g} (relative)")


def main():
  work = sys.argv[1]
  words = [f"w{(i * 7919) % 97}" for i in range(600)]
  text = " ".join(words)
  text_path = os.path.join(work, "text.txt")
  with open(text_path, "w") as fh:
    fh.write(text)
  folder = os.path.join(work, "tiny-llama")
  build_model(folder, text)
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  n = 5
  bos = tokenizer.bos_token_id
  windows = np.array([[bos] + ids[w * (SEQ - 1):(w + 1) * (SEQ - 1)] for w in range(n)])
  reference = attention_output(folder, windows)
  for q_heads in ("all", "first"):
    out = os.path.join(work, f"kv_{q_heads}.h5")
    cmd = [sys.executable, TOOL, "--model", folder, "--text", text_path, "--layer", str(LAYER),
           "--seq", str(SEQ), "--count", str(n), "--queries", str(NQ), "--q-heads", q_heads,
           "--batch", "2", "--device", "cpu", "--out", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
      fail(f"extract_kv.py --q-heads {q_heads} failed: {r.stderr.strip()}")
    check_file(out, q_heads, windows, reference)
  # Bad input: a layer the model lacks is a one-line error naming it.
  r = subprocess.run([sys.executable, TOOL, "--model", folder, "--text", text_path, "--layer",
                      "7", "--seq", str(SEQ), "--out", os.path.join(work, "bad.h5")],
                     capture_output=True, text=True)
  last = (r.stderr.strip().splitlines() or [""])[-1]  # transformers may log warnings before it
  if r.returncode != 1 or not last.startswith("extract_kv.py: --layer 7"):
    fail(f"--layer 7: exit {r.returncode}, stderr {r.stderr!r}")
  print("ok")


if __name__ == "__main__":
  main()
