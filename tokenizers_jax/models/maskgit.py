"""MaskGIT: a bidirectional transformer over token ids, trained to predict
masked tokens and decoded by iterative parallel sampling (Chang et al.,
2022).

Training: per example a ratio r ~ U[0, 1), ceil(cos(pi r / 2) * L) of its
L positions (at least 1) chosen uniformly are replaced by the mask token
(every level of a position together); the loss is the cross-entropy of the
true ids at the masked positions (all Q levels; for Q > 1 the depth head
predicts level q from the context and the true levels before it). Labels
enter as a class token before the sequence, with `label_dropout` of them
replaced by the null label (classifier-free guidance).

Decoding (`decode`, the model's `generate`): start with every position
masked; at step t = 0..T-1 sample every position (temperature, top-k; known
positions keep their ids), give known positions infinite confidence and
the others their sampled log-probability plus Gumbel noise scaled by
choice_temperature * (1 - (t+1)/T), and re-mask the n_t lowest-confidence
ones, n_t = max(1, min(#unknown - 1, floor(L * cos(pi/2 * (t+1)/T)))); the
result is the last step's samples (every position filled).

Held-out likelihood (`elbo`): MaskGIT defines no exact likelihood; read as
an any-order autoregressive model its NLL is bounded by
  -log p(x) <= E_{k ~ U{1..L}} E_{|M| = k} [ (L / k) sum_{l in M} CE_l ],
which `elbo` estimates for given mask sizes k.

Dimension legend:
  B: batch; L: positions; Q: levels per position; K: codebook size
  D: width; T: decoding steps
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from tokenizers_jax.models import token_transformer as tt

Array = jax.Array


def cosine_schedule(r):
  """The mask ratio gamma(r) = cos(pi r / 2) for r in [0, 1]."""
  return jnp.cos(0.5 * jnp.pi * r)


def mask_of_size(key: Array, valid: Array, n_mask: Array) -> Array:
  """bool [B, L]: n_mask [B] valid positions per row chosen uniformly."""
  u = jax.random.uniform(key, valid.shape)
  u = jnp.where(valid, u, jnp.inf)
  ranks = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
  return ranks < n_mask[:, None]


def training_mask(key: Array, valid: Array) -> tuple[Array, Array]:
  """(masked bool [B, L], r [B]): r ~ U[0, 1), ceil(cos(pi r/2) * L_valid)
  valid positions masked (at least one)."""
  k_ratio, k_pos = jax.random.split(key)
  r = jax.random.uniform(k_ratio, valid.shape[:1])
  n_valid = jnp.sum(valid, -1)
  n_mask = jnp.clip(jnp.ceil(cosine_schedule(r) * n_valid), 1,
                    n_valid).astype(jnp.int32)
  return mask_of_size(k_pos, valid, n_mask), r


def decode(propose: Callable[[Array, Array], tuple[Array, Array]], key: Array,
           batch: int, seq_len: int, num_levels: int, *, mask_id: int,
           num_steps: int = 8, choice_temperature: float = 4.5,
           schedule: Callable = cosine_schedule) -> Array:
  """MaskGIT's iterative decoding.

  Args:
    propose: (ids [B, L, Q] with `mask_id` at unknown positions, key) ->
      (sampled ids [B, L, Q] for every position, their log-prob [B, L]).
    key: PRNG key.
    batch, seq_len, num_levels: B, L, Q.
    mask_id: the mask token id.
    num_steps: T.
    choice_temperature: scale of the Gumbel noise on the confidences
      (annealed by 1 - (t+1)/T); 0: deterministic lowest-confidence
      re-masking.
    schedule: the mask ratio of (t+1)/T.

  Returns:
    int32 [B, L, Q].
  """
  ids = jnp.full((batch, seq_len, num_levels), mask_id, jnp.int32)
  unknown = jnp.ones((batch, seq_len), bool)

  def body(t, carry):
    ids, unknown, _ = carry
    k_sample, k_noise = jax.random.split(jax.random.fold_in(key, t))
    sampled, logp = propose(ids, k_sample)
    sampled = jnp.where(unknown[..., None], sampled, ids)
    ratio = (t + 1.0) / num_steps
    n_mask = jnp.floor(seq_len * schedule(ratio)).astype(jnp.int32)
    n_mask = jnp.maximum(1, jnp.minimum(jnp.sum(unknown, -1) - 1, n_mask))
    conf = logp + (choice_temperature * (1.0 - ratio)
                   * jax.random.gumbel(k_noise, logp.shape))
    conf = jnp.where(unknown, conf, jnp.inf)
    cut = jnp.take_along_axis(jnp.sort(conf, -1), n_mask[:, None], -1)
    remask = conf < cut
    return jnp.where(remask[..., None], mask_id, sampled), remask, sampled

  _, _, final = jax.lax.fori_loop(0, num_steps, body, (ids, unknown, ids))
  return final


class MaskGIT(tt.TokenGenerator):
  """Bidirectional transformer over [class token, L positions]; see the
  module docstring. Arguments: `token_transformer.TokenGenerator`'s."""

  kind = 'maskgit'

  def __init__(self, *, token_shape, num_levels: int = 1, **kwargs):
    seq_len = math.prod(token_shape) // num_levels
    super().__init__(token_shape=token_shape, num_levels=num_levels,
                     num_positions=seq_len + 1, **kwargs)

  @property
  def mask_id(self) -> int:
    return self.codebook_size

  def contexts(self, ids: Array, labels: Array, valid: Array | None = None
               ) -> Array:
    """[B, L, Q] ids (mask id at masked positions), labels [B] -> [B, L, D]."""
    x = jnp.concatenate([self.class_embed[...][labels][:, None],
                         self.embed_tokens(ids)], 1)
    mask = None
    if valid is not None:
      keys = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], 1)
      mask = keys[:, None, :]
    return self.hidden(x, mask)[:, 1:]

  def _masked_nll(self, t, masked, labels, valid):
    ids_in = jnp.where(masked[..., None], self.mask_id, t)
    logits = self.level_logits(self.contexts(ids_in, labels, valid), t)
    return logits, tt.token_nll(logits, t).sum(-1)  # [B, L]: over levels.

  def __call__(self, tokens: Array, *, labels: Array | None = None,
               valid: Array | None = None, train: bool = False,
               rng: Array | None = None, step=None) -> tt.GeneratorOutput:
    """Masked-token loss on tokens [B, *token_shape] (see module doc)."""
    del step
    t = tt.flatten(tokens, self.token_shape, self.num_levels)
    b, l, q = t.shape
    valid = jnp.ones((b, l), bool) if valid is None else valid
    rng = jax.random.PRNGKey(0) if rng is None else rng
    k_mask, k_drop = jax.random.split(rng)
    masked, _ = training_mask(k_mask, valid)
    lab = self.labels_in(labels, b, train=train, rng=k_drop)
    logits, nll = self._masked_nll(t, masked, lab, valid)
    w = (masked & valid).astype(jnp.float32)
    count = jnp.sum(w, -1) * q
    ce = jnp.sum(nll * w) / jnp.maximum(jnp.sum(count), 1.0)
    metrics = tt.summary_metrics(logits, t, w)
    metrics['mask_ratio'] = jnp.mean(jnp.sum(w, -1) /
                                     jnp.maximum(jnp.sum(valid, -1), 1))
    return tt.GeneratorOutput(logits=logits, terms={'ce': ce},
                              metrics=metrics,
                              aux={'nll': jnp.sum(nll * w, -1),
                                   'count': count})

  def elbo(self, tokens: Array, labels: Array | None, key: Array,
           n_mask: Array, valid: Array | None = None) -> Array:
    """One-sample estimate [B] (nats) of the any-order bound with n_mask
    [B] masked positions: (L / k) * sum of the masked positions' CE."""
    t = tt.flatten(tokens, self.token_shape, self.num_levels)
    b, l, _ = t.shape
    valid = jnp.ones((b, l), bool) if valid is None else valid
    n_valid = jnp.sum(valid, -1)
    n_mask = jnp.clip(n_mask, 1, n_valid)
    masked = mask_of_size(key, valid, n_mask)
    lab = self.labels_in(labels, b, train=False, rng=None)
    _, nll = self._masked_nll(t, masked, lab, valid)
    w = (masked & valid).astype(jnp.float32)
    return jnp.sum(nll * w, -1) * n_valid / n_mask

  def generate(self, key: Array, labels: Array | None = None, *,
               batch: int | None = None, num_steps: int = 8,
               temperature: float = 1.0, top_k: int | None = None,
               guidance_scale: float = 1.0,
               choice_temperature: float = 4.5) -> Array:
    """Samples tokens [B, *token_shape] (labels [B] or None: unconditional;
    guidance_scale w != 1 mixes in the null-label logits)."""
    b = batch if labels is None else labels.shape[0]
    lab = self.labels_in(labels, b, train=False, rng=None)
    guided = guidance_scale != 1.0
    null = jnp.full((b,), self.null_label, jnp.int32)

    def propose(ids, k):
      if guided:
        h = self.contexts(jnp.concatenate([ids, ids]),
                          jnp.concatenate([lab, null]))
        hc, hu = h[:b], h[b:]
      else:
        hc, hu = self.contexts(ids, lab), None
      return self.sample_levels(k, hc, hu, guidance_scale=guidance_scale,
                                temperature=temperature, top_k=top_k)

    out = decode(propose, key, b, self.seq_len, self.num_levels,
                 mask_id=self.mask_id, num_steps=num_steps,
                 choice_temperature=choice_temperature)
    return tt.unflatten(out, self.token_shape)
