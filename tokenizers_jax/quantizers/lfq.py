"""Lookup-free quantization (MAGVIT-v2), group-wise LFQ (WeTok) and BSQ.

Each of the B = log2(codebook_size) dimensions is sign-quantized; the index is
the bit pattern, least significant bit first (bit i = [z_i > 0]; note that
vector-quantize-pytorch uses the opposite, MSB-first, order). With
`num_groups` = G > 1 the B bits are split into G groups of B/G bits, each its
own 2^(B/G)-code index (WeTok's group-wise LFQ); the entropy loss is computed
per group over 2^(B/G) codes, never over the product codebook.

Entropy loss (per group, averaged over groups):
  E_x[H(p(·|x))] - γ·H(E_x[p(·|x)]),   p(c|x) = softmax_c(2⟨z, c⟩/τ),
computed exactly without materialising N x 2^B logits
(`functional.lfq_entropy_terms`). With `spherical=True` (BSQ), z and the codes
are l2-normalised per group (codes ±1/sqrt(B/G)).

Dimension legend:
  ...: leading axes; N = their product
  D: input dimension; B: total bits; G: groups; b = B/G bits per group
"""

from __future__ import annotations

import math

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp

from tokenizers_jax.quantizers import base
from tokenizers_jax.quantizers import functional as F

Array = jax.Array


