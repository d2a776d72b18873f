"""Pieces shared by the token generators (MaskGIT, autoregressive).

  GeneratorOutput      what a generator's forward pass returns (no
                       quantizer: the model-contract analogue of
                       `models/base.ModelOutput` for token models)
  TokenGenerator       the shared body: level-summed token embeddings, a
                       class token (num_classes + 1 rows, the last the null
                       label of classifier-free guidance), learned positions,
                       a pre-LN transformer and a `DepthHead`
  DepthHead            logits of the Q levels of each position: for Q = 1 one
                       linear; for Q > 1 (RVQ levels, FQGAN heads) a small
                       causal transformer over the levels (RQ-Transformer's
                       depth transformer: input h, then the embeddings of
                       levels 0..Q-2; output q predicts level q)
  sample_logits        temperature / top-k sampling with the log-probability
                       of the drawn token under the adjusted distribution
  cfg_logits           classifier-free guidance l_u + w (l_c - l_u)
  nll_bits             summed cross-entropy in bits (= nats / ln 2)

Tokens enter as [B, *grid, Q] or [B, *grid]; `flatten` makes [B, L, Q]
(row-major: raster order for 2D grids, the tokenizer's own order for 1D
tokens) and `unflatten` restores the tokenizer's shape.

Dimension legend:
  B: batch; L: token positions (prod of the grid); Q: levels per position
  K: codebook size; D: width; C: classes (+1 null); N: B * L (depth head)
"""

from __future__ import annotations

import math
from typing import Any

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.models import vit
from tokenizers_jax.nn.partitioning import logical

Array = jax.Array
Dtype = Any
LN2 = math.log(2.0)


@struct.dataclass
class GeneratorOutput:
  """A generator's forward pass.

  Attributes:
    logits: f32 [B, L, Q, K] at the predicted positions' levels.
    terms: unweighted loss terms ('ce': mean nats per predicted token).
    metrics: f32 scalars (accuracy, mask ratio, ...), logged under quant/.
    aux: per-example arrays for evaluation ('nll': summed nats [B],
      'count': predicted tokens [B]).
  """
  logits: Array
  terms: dict[str, Array]
  metrics: dict[str, Array]
  aux: dict[str, Any] = struct.field(default_factory=dict)


# -----------------------------------------------------------------------------
# Pure functions.
# -----------------------------------------------------------------------------


def flatten(tokens: Array, token_shape: tuple[int, ...], num_levels: int
            ) -> Array:
  """[B, *token_shape] -> [B, L, Q] (row-major positions)."""
  b = tokens.shape[0]
  return tokens.reshape(b, -1, num_levels)


def unflatten(tokens: Array, token_shape: tuple[int, ...]) -> Array:
  """[B, L, Q] -> [B, *token_shape]."""
  return tokens.reshape((tokens.shape[0],) + tuple(token_shape))


def cfg_logits(cond: Array, uncond: Array, scale: float) -> Array:
  """Classifier-free guidance on logits: l_u + w (l_c - l_u) (w = 1: cond)."""
  return uncond + scale * (cond - uncond)


def top_k_filter(logits: Array, top_k: int | None) -> Array:
  """Logits outside each row's top k set to -inf (k None or 0: all kept).
  Ties at the k-th value are all kept."""
  if not top_k or top_k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def sample_logits(key: Array, logits: Array, *, temperature: float = 1.0,
                  top_k: int | None = None) -> tuple[Array, Array]:
  """(ids [...], log-prob of each under the adjusted distribution [...]).

  The distribution is softmax(top_k(logits) / temperature); temperature 0
  takes the argmax (log-prob of the argmax under top_k(logits))."""
  logits = top_k_filter(logits.astype(jnp.float32), top_k)
  if temperature == 0:
    ids = jnp.argmax(logits, -1)
    logp = jax.nn.log_softmax(logits, -1)
  else:
    logp = jax.nn.log_softmax(logits / temperature, -1)
    ids = jax.random.categorical(key, logp, -1)
  return ids.astype(jnp.int32), jnp.take_along_axis(logp, ids[..., None],
                                                    -1)[..., 0]


