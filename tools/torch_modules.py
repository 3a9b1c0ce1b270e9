#!/usr/bin/env python3
"""The kvcompress compressors in PyTorch: the one definition the tools share.

Run the tools with PYTHON=/usr/bin/python3 on Debian (the first python3 on PATH there has no
torch). Every module's state_dict keys and shapes are exactly kvcompress's (nn/), so
a kvcompress checkpoint's /params load with `load_state_dict(strict=True)` and no renaming.

Shapes: a KV block tensor is (b, h, w, n, d) -> compressed (b, h, w, d); a KV sequence is
(b, h, seq, d).
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

KINDS = ("conv", "efficient_conv", "attention_pool", "scaled_attention_pool", "grouped_mlp",
         "enhanced_mlp", "mlp")


def _uniform_(t, bound):
  with torch.no_grad():
    t.uniform_(-bound, bound)
  return t


def _check_blocks(name, x, heads, block, dim_head, need_block):
  """Shape check shared by the layers; a clear error naming both shapes."""
  if x.dim() != 5:
    raise ValueError(f"{name}: input must be (b, h, w, n, d), got {tuple(x.shape)}")
  _, h, _, n, d = x.shape
  if h != heads or d != dim_head or (need_block and n != block):
    want = f"(b, {heads}, w, {block if need_block else 'n'}, {dim_head})"
    raise ValueError(f"{name}: input {tuple(x.shape)} does not match the layer's {want}")


def _blocks_to_channels(x):
  """(b, h, w, n, d) -> (b, h*d, w*n): einops 'b h w n d -> b (h d) (w n)'."""
  b, h, w, n, d = x.shape
  return x.permute(0, 1, 4, 2, 3).reshape(b, h * d, w * n)


def _channels_to_heads(y, h):
  """(b, h*d, w) -> (b, h, w, d): einops 'b (h d) w -> b h w d'."""
  b, hd, w = y.shape
  return y.reshape(b, h, hd // h, w).permute(0, 1, 3, 2)


class Mix(nn.Module):
  """Grouped linear, einops EinMix('b h w i -> b h w o', weight_shape='h i o', bias_shape='h o').

  y[b,h,w,o] = sum_i x[b,h,w,i] W[h,i,o] + B[h,o]; weight and bias U(1/sqrt(in)).
  """

  def __init__(self, heads, in_features, out_features):
    super().__init__()
    bound = 1.0 / math.sqrt(in_features)
    self.weight = nn.Parameter(_uniform_(torch.empty(heads, in_features, out_features), bound))
    self.bias = nn.Parameter(_uniform_(torch.empty(heads, out_features), bound))

  def forward(self, x):  # x: (b, h, w, in) -> (b, h, w, out)
    return torch.einsum("bhwi,hio->bhwo", x, self.weight) + self.bias[:, None, :]


class ConvLinearCompress(nn.Module):
  """`conv`: one grouped Conv1d, kernel = stride = n, one group per head."""

  def __init__(self, heads, dim_head, block):
    super().__init__()
    self.heads, self.dim_head, self.block = heads, dim_head, block
    c = heads * dim_head
    self.conv = nn.Conv1d(c, c, block, stride=block, groups=heads)
    bound = 1.0 / math.sqrt(dim_head * block)
    _uniform_(self.conv.weight, bound)
    _uniform_(self.conv.bias, bound)

  def forward(self, x):  # x: (b, h, w, n, d) -> (b, h, w, d)
    _check_blocks("conv", x, self.heads, self.block, self.dim_head, True)
    return _channels_to_heads(self.conv(_blocks_to_channels(x)), self.heads)


class EfficientConvLinearCompress(nn.Module):
  """`efficient_conv`: 1x1 reduction, block conv, 1x1 expansion, all grouped by head."""

  def __init__(self, heads, dim_head, block, reduction=2):
    super().__init__()
    if reduction < 1 or dim_head % reduction != 0:
      raise ValueError(f"efficient_conv: dim_head {dim_head} is not divisible by reduction "
                       f"{reduction}")
    self.heads, self.dim_head, self.block = heads, dim_head, block
    c, r = heads * dim_head, heads * dim_head // reduction
    self.channel_reduction = nn.Conv1d(c, r, 1, groups=heads)
    self.grouped_conv = nn.Conv1d(r, r, block, stride=block, groups=heads)
    self.channel_expansion = nn.Conv1d(r, c, 1, groups=heads)
    for conv in (self.channel_reduction, self.grouped_conv, self.channel_expansion):
      fan_in = conv.in_channels // conv.groups * conv.kernel_size[0]
      _uniform_(conv.weight, 1.0 / math.sqrt(fan_in))
      _uniform_(conv.bias, 1.0 / math.sqrt(fan_in))

  def forward(self, x):  # x: (b, h, w, n, d) -> (b, h, w, d)
    _check_blocks("efficient_conv", x, self.heads, self.block, self.dim_head, True)
    y = self.channel_expansion(self.grouped_conv(self.channel_reduction(_blocks_to_channels(x))))
    return _channels_to_heads(y, self.heads)


class AttentionPool(nn.Module):
  """`attention_pool` (and `scaled_attention_pool` with scaled=True): softmax over n, per channel."""

  def __init__(self, heads, dim_head, block, scaled=False):
    super().__init__()
    self.heads, self.dim_head, self.block = heads, dim_head, block
    self.scale = dim_head ** -0.5 if scaled else 1.0
    self.to_attn_logits = nn.Linear(dim_head, dim_head, bias=False)
    with torch.no_grad():
      self.to_attn_logits.weight.copy_(torch.eye(dim_head))

  def forward(self, x):  # x: (b, h, w, n, d) -> (b, h, w, d)
    name = "scaled_attention_pool" if self.scale != 1.0 else "attention_pool"
    _check_blocks(name, x, self.heads, self.block, self.dim_head, False)
    logits = self.to_attn_logits(x)
    if self.scale != 1.0:
      logits = logits * self.scale
    attn = logits.softmax(dim=-2)
    return (x * attn).sum(dim=-2)


def _hidden(i, expand):
  hidden = int(math.floor(i * expand))
  if hidden < 1:
    raise ValueError(f"mlp: hidden size floor({i} * {expand}) = {hidden} must be >= 1")
  return hidden


class GroupedMLP(nn.Module):
  """`grouped_mlp`: per head Mix(I -> H), ReLU, Mix(H -> d); keys net.0 / net.2."""

  def __init__(self, heads, dim_head, block, expand=1.0):
    super().__init__()
    self.heads, self.dim_head, self.block = heads, dim_head, block
    i = block * dim_head
    hidden = _hidden(i, expand)
    self.net = nn.Sequential(Mix(heads, i, hidden), nn.ReLU(), Mix(heads, hidden, dim_head))

  def forward(self, x):  # x: (b, h, w, n, d) -> (b, h, w, d)
    _check_blocks("grouped_mlp", x, self.heads, self.block, self.dim_head, True)
    return self.net(x.flatten(-2))


class EnhancedGroupedMLP(nn.Module):
  """`enhanced_mlp`: mean_n(x) + residual_scale * Dropout(Mix(Dropout(GELU(Mix(x)))))."""

  def __init__(self, heads, dim_head, block, expand=1.0, dropout=0.0):
    super().__init__()
    self.heads, self.dim_head, self.block = heads, dim_head, block
    i = block * dim_head
    hidden = _hidden(i, expand)
    self.net = nn.Sequential(Mix(heads, i, hidden), nn.GELU(), nn.Dropout(dropout),
                             Mix(heads, hidden, dim_head), nn.Dropout(dropout))
    self.residual_scale = nn.Parameter(torch.ones(1))

  def forward(self, x):  # x: (b, h, w, n, d) -> (b, h, w, d)
    _check_blocks("enhanced_mlp", x, self.heads, self.block, self.dim_head, True)
    return x.mean(dim=-2) + self.residual_scale * self.net(x.flatten(-2))


class CompressMLP(nn.Module):
  """`mlp`: NSA's default compress MLP, one Linear stack shared by all heads."""

  def __init__(self, heads, dim_head, block, expand=1.0):
    super().__init__()
    self.heads, self.dim_head, self.block = heads, dim_head, block
    i = block * dim_head
    hidden = _hidden(i, expand)
    self.net = nn.Sequential(nn.Linear(i, hidden), nn.ReLU(), nn.Linear(hidden, dim_head))
    for lin in (self.net[0], self.net[2]):
      _uniform_(lin.weight, 1.0 / math.sqrt(lin.in_features))
      _uniform_(lin.bias, 1.0 / math.sqrt(lin.in_features))

  def forward(self, x):  # x: (b, h, w, n, d) -> (b, h, w, d)
    _check_blocks("mlp", x, self.heads, self.block, self.dim_head, True)
    return self.net(x.flatten(-2))