class LFQ(base.Quantizer):
  """Lookup-free quantizer.

  Args:
    codebook_size: 2^B, the total (product) codebook size.
    dim: input dimension; linear projections when != B.
    num_groups: G; indices get a trailing axis of size G when G > 1.
    entropy_loss_weight: weight of the entropy loss (MAGVIT-v2: 0.1).
    commitment_loss_weight: weight of ||z - sg(q)||² (MAGVIT-v2: 0.25).
    diversity_gamma: γ.
    entropy_temperature: τ (0.01 = vector-quantize-pytorch's inv_temperature 100).
    codebook_scale: code magnitude (non-spherical).
    spherical: BSQ, binary spherical quantization.
    rngs: `nnx.Rngs` (projections only).
  """

  def __init__(
      self,
      codebook_size: int,
      dim: int | None = None,
      *,
      num_groups: int = 1,
      entropy_loss_weight: float = 0.1,
      commitment_loss_weight: float = 0.25,
      diversity_gamma: float = 1.0,
      entropy_temperature: float = 0.01,
      codebook_scale: float = 1.0,
      spherical: bool = False,
      rngs: nnx.Rngs | None = None,
  ):
    bits = F.num_bits(codebook_size)
    if num_groups < 1 or bits % num_groups:
      raise ValueError(f'num_groups={num_groups} must divide the number of bits '
                       f'log2(codebook_size)={bits}')
    self.bits = bits
    self.num_groups = num_groups
    self.group_bits = bits // num_groups
    if self.group_bits > 31:
      raise ValueError(f'at most 31 bits per group; got {self.group_bits}: use num_groups')
    self.dim = dim or bits
    # Per index position: codes of one group.
    self.codebook_size = 2 ** self.group_bits
    self.num_codebooks = num_groups if num_groups > 1 else None
    self.entropy_loss_weight = entropy_loss_weight
    self.commitment_loss_weight = commitment_loss_weight
    self.diversity_gamma = diversity_gamma
    self.entropy_temperature = entropy_temperature
    self.spherical = spherical
    self.codebook_scale = (1.0 / math.sqrt(self.group_bits) if spherical
                           else codebook_scale)
    if self.dim != bits:
      if rngs is None:
        raise ValueError('LFQ with dim != log2(codebook_size) needs rngs')
      self.project_in = base.linear(self.dim, bits, rngs, ('embed', 'code_dim'))
      self.project_out = base.linear(bits, self.dim, rngs, ('code_dim', 'embed'))
    else:
      self.project_in = self.project_out = None

  def _pre(self, x: Array) -> Array:
    """[..., D] -> [..., G, b] values to quantize."""
    z = x if self.project_in is None else self.project_in(x)
    z = z.reshape(z.shape[:-1] + (self.num_groups, self.group_bits))
    return F.l2_normalize(z) if self.spherical else z

  def _indices_out(self, idx: Array) -> Array:
    return idx if self.num_codebooks is not None else idx[..., 0]

  def _codes_out(self, codes: Array) -> Array:
    q = codes.reshape(codes.shape[:-2] + (self.bits,))
    return q if self.project_out is None else self.project_out(q)

  def __call__(self, x: Array, *, train: bool = False,
               mask: Array | None = None) -> base.QuantizerOutput:
    name = type(self).__name__
    base.check_input(x, self.dim, name)
    base.check_mask(mask, x.shape[:-1], name)
    z = self._pre(x)  # [..., G, b]
    codes, idx = F.lfq_quantize(z, self.codebook_scale)
    st = F.straight_through(z, codes) if train else codes
    quantized = self._codes_out(st).astype(x.dtype)

    zf = z.reshape(-1, self.num_groups, self.group_bits)
    cf = codes.reshape(zf.shape)
    m = None if mask is None else mask.reshape(-1)
    commitment = base.masked_mean(
        jnp.square(zf.astype(jnp.float32) - lax.stop_gradient(cf).astype(jnp.float32)), m)
    per_sample, batch = F.lfq_entropy_terms(
        zf, temperature=self.entropy_temperature, scale=self.codebook_scale,
        mask=m)
    ent = per_sample - self.diversity_gamma * batch
    loss = (self.entropy_loss_weight * ent
            + self.commitment_loss_weight * commitment)
    flat_idx = idx.reshape(-1, self.num_groups)
    usage, perplexity = [], []
    for g in range(self.num_groups):
      s = F.usage_stats(flat_idx[:, g], self.codebook_size, m)
      usage.append(s['usage'])
      perplexity.append(s['perplexity'])
    metrics = {
        'commitment': commitment,
        'entropy': ent,
        'per_sample_entropy': per_sample,
        'codebook_entropy': batch,
        'usage': jnp.mean(jnp.stack(usage)),
        'perplexity': jnp.mean(jnp.stack(perplexity)),
        'dead_codes': 1.0 - jnp.mean(jnp.stack(usage)),
    }
    return base.QuantizerOutput(quantized=quantized,
                                indices=self._indices_out(idx),
                                loss=loss.astype(jnp.float32), metrics=metrics)

  def encode(self, x: Array) -> Array:
    base.check_input(x, self.dim, type(self).__name__)
    return self._indices_out(F.lfq_quantize(self._pre(x))[1])

  def lookup(self, indices: Array) -> Array:
    """[...] (or [..., G] with groups) indices -> [..., D]."""
    idx = indices if self.num_codebooks is not None else indices[..., None]
    codes = F.lfq_codes(idx, self.group_bits, self.codebook_scale)
    return self._codes_out(codes)

  def decode(self, indices: Array) -> Array:
    base.check_indices(indices, self.codebook_size, type(self).__name__)
    if self.num_codebooks is not None and indices.shape[-1] != self.num_groups:
      raise ValueError(f'LFQ.decode: expected indices of shape (..., {self.num_groups});'
                       f' got {tuple(indices.shape)}')
    return self.lookup(indices)

  def code_space(self, max_codes: int | None = None) -> base.CodeSpace:
    """The 2^b sign codes of one group [2^b, b] (shared by all groups),
    euclidean (which orders them as the Hamming distance does).

    Raises:
      ValueError: if a group has more than `max_codes` codes.
    """
    size = self.codebook_size  # Codes of one group.
    if max_codes is not None and size > max_codes:
      raise ValueError(
          f'{type(self).__name__}: enumerating the implicit codebook, but one '
          f'group has 2^{self.group_bits} = {size} codes > {max_codes}; use '
          f'num_groups so that a group has at most '
          f'{max_codes.bit_length() - 1} bits or an explicit codebook '
          '(VectorQuantizer)')
    codes = F.lfq_codes(jnp.arange(size, dtype=jnp.int32), self.group_bits,
                        self.codebook_scale)
    return base.CodeSpace(codes, False)