def token_nll(logits: Array, targets: Array) -> Array:
  """Cross-entropy in nats of each target: logits [..., K], targets [...]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]


def nll_bits(nats: Array) -> Array:
  """Nats -> bits."""
  return nats / LN2


def causal_mask(n: int) -> np.ndarray:
  """bool [n, n]: query i may attend to keys j <= i."""
  return np.tril(np.ones((n, n), bool))


# -----------------------------------------------------------------------------
# Modules.
# -----------------------------------------------------------------------------


class DepthHead(nnx.Module):
  """h [N, D] (+ the true or sampled levels [N, Q]) -> logits [N, Q, K].

  Q = 1: a linear. Q > 1: the sequence [h, e_0(t_0), ..., e_{Q-2}(t_{Q-2})]
  plus level positions through a causal transformer; output q -> level q's
  logits (its own linear per level). Level q therefore sees h and the
  levels before it only.
  """

  def __init__(self, width: int, num_levels: int, codebook_size: int, *,
               depth: int = 1, num_heads: int = 4, mlp_ratio: float = 4.0,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.num_levels = num_levels
    self.codebook_size = codebook_size
    self.dtype = dtype
    q, k, d = num_levels, codebook_size, width
    init = nnx.initializers.normal(0.02)
    self.out = nnx.Param(init(rngs.params(), (q, d, k), jnp.float32),
                         **logical(None, 'embed', 'codebook'))
    self.out_bias = nnx.Param(jnp.zeros((q, k), jnp.float32),
                              **logical(None, 'codebook'))
    if q > 1:
      self.embed = nnx.Param(init(rngs.params(), (q - 1, k, d), jnp.float32),
                             **logical(None, 'codebook', 'embed'))
      self.pos = vit.learned_pos(q, d, rngs)
      self.transformer = vit.Transformer(d, depth, num_heads, mlp_ratio,
                                         dtype=dtype, rngs=rngs)
    else:
      self.embed = self.pos = self.transformer = None

  def __call__(self, h: Array, levels: Array | None = None) -> Array:
    """Logits [N, Q, K] of every level given the levels before it.

    Args:
      h: [N, D] the position's context.
      levels: int [N, Q] (teacher forcing; level Q-1 is not read), needed
        when Q > 1.
    """
    if self.num_levels == 1:
      x = h[:, None, :]
    else:
      table = self.embed[...]
      prev = jnp.stack([table[q][levels[:, q]]
                        for q in range(self.num_levels - 1)], 1)
      x = jnp.concatenate([h[:, None, :], prev.astype(h.dtype)], 1)
      x = x + self.pos[...][None].astype(x.dtype)
      x = self.transformer(x, causal_mask(self.num_levels))
    logits = jnp.einsum('nqd,qdk->nqk', x.astype(jnp.float32),
                        self.out[...], precision=jax.lax.Precision.HIGHEST)
    return logits + self.out_bias[...][None]

  def sample(self, key: Array, h: Array, logits_fn=None, *,
             temperature: float = 1.0, top_k: int | None = None
             ) -> tuple[Array, Array]:
    """Draws the Q levels of each position one after the other.

    Args:
      key: PRNG key.
      h: [N, D], or a tuple of contexts when `logits_fn` combines several
        (classifier-free guidance).
      logits_fn: (levels [N, Q]) -> logits [N, Q, K]; default this head on h.
      temperature, top_k: see `sample_logits`.

    Returns:
      (levels int [N, Q], summed log-prob [N]).
    """
    if logits_fn is None:
      logits_fn = lambda lv: self(h, lv)
    n = jax.tree.leaves(h)[0].shape[0]
    levels = jnp.zeros((n, self.num_levels), jnp.int32)
    total = jnp.zeros((n,), jnp.float32)
    for q in range(self.num_levels):
      ids, logp = sample_logits(jax.random.fold_in(key, q),
                                logits_fn(levels)[:, q],
                                temperature=temperature, top_k=top_k)
      levels = levels.at[:, q].set(ids)
      total = total + logp
    return levels, total


class TokenGenerator(nnx.Module):
  """The body shared by MaskGIT and the autoregressive transformer.

  Args:
    codebook_size: K (token ids 0..K-1; id K is MaskGIT's mask token).
    token_shape: one example's token ids' shape, [*grid] or [*grid, Q].
    num_levels: Q (1 when token_shape has no level axis).
    num_classes: C (labels 0..C-1; C, or any negative label, is the null
      label of classifier-free guidance); 0: unconditional.
    width, depth, num_heads, mlp_ratio: the transformer.
    depth_layers: the depth head's transformer layers (Q > 1).
    label_dropout: training probability of replacing a label by the null.
    prefix: extra positions before the tokens (the class token).
  """

  modality = 'tokens'
  loss_terms = ('ce',)
  last_layer = None

  def __init__(self, *, codebook_size: int, token_shape, num_levels: int = 1,
               num_classes: int = 0, width: int = 256, depth: int = 8,
               num_heads: int = 8, mlp_ratio: float = 4.0,
               depth_layers: int = 1, label_dropout: float = 0.1,
               num_positions: int, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.codebook_size = int(codebook_size)
    self.token_shape = tuple(int(s) for s in token_shape)
    self.num_levels = int(num_levels)
    self.seq_len = math.prod(self.token_shape) // self.num_levels
    self.num_classes = int(num_classes)
    self.label_dropout = float(label_dropout)
    self.dtype = dtype
    init = nnx.initializers.normal(0.02)
    q, k, d = self.num_levels, self.codebook_size, width
    # Row K of every level: the mask token (MaskGIT).
    self.tok_embed = nnx.Param(init(rngs.params(), (q, k + 1, d),
                                    jnp.float32),
                               **logical(None, 'codebook', 'embed'))
    self.class_embed = nnx.Param(init(rngs.params(),
                                      (self.num_classes + 1, d), jnp.float32),
                                 **logical(None, 'embed'))
    self.pos = vit.learned_pos(num_positions, d, rngs)
    self.transformer = vit.Transformer(d, depth, num_heads, mlp_ratio,
                                       dtype=dtype, rngs=rngs)
    self.head = DepthHead(d, q, k, depth=depth_layers, num_heads=num_heads,
                          mlp_ratio=mlp_ratio, dtype=dtype, rngs=rngs)

  # ------------------------------------------------------------ pieces

  @property
  def null_label(self) -> int:
    return self.num_classes

  def labels_in(self, labels: Array | None, batch: int, *, train: bool,
                rng: Array | None) -> Array:
    """Labels with negatives (and, in training, a `label_dropout` share)
    replaced by the null label."""
    if labels is None or self.num_classes == 0:
      return jnp.full((batch,), self.null_label, jnp.int32)
    labels = jnp.asarray(labels, jnp.int32)
    labels = jnp.where((labels < 0) | (labels >= self.num_classes),
                       self.null_label, labels)
    if train and self.label_dropout > 0 and rng is not None:
      drop = jax.random.bernoulli(rng, self.label_dropout, (batch,))
      labels = jnp.where(drop, self.null_label, labels)
    return labels

  def embed_tokens(self, ids: Array) -> Array:
    """[B, L, Q] ids (0..K) -> [B, L, D]: the sum of the levels' rows."""
    table = self.tok_embed[...]
    return sum(table[q][ids[..., q]] for q in range(self.num_levels))

  def hidden(self, x: Array, mask: Array | None) -> Array:
    """[B, N, D] inputs (positions added here) -> [B, N, D]."""
    x = x + self.pos[...][None, :x.shape[1]]
    return self.transformer(x.astype(self.dtype), mask).astype(jnp.float32)

  def level_logits(self, h: Array, levels: Array) -> Array:
    """[B, L, D] contexts, [B, L, Q] levels -> [B, L, Q, K] (teacher
    forcing over the levels)."""
    b, l, d = h.shape
    out = self.head(h.reshape(b * l, d), levels.reshape(b * l, -1))
    return out.reshape(b, l, self.num_levels, self.codebook_size)

  def sample_levels(self, key: Array, h: Array, h_uncond: Array | None, *,
                    guidance_scale: float = 1.0, temperature: float = 1.0,
                    top_k: int | None = None) -> tuple[Array, Array]:
    """Draws [B, L, Q] levels from contexts [B, L, D] (guided by h_uncond
    when given): (ids, summed log-prob [B, L])."""
    b, l, d = h.shape
    hc = h.reshape(b * l, d)
    if h_uncond is None:
      fn = lambda lv: self.head(hc, lv)
    else:
      hu = h_uncond.reshape(b * l, d)
      fn = lambda lv: cfg_logits(self.head(hc, lv), self.head(hu, lv),
                                 guidance_scale)
    ids, logp = self.head.sample(key, hc, fn, temperature=temperature,
                                 top_k=top_k)
    return ids.reshape(b, l, -1), logp.reshape(b, l)


def summary_metrics(logits: Array, targets: Array, weight: Array) -> dict:
  """Accuracy of the argmax over the weighted targets ([B, L, Q])."""
  hit = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  w = jnp.broadcast_to(weight[..., None], hit.shape)
  return {'accuracy': jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)}