def make_compressor(kind, heads, dim_head, block, expand=1.0, dropout=0.0, reduction=2):
  """One compressor by its kind name."""
  if kind == "conv":
    return ConvLinearCompress(heads, dim_head, block)
  if kind == "efficient_conv":
    return EfficientConvLinearCompress(heads, dim_head, block, reduction)
  if kind == "attention_pool":
    return AttentionPool(heads, dim_head, block, scaled=False)
  if kind == "scaled_attention_pool":
    return AttentionPool(heads, dim_head, block, scaled=True)
  if kind == "grouped_mlp":
    return GroupedMLP(heads, dim_head, block, expand)
  if kind == "enhanced_mlp":
    return EnhancedGroupedMLP(heads, dim_head, block, expand, dropout)
  if kind == "mlp":
    return CompressMLP(heads, dim_head, block, expand)
  raise ValueError(f"unknown compressor kind '{kind}' (expected one of {', '.join(KINDS)})")


def split_blocks(x, block, stride=None):
  """(b, h, seq, d) -> (b, h, w, n, d): windows of n tokens starting every `stride` tokens
  (default n: disjoint blocks), w = (seq - n) // stride + 1; tokens past the last window dropped."""
  b, h, seq, d = x.shape
  stride = stride or block
  if seq < block:
    raise ValueError(f"split_blocks: seq {seq} is shorter than one block of {block}")
  if not 1 <= stride <= block:
    raise ValueError(f"split_blocks: stride {stride} must be in [1, block {block}]")
  if stride == block:
    w = seq // block
    return x[:, :, :w * block].reshape(b, h, w, block, d)
  return x.unfold(2, block, stride).transpose(-1, -2)  # (b, h, w, d, n) -> (b, h, w, n, d)


