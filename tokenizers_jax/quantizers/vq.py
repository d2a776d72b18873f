"""Vector quantization: gradient or EMA codebooks, k-means init, cosine codes,
low-dimensional lookup, dead-code restart, entropy loss, rotation trick, SimVQ.

Dimension legend:
  ...: leading axes of the input; N = their product
  D: input dimension (`dim`)
  C: code dimension (`codebook_dim`, = D unless a low-dim lookup is used)
  K: codebook size
"""

from __future__ import annotations

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp

from tokenizers_jax.quantizers import base
from tokenizers_jax.quantizers import functional as F

Array = jax.Array


class VectorQuantizer(base.Quantizer):
  """Nearest-neighbour vector quantizer with one `QuantizerOutput` interface.

  Losses (unweighted values in `metrics`):
    commitment = ||z - sg(q)||² (weight `commitment_weight`, β),
    codebook   = ||sg(z) - q||² (weight `codebook_weight`; gradient mode only),
    entropy    = E[H(p(·|z))] - γ·H(E[p(·|z)]), p = softmax(-d(z, c)/τ)
                 (weight `entropy_loss_weight`; dense over K),
    orthogonal = orthogonal regularisation of the codebook.

  State (all `QuantizerState`, never `nnx.Param`): `cluster_size` (EMA of code
  counts, initialised to ones as in vector-quantize-pytorch), `embed_avg` (EMA
  code sums, EMA mode), `initialized` (k-means done), `rng_key`/`step` (a
  replicated random stream for k-means and restarts).

  Args:
    codebook_size: K.
    dim: input dimension D.
    codebook_dim: lookup dimension C; when != D, linear in/out projections.
    ema_update: EMA codebook (Laplace-smoothed) instead of a gradient codebook.
    decay: EMA decay for `cluster_size` and `embed_avg`.
    eps: Laplace smoothing epsilon.
    commitment_weight: β.
    codebook_weight: weight of the codebook loss (gradient mode).
    kmeans_init: initialise the codebook with k-means on the first training batch.
    kmeans_iters: Lloyd iterations.
    use_cosine_sim: l2-normalise inputs and codes (cosine-similarity lookup).
    threshold_ema_dead_code: restart codes whose `cluster_size` falls below this
      from random batch samples (0 disables).
    entropy_loss_weight, entropy_temperature, diversity_gamma: entropy loss.
    rotation_trick: use the rotation trick instead of the straight-through estimator.
    simvq: SimVQ codebook, a frozen random codebook times a learned linear map.
    orthogonal_reg_weight: weight of the orthogonal regulariser.
    chunk_size: nearest-code chunking (None dense, int, or 'auto').
    rngs: `nnx.Rngs` for parameters and the replicated random stream.
  """

  def __init__(
      self,
      codebook_size: int,
      dim: int,
      *,
      codebook_dim: int | None = None,
      ema_update: bool = False,
      decay: float = 0.99,
      eps: float = 1e-5,
      commitment_weight: float = 0.25,
      codebook_weight: float = 1.0,
      kmeans_init: bool = False,
      kmeans_iters: int = 10,
      use_cosine_sim: bool = False,
      threshold_ema_dead_code: float = 0.0,
      entropy_loss_weight: float = 0.0,
      entropy_temperature: float = 0.01,
      diversity_gamma: float = 1.0,
      rotation_trick: bool = False,
      simvq: bool = False,
      orthogonal_reg_weight: float = 0.0,
      chunk_size: int | None | str = 'auto',
      rngs: nnx.Rngs,
  ):
    if codebook_size < 1 or dim < 1:
      raise ValueError(f'codebook_size and dim must be positive; got {codebook_size}, {dim}')
    if simvq and ema_update:
      raise ValueError('simvq learns its codebook by gradient; it cannot be combined with ema_update')
    self.codebook_size = codebook_size
    self.dim = dim
    self.num_codebooks = None
    self.codebook_dim = codebook_dim or dim
    self.ema_update = ema_update
    self.decay = decay
    self.eps = eps
    self.commitment_weight = commitment_weight
    self.codebook_weight = codebook_weight
    self.kmeans_init = kmeans_init
    self.kmeans_iters = kmeans_iters
    self.use_cosine_sim = use_cosine_sim
    self.threshold_ema_dead_code = threshold_ema_dead_code
    self.entropy_loss_weight = entropy_loss_weight
    self.entropy_temperature = entropy_temperature
    self.diversity_gamma = diversity_gamma
    self.rotation_trick = rotation_trick
    self.simvq = simvq
    self.orthogonal_reg_weight = orthogonal_reg_weight
    self.chunk_size = chunk_size

    c = self.codebook_dim
    if c != dim:
      self.project_in = base.linear(dim, c, rngs, ('embed', 'code_dim'))
      self.project_out = base.linear(c, dim, rngs, ('code_dim', 'embed'))
    else:
      self.project_in = None
      self.project_out = None

    key = rngs.params()
    if simvq:
      # Frozen Gaussian codebook with std C^-1/2 (SimVQ) and a learned map.
      init = jax.random.normal(key, (codebook_size, c)) * c ** -0.5
      self.codebook = base.QuantizerState(init, **base.logical('codebook', 'code_dim'))
      self.codebook_transform = base.linear(c, c, rngs, ('code_dim', 'code_dim'),
                                            use_bias=False)
    else:
      bound = (1.0 / codebook_size) if not use_cosine_sim else 1.0
      init = jax.random.uniform(key, (codebook_size, c), minval=-bound,
                                maxval=bound)
      if use_cosine_sim:
        init = F.l2_normalize(init)
      var = base.QuantizerState if ema_update else nnx.Param
      self.codebook = var(init, **base.logical('codebook', 'code_dim'))
      self.codebook_transform = None
    self.cluster_size = base.QuantizerState(
        jnp.ones((codebook_size,), jnp.float32), **base.logical('codebook'))
    if ema_update:
      self.embed_avg = base.QuantizerState(
          jnp.array(init), **base.logical('codebook', 'code_dim'))
    else:
      self.embed_avg = None
    self.initialized = base.QuantizerState(jnp.array(not kmeans_init))
    self.rng_key = base.QuantizerState(jax.random.key_data(rngs.params()))
    self.step = base.QuantizerState(jnp.zeros((), jnp.uint32))

  # ---------------------------------------------------------------- helpers

  def _next_key(self) -> Array:
    key = jax.random.wrap_key_data(self.rng_key[...])
    return jax.random.fold_in(key, self.step[...])

  def _effective_codebook(self, raw: Array | None = None) -> Array:
    """The codebook used for lookup: SimVQ map applied, l2-normalised if cosine."""
    cb = self.codebook[...] if raw is None else raw
    if self.codebook_transform is not None:
      cb = self.codebook_transform(cb)
    if self.use_cosine_sim:
      cb = F.l2_normalize(cb)
    return cb

  def _project_in(self, x: Array) -> Array:
    z = x if self.project_in is None else self.project_in(x)
    return F.l2_normalize(z) if self.use_cosine_sim else z

  def _project_out(self, q: Array) -> Array:
    return q if self.project_out is None else self.project_out(q)

  def _search(self, z: Array, codebook: Array) -> Array:
    idx, _ = F.nearest_code(z, codebook, chunk_size=self.chunk_size)
    return idx

  # ---------------------------------------------------------------- API

  def encode(self, x: Array) -> Array:
    base.check_input(x, self.dim, type(self).__name__)
    flat, _ = base.flatten_tokens(x, None)
    idx = self._search(self._project_in(flat), self._effective_codebook())
    return idx.reshape(x.shape[:-1])

  def decode(self, indices: Array) -> Array:
    base.check_indices(indices, self.codebook_size, type(self).__name__)
    return self.lookup(indices)

  def lookup(self, indices: Array) -> Array:
    """[...] indices -> [..., D] (NaN for an out-of-range index)."""
    cb = self._effective_codebook()
    q = jnp.take(cb, indices, axis=0, mode='fill', fill_value=jnp.nan)
    return self._project_out(q)

  def code_space(self, max_codes: int | None = None) -> base.CodeSpace:
    """The lookup codebook [K, C] (SimVQ map applied; l2-normalised and
    compared by cosine with `use_cosine_sim`), before `project_out`."""
    del max_codes  # An explicit codebook: nothing to enumerate.
    return base.CodeSpace(self._effective_codebook(), self.use_cosine_sim)

  def __call__(self, x: Array, *, train: bool = False,
               mask: Array | None = None) -> base.QuantizerOutput:
    name = type(self).__name__
    base.check_input(x, self.dim, name)
    base.check_mask(mask, x.shape[:-1], name)
    flat, m = base.flatten_tokens(x, mask)
    z = self._project_in(flat)  # [N, C]

    if train and self.kmeans_init:
      self._maybe_kmeans_init(z, m)
    codebook = self._effective_codebook()
    idx = self._search(z, codebook)  # [N]
    q = jnp.take(codebook, idx, axis=0)  # [N, C]

    zf = z.astype(jnp.float32)
    qf = q.astype(jnp.float32)
    commitment = base.masked_mean(jnp.square(zf - lax.stop_gradient(qf)), m)
    codebook_loss = base.masked_mean(jnp.square(lax.stop_gradient(zf) - qf), m)
    metrics = {'commitment': commitment, 'codebook': codebook_loss}
    loss = self.commitment_weight * commitment
    if not self.ema_update:
      loss = loss + self.codebook_weight * codebook_loss
    if self.entropy_loss_weight:
      scores = F.code_scores(z, codebook)
      per_sample, batch = F.entropy_terms(-scores / self.entropy_temperature, m)
      ent = per_sample - self.diversity_gamma * batch
      metrics['entropy'] = ent
      loss = loss + self.entropy_loss_weight * ent
    if self.orthogonal_reg_weight:
      orth = F.orthogonal_regularization(codebook)
      metrics['orthogonal'] = orth
      loss = loss + self.orthogonal_reg_weight * orth

    if train:
      st = F.rotation_trick(z, q) if self.rotation_trick else F.straight_through(z, q)
    else:
      st = q
    quantized = self._project_out(st).astype(x.dtype).reshape(x.shape)

    # Metrics (then state updates, which affect later calls only).
    stats = F.usage_stats(idx, self.codebook_size, m)
    if train:
      self._update_state(z, idx, stats['counts'], m)
    metrics['usage'] = stats['usage']
    metrics['perplexity'] = stats['perplexity']
    dead_threshold = self.threshold_ema_dead_code or 1e-3
    metrics['dead_codes'] = jnp.mean(
        (self.cluster_size[...] < dead_threshold).astype(jnp.float32))
    return base.QuantizerOutput(
        quantized=quantized,
        indices=idx.reshape(x.shape[:-1]),
        loss=loss.astype(jnp.float32),
        metrics=metrics,
    )

  # ---------------------------------------------------------------- state

  def _set_codebook(self, new: Array) -> None:
    self.codebook[...] = new.astype(self.codebook[...].dtype)

  def _maybe_kmeans_init(self, z: Array, mask: Array | None) -> None:
    """k-means on the first training batch, inside jit (lax.cond, no host sync)."""
    key = jax.random.fold_in(self._next_key(), 1)

    def run_kmeans(_):
      cb, counts = F.kmeans(key, z, self.codebook_size, self.kmeans_iters,
                            mask=mask, cosine=self.use_cosine_sim,
                            chunk_size=self.chunk_size)
      if self.codebook_transform is not None:
        # SimVQ: the frozen basis stays; fit it so that C·W ≈ centroids.
        cb = jnp.linalg.lstsq(self.codebook_transform.kernel[...].T, cb.T)[0].T
      return cb.astype(self.codebook[...].dtype), counts

    def keep(_):
      return self.codebook[...], self.cluster_size[...]

    cb, counts = lax.cond(self.initialized[...], keep, run_kmeans, None)
    was_init = self.initialized[...]
    self._set_codebook(cb)
    self.cluster_size[...] = jnp.where(was_init, self.cluster_size[...], counts)
    if self.embed_avg is not None:
      self.embed_avg[...] = jnp.where(
          was_init, self.embed_avg[...], cb * counts[:, None])
      # As the peer does, the codebook is the Laplace-smoothed average.
      smoothed = F.laplace_smoothed_codebook(self.cluster_size[...],
                                             self.embed_avg[...], self.eps)
      if self.use_cosine_sim:
        smoothed = F.l2_normalize(smoothed)
      self._set_codebook(jnp.where(was_init, self.codebook[...], smoothed))
    self.initialized[...] = jnp.ones_like(self.initialized[...])

  def _update_state(self, z: Array, idx: Array, counts: Array,
                    mask: Array | None) -> None:
    z = lax.stop_gradient(z).astype(jnp.float32)
    self.cluster_size[...] = F.ema_update(self.cluster_size[...], counts,
                                           self.decay)
    if self.embed_avg is not None:
      w = jnp.ones(idx.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
      embed_sum = jnp.zeros_like(self.embed_avg[...]).at[idx].add(z * w[:, None])
      self.embed_avg[...] = F.ema_update(self.embed_avg[...], embed_sum,
                                          self.decay)
      new = F.laplace_smoothed_codebook(self.cluster_size[...],
                                        self.embed_avg[...], self.eps)
      if self.use_cosine_sim:
        new = F.l2_normalize(new)
      self._set_codebook(new)
    if self.threshold_ema_dead_code > 0:
      self._restart_dead_codes(z, mask)
    self.step[...] = self.step[...] + 1

  def _restart_dead_codes(self, z: Array, mask: Array | None) -> None:
    """Replace codes whose EMA count is below the threshold by batch samples.

    The random draw uses the module's replicated key, so every host and device
    makes the same decision.
    """
    thr = self.threshold_ema_dead_code
    dead = self.cluster_size[...] < thr
    samples = F.sample_rows(self._next_key(), z, self.codebook_size, mask)
    if self.use_cosine_sim:
      samples = F.l2_normalize(samples)
    if self.codebook_transform is not None:
      # SimVQ: choose the frozen-basis rows whose image under W is the sample.
      samples = jnp.linalg.lstsq(self.codebook_transform.kernel[...].T,
                                 samples.T)[0].T
    self._set_codebook(jnp.where(dead[:, None], samples, self.codebook[...]))
    self.cluster_size[...] = jnp.where(dead, thr, self.cluster_size[...])
    if self.embed_avg is not None:
      self.embed_avg[...] = jnp.where(dead[:, None], samples * thr,
                                       self.embed_avg[...])
