"""The public code-level interface: lookup, code_space, sub_quantizers."""

from absl.testing import absltest
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax import quantizers as Q


def _quantizers():
  r = lambda: nnx.Rngs(0)
  return {
      'vq': Q.VectorQuantizer(16, 8, codebook_dim=4, use_cosine_sim=True,
                              rngs=r()),
      'fsq': Q.FSQ((5, 4), 8, rngs=r()),
      'lfq': Q.LFQ(16, 8, num_groups=2, rngs=r()),
      'fq': Q.FactorizedVQ(2, 16, 8, codebook_dim=4, rngs=r()),
      'rvq': Q.ResidualVQ(3, 16, 8, rngs=r()),
  }


class InterfaceTest(absltest.TestCase):

  def test_lookup_is_decode_without_checks(self):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
    for name, q in _quantizers().items():
      idx = q.encode(x)
      np.testing.assert_array_equal(q.lookup(idx), q.decode(idx), err_msg=name)

  def test_code_space_and_sub_quantizers(self):
    qs = _quantizers()
    for name in ('vq', 'fsq', 'lfq'):
      q = qs[name]
      self.assertEqual(q.sub_quantizers(), (), name)
      codes, cosine = q.code_space()
      self.assertEqual(codes.shape[0], q.codebook_size, name)
      self.assertEqual(cosine, name == 'vq')
      # Code k of the space is what index k looks up (before projections).
      if name == 'fsq':
        np.testing.assert_allclose(
            q.lookup(jnp.arange(q.codebook_size)),
            q.project_out(codes), rtol=1e-6)
    self.assertLen(qs['fq'].sub_quantizers(), 2)
    self.assertLen(qs['rvq'].sub_quantizers(), 3)
    for name in ('fq', 'rvq'):
      self.assertIsNone(qs[name].code_space())
    with self.assertRaisesRegex(ValueError, 'codes > 16'):
      Q.FSQ((5, 4)).code_space(max_codes=16)


if __name__ == '__main__':
  absltest.main()