def visible_counts(q_pos, first, step, limit):
  """clamp(floor((pos - first) / step) + 1, 0, limit) per query position (b, nq) (int64): the
  keys (first 0, step 1, limit seq) or blocks (first n - 1, step stride, limit w) a query sees."""
  return torch.div(q_pos - first, step, rounding_mode="floor").add(1).clamp(0, limit)


def attention_probs(q, k, visible=None):
  """softmax(q k^T / sqrt d) over keys, (..., m, s); with `visible` (..., m) only the first
  visible[r] keys of row r count, and a row that sees none is all zero."""
  scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
  if visible is None:
    return scores.softmax(dim=-1)
  seen = torch.arange(k.shape[-2]) < visible[..., None]
  scores = scores.masked_fill(~seen, -math.inf).masked_fill(~seen.any(-1, keepdim=True), 0.0)
  return scores.softmax(dim=-1) * seen.any(-1, keepdim=True)


def full_attention(q, k, v, visible=None):
  """softmax(q k^T / sqrt d) v for q (b, h, nq, d), k and v (b, h, s, d) -> (b, h, nq, d);
  `visible` as attention_probs says."""
  return torch.matmul(attention_probs(q, k, visible), v)


def group_queries(q, heads):
  """(b, h*G, nq, d) -> (b, h, G*nq, d): query head j uses KV head j // G (GQA)."""
  b, hq, nq, d = q.shape
  if hq % heads:
    raise ValueError(f"queries have {hq} heads, not a multiple of the {heads} KV heads")
  return q.reshape(b, heads, hq // heads * nq, d)


def selection_recall(q, k, kc, q_pos, block, stride, topk, heads):
  """NSA's selection recall@k: per query group (the G query heads of a KV head, probabilities
  summed) and query, the top-k blocks by compressed-attention probability against the top-k by
  true attention mass (full-attention probability summed over each block's tokens), under the
  causal rule when q_pos is given; |both| / k averaged over the queries that see a block (k capped
  at the blocks a query sees). Returns (recall, queries counted)."""
  b, hq, nq, d = q.shape
  g = hq // heads
  seq, w = k.shape[2], kc.shape[2]
  qg = group_queries(q, heads)
  key_vis = blk_vis = None
  if q_pos is not None:
    key_vis = visible_counts(q_pos, 0, 1, seq)[:, None].repeat(1, heads, g)
    blk_vis = visible_counts(q_pos, block - 1, stride, w)[:, None].repeat(1, heads, g)
  with torch.no_grad():
    pc = attention_probs(qg, kc, blk_vis).reshape(b, heads, g, nq, w).sum(2)
    pf = attention_probs(qg, k, key_vis)
    ind = torch.zeros(seq, w, dtype=pf.dtype)
    for i in range(w):
      ind[i * stride:i * stride + block, i] = 1
    mass = torch.matmul(pf, ind).reshape(b, heads, g, nq, w).sum(2)
  seen = (torch.full((b, nq), w) if q_pos is None else visible_counts(q_pos, block - 1, stride, w))
  total, count = 0.0, 0
  for bi in range(b):
    for j in range(nq):
      c = int(seen[bi, j])
      if c == 0:
        continue
      kk = min(topk, c)
      for hh in range(heads):
        a = set(torch.topk(pc[bi, hh, j, :c], kk).indices.tolist())
        t = set(torch.topk(mass[bi, hh, j, :c], kk).indices.tolist())
        total += len(a & t) / kk
        count += 1
  return (total / count if count else float("nan")), count // heads


class CompressorPair(nn.Module):
  """NSA's pair: k_compress, v_compress and the intra-block positions (h, n, d)."""

  def __init__(self, kind, heads, dim_head, block, expand=1.0, dropout=0.0, reduction=2,
               stride=None, query_heads=1, causal=False):
    super().__init__()
    self.kind, self.block, self.heads = kind, block, heads
    self.stride, self.query_heads, self.causal = stride or block, query_heads, causal
    self.k_compress = make_compressor(kind, heads, dim_head, block, expand, dropout, reduction)
    self.v_compress = make_compressor(kind, heads, dim_head, block, expand, dropout, reduction)
    self.k_intrablock_positions = nn.Parameter(torch.zeros(heads, block, dim_head))
    self.v_intrablock_positions = nn.Parameter(torch.zeros(heads, block, dim_head))

  def compress(self, k, v):
    """k, v: (b, h, seq, d) -> (k_compressed, v_compressed), each (b, h, w, d)."""
    # positions (h, n, d) broadcast over b and w: (h, 1, n, d) against (b, h, w, n, d)
    kb = split_blocks(k, self.block, self.stride)
    vb = split_blocks(v, self.block, self.stride)
    kc = self.k_compress(kb + self.k_intrablock_positions[:, None])
    vc = self.v_compress(vb + self.v_intrablock_positions[:, None])
    return kc, vc

  @staticmethod
  def full_attention(q, k, v):
    return full_attention(q, k, v)

  def distill(self, q, k, v, q_pos=None):
    """The distill task's pieces: (loss, prediction, target, k_compressed, v_compressed).

    q is (b, h*G, nq, d) (G = query_heads); prediction and target come back in q's shape.
    Causal: q_pos (b, nq) int64 positions; query t sees keys 0..t and the blocks whose last
    token is <= t, and queries that see no block are left out of the mean."""
    qg = group_queries(q, self.heads)
    key_vis, blk_vis = self.visibility(q_pos, k.shape[2])
    with torch.no_grad():  # the target is data, not something to train
      target = full_attention(qg, k, v, key_vis)
    kc, vc = self.compress(k, v)
    prediction = full_attention(qg, kc, vc, blk_vis)
    loss = self.loss_of(prediction, target, blk_vis)
    return loss, prediction.reshape(q.shape), target.reshape(q.shape), kc, vc

  def visibility(self, q_pos, seq):
    """(keys, blocks) each query row of group_queries' (b, h, G*nq) sees; (None, None) when not
    causal."""
    if not self.causal:
      return None, None
    if q_pos is None:
      raise ValueError("causal distillation needs the queries' positions")
    g, w = self.query_heads, (seq - self.block) // self.stride + 1
    key_vis = visible_counts(q_pos, 0, 1, seq)[:, None].repeat(1, self.heads, g)
    blk_vis = visible_counts(q_pos, self.block - 1, self.stride, w)[:, None]
    return key_vis, blk_vis.repeat(1, self.heads, g)

  @staticmethod
  def loss_of(prediction, target, blk_vis):
    """The mean squared error, over the query rows that see a block when blk_vis is given."""
    if blk_vis is None:
      return ((prediction - target) ** 2).mean()
    kept = (blk_vis > 0)[..., None]
    denom = (kept.sum() * prediction.shape[-1]).clamp(min=1)
    return (((prediction - target) ** 2) * kept).sum() / denom

  def distill_loss(self, q, k, v, q_pos=None):
    """mean((softmax(Q Kc^T/sqrt d) Vc - softmax(Q K^T/sqrt d) V)^2), target under no_grad."""
    return self.distill(q, k, v, q_pos)[0]


def make_teacher(kind, heads, dim_head, block, expand=1.0, dropout=0.0, reduction=2, seed=0,
                 noise=0.1):
  """The `teacher` task's frozen pair: built from seed + 1, then N(0, noise^2) on every parameter.

  The RNG stream is PyTorch's, so the exact numbers differ from kvcompress's; the recipe is the
  same.
  """
  gen_state = torch.random.get_rng_state()
  torch.manual_seed(seed + 1)
  teacher = CompressorPair(kind, heads, dim_head, block, expand, dropout, reduction)
  with torch.no_grad():
    for p in teacher.parameters():
      p.add_(torch.randn_like(p) * noise)
      p.requires_grad_(False)
  torch.random.set_rng_state(gen_state)
  return teacher.eval()


def teacher_loss(student, teacher, k, v):
  """MSE(k outputs) + MSE(v outputs) of the student against the frozen teacher's compress."""
  with torch.no_grad():
    tk, tv = teacher.compress(k, v)
  sk, sv = student.compress(k, v)
  return F.mse_loss(sk, tk) + F.mse_loss(sv, tv)
