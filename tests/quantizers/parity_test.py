"""Parity with vector-quantize-pytorch (VQP) on identical inputs and codebooks."""

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
vqp = pytest.importorskip('vector_quantize_pytorch')

from tokenizers_jax import quantizers as Q  # pylint: disable=g-import-not-at-top
from tokenizers_jax.quantizers import functional as F  # pylint: disable=g-import-not-at-top

torch.set_num_threads(1)

FSQ_TABLE = [(8, 6, 5), (8, 5, 5, 5), (7, 5, 5, 5, 5), (8, 8, 8, 6, 5),
             (8, 8, 8, 5, 5, 5)]


def t2n(t):
  return t.detach().cpu().numpy()


def reverse_bits(idx, bits):
  out = np.zeros_like(idx)
  for i in range(bits):
    out |= ((idx >> i) & 1) << (bits - 1 - i)
  return out


class VQParityTest(parameterized.TestCase):

  @parameterized.parameters(False, True)
  def test_nearest_indices_and_quantized(self, cosine):
    torch.manual_seed(0)
    peer = vqp.VectorQuantize(dim=16, codebook_size=96, use_cosine_sim=cosine,
                              rotation_trick=False).eval()
    x = torch.randn(3, 40, 16)
    quantized, indices, _ = peer(x)
    ours = Q.VectorQuantizer(96, 16, use_cosine_sim=cosine, rngs=nnx.Rngs(0))
    ours.codebook[...] = jnp.asarray(t2n(peer._codebook.embed[0]))
    out = ours(jnp.asarray(t2n(x)), train=False)
    np.testing.assert_array_equal(out.indices, t2n(indices))
    np.testing.assert_allclose(out.quantized, t2n(quantized), rtol=1e-6, atol=1e-6)

  def test_ema_update_one_step(self):
    torch.manual_seed(1)
    peer = vqp.VectorQuantize(dim=8, codebook_size=32, decay=0.9,
                              commitment_weight=1.0, rotation_trick=False).train()
    x = torch.randn(4, 50, 8)
    cb0 = t2n(peer._codebook.embed[0]).copy()
    _, idx, _ = peer(x)
    ours = Q.VectorQuantizer(32, 8, ema_update=True, decay=0.9, rngs=nnx.Rngs(0))
    ours.codebook[...] = jnp.asarray(cb0)
    ours.embed_avg[...] = jnp.asarray(cb0)
    out = ours(jnp.asarray(t2n(x)), train=True)
    np.testing.assert_array_equal(out.indices, t2n(idx))
    np.testing.assert_allclose(ours.cluster_size[...],
                               t2n(peer._codebook.cluster_size[0]), rtol=1e-6)
    np.testing.assert_allclose(ours.embed_avg[...],
                               t2n(peer._codebook.embed_avg[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.codebook[...],
                               t2n(peer._codebook.embed[0]), rtol=1e-5, atol=1e-6)

  def test_residual_vq_levels(self):
    torch.manual_seed(2)
    peer = vqp.ResidualVQ(dim=16, num_quantizers=4, codebook_size=64,
                          rotation_trick=False).eval()
    x = torch.randn(2, 30, 16)
    quantized, indices, _ = peer(x)
    ours = Q.ResidualVQ(4, 64, 16, rngs=nnx.Rngs(0))
    for lvl, layer in zip(ours.levels, peer.layers):
      lvl.codebook[...] = jnp.asarray(t2n(layer._codebook.embed[0]))
    out = ours(jnp.asarray(t2n(x)), train=False)
    np.testing.assert_array_equal(out.indices, t2n(indices))
    np.testing.assert_allclose(out.quantized, t2n(quantized), rtol=1e-5, atol=1e-5)
    # Each level's codes match the peer's per-level codes.
    per_level = t2n(peer.get_codes_from_indices(indices))  # [Q, B, N, D]
    ours_levels = ours.codes_per_level(out.indices)
    np.testing.assert_allclose(np.moveaxis(np.asarray(ours_levels), -2, 0),
                               per_level, rtol=1e-6, atol=1e-6)


class FSQParityTest(parameterized.TestCase):

  @parameterized.parameters(*FSQ_TABLE)
  def test_codes_and_indices(self, *levels):
    torch.manual_seed(3)
    peer = vqp.FSQ(levels=list(levels)).eval()
    x = torch.randn(2, 200, len(levels)) * 2
    codes, indices = peer(x)
    ours = Q.FSQ(levels)
    out = ours(jnp.asarray(t2n(x)))
    np.testing.assert_array_equal(out.indices, t2n(indices))
    np.testing.assert_allclose(out.quantized, t2n(codes), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.decode(out.indices),
                               t2n(peer.indices_to_codes(indices)), atol=1e-6)


class LFQParityTest(parameterized.TestCase):

  @parameterized.parameters((4, 1), (6, 1), (8, 2))
  def test_codes_and_entropy_loss(self, bits, groups):
    torch.manual_seed(4)
    kw = dict(entropy_loss_weight=0.1, commitment_loss_weight=0.25,
              diversity_gamma=1.0)
    per_group = bits // groups
    peer = vqp.LFQ(dim=bits, codebook_size=2 ** per_group, num_codebooks=groups,
                   **kw).train()
    # Small inputs keep every code probability above the peer's 1e-5 log clamp,
    # the one place where its entropy differs from the exact value.
    x = (torch.rand(2, 64, bits) - 0.5) * 0.006
    (quantized, indices, aux), breakdown = peer(x, return_loss_breakdown=True)
    ours = Q.LFQ(2 ** bits, num_groups=groups, entropy_temperature=0.01, **kw)
    out = ours(jnp.asarray(t2n(x)), train=True)
    np.testing.assert_allclose(out.quantized, t2n(quantized), atol=1e-6)
    # Ours is LSB-first, the peer's MSB-first.
    np.testing.assert_array_equal(out.indices, reverse_bits(t2n(indices), per_group))
    np.testing.assert_allclose(out.metrics['per_sample_entropy'],
                               float(breakdown.per_sample_entropy), rtol=1e-4)
    np.testing.assert_allclose(out.metrics['codebook_entropy'],
                               float(breakdown.batch_entropy), rtol=1e-4)
    np.testing.assert_allclose(out.metrics['commitment'],
                               float(breakdown.commitment), rtol=1e-4)
    np.testing.assert_allclose(out.loss, float(aux), rtol=1e-4, atol=1e-6)


if __name__ == '__main__':
  absltest.main()
