"""An autoregressive transformer over token ids: causal, class-conditional,
with classifier-free guidance (a null label and label dropout).

Order: row-major over the token grid (raster order for 2D grids; the
tokenizer's own order for 1D tokens such as TiTok's or FlexTok's, whose
first tokens are the coarse ones). The input at position i is the class
token for i = 0 and the (level-summed) embedding of the tokens at i - 1
otherwise; a causal mask makes position i see inputs 0..i only, so its
output h_i predicts the tokens at i from the label and tokens 0..i-1.

Residual or grouped tokens [.., Q]: the RQ-Transformer factorisation. The
spatial transformer above gives h_i per position; a small causal depth
transformer (`token_transformer.DepthHead`) over [h_i, e(t_i,0), ...,
e(t_i,Q-2)] predicts level q of position i from h_i and levels < q. The
likelihood is therefore exact: log p(x) = sum_i sum_q log p(t_iq | t_<i,
t_i<q, label).

Sampling (`generate`): L steps, each one forward pass of the whole (fixed
length) buffer, of which position i is read (the causal mask makes the
unfilled tail irrelevant; no KV cache: cost L x one forward pass). With
guidance_scale w != 1 each step runs the batch with its labels and with the
null label and samples from l_u + w (l_c - l_u) (for Q > 1 at every level).

Dimension legend:
  B: batch; L: positions; Q: levels per position; K: codebook size; D: width
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tokenizers_jax.models import token_transformer as tt

Array = jax.Array


class AutoregressiveTransformer(tt.TokenGenerator):
  """Causal transformer over L positions; see the module docstring.
  Arguments: `token_transformer.TokenGenerator`'s."""

  kind = 'ar'

  def __init__(self, *, token_shape, num_levels: int = 1, **kwargs):
    seq_len = math.prod(token_shape) // num_levels
    super().__init__(token_shape=token_shape, num_levels=num_levels,
                     num_positions=seq_len, **kwargs)

  def contexts(self, t: Array, labels: Array) -> Array:
    """h [B, L, D]: h_i from the label and the tokens [B, L, Q] before i."""
    x = jnp.concatenate([self.class_embed[...][labels][:, None],
                         self.embed_tokens(t[:, :-1])], 1)
    return self.hidden(x, tt.causal_mask(x.shape[1]))

  def __call__(self, tokens: Array, *, labels: Array | None = None,
               valid: Array | None = None, train: bool = False,
               rng: Array | None = None, step=None) -> tt.GeneratorOutput:
    """Next-token cross-entropy of tokens [B, *token_shape]."""
    del step
    t = tt.flatten(tokens, self.token_shape, self.num_levels)
    b, l, q = t.shape
    valid = jnp.ones((b, l), bool) if valid is None else valid
    rng = jax.random.PRNGKey(0) if rng is None else rng
    lab = self.labels_in(labels, b, train=train, rng=rng)
    logits = self.level_logits(self.contexts(t, lab), t)
    nll = tt.token_nll(logits, t).sum(-1)  # [B, L]
    w = valid.astype(jnp.float32)
    count = jnp.sum(w, -1) * q
    ce = jnp.sum(nll * w) / jnp.maximum(jnp.sum(count), 1.0)
    return tt.GeneratorOutput(
        logits=logits, terms={'ce': ce},
        metrics=tt.summary_metrics(logits, t, w),
        aux={'nll': jnp.sum(nll * w, -1), 'count': count})

  def nll(self, tokens: Array, labels: Array | None,
          valid: Array | None = None) -> Array:
    """Exact negative log-likelihood [B] in nats (no label dropout)."""
    return self(tokens, labels=labels, valid=valid, train=False).aux['nll']

  def generate(self, key: Array, labels: Array | None = None, *,
               batch: int | None = None, temperature: float = 1.0,
               top_k: int | None = None, guidance_scale: float = 1.0,
               num_steps: int | None = None) -> Array:
    """Samples tokens [B, *token_shape] one position at a time."""
    del num_steps  # Always L steps.
    b = batch if labels is None else labels.shape[0]
    lab = self.labels_in(labels, b, train=False, rng=None)
    guided = guidance_scale != 1.0
    if guided:
      lab = jnp.concatenate([lab, jnp.full((b,), self.null_label,
                                           jnp.int32)])
    t0 = jnp.zeros((b, self.seq_len, self.num_levels), jnp.int32)

    def body(i, t):
      tt_in = jnp.concatenate([t, t]) if guided else t
      h = jax.lax.dynamic_slice_in_dim(self.contexts(tt_in, lab), i, 1, 1)
      hc, hu = (h[:b], h[b:]) if guided else (h, None)
      ids, _ = self.sample_levels(jax.random.fold_in(key, i), hc, hu,
                                  guidance_scale=guidance_scale,
                                  temperature=temperature, top_k=top_k)
      return jax.lax.dynamic_update_slice_in_dim(t, ids, i, 1)

    t = jax.lax.fori_loop(0, self.seq_len, body, t0)
    return tt.unflatten(t, self.token_shape)
