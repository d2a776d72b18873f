"""TiTok / One-D-Piece: tail drop equals truncation, its sampling statistics,
variable-length decoding, and proxy-code (two-stage) training against a
frozen VQ-GAN."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from tokenizers_jax import config_lib
from tokenizers_jax.models import teachers
from tokenizers_jax.models import titok
from tokenizers_jax.models import registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K = 6


@pytest.fixture(scope='module')
def model():
  return titok.TiTok(image_size=8, patch_size=4, num_tokens=K, width=16,
                     encoder_depth=1, decoder_depth=1, num_heads=2,
                     embed_dim=4, quantizer=dict(name='vq', codebook_size=16,
                                                 use_cosine_sim=True),
                     tail_drop='example', rngs=nnx.Rngs(0))


def test_tail_drop_equals_truncation(model):
  """Masking latents k..K-1 gives exactly the decoder output of the first k
  latents alone (per example k)."""
  zq = jax.random.normal(jax.random.PRNGKey(0), (3, K, 4))
  kept = jnp.array([1, 3, K])
  run = nnx.jit(lambda m, z, k: m.decode_features(z, k))
  masked = run(model, zq, kept)
  for b, k in enumerate([1, 3, K]):
    alone = run(model, zq[b:b + 1, :k], None)
    np.testing.assert_allclose(masked[b], alone[0], atol=1e-5)
  # Truncation changes the output (the tail tokens were visible before).
  assert not np.allclose(masked[0], run(model, zq, None)[0], atol=1e-3)


def test_tail_drop_sampling_statistics():
  keys = jax.random.split(jax.random.PRNGKey(1), 3000)
  per_batch = np.asarray(jax.vmap(
      lambda k: titok.sample_num_kept(k, 4, K, 'batch'))(keys))
  assert (per_batch == per_batch[:, :1]).all()  # one k per batch
  per_example = np.asarray(titok.sample_num_kept(keys[0], 30000, K,
                                                 'example'))
  for draws in (per_batch[:, 0], per_example):
    assert draws.min() == 1 and draws.max() == K
    counts = np.bincount(draws, minlength=K + 1)[1:]
    assert stats.chisquare(counts).pvalue > 1e-3
  with pytest.raises(ValueError, match='unknown tail_drop'):
    titok.sample_num_kept(keys[0], 2, K, 'token')


def test_variable_length_encode_decode(model):
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 8, 8, 3), minval=-1,
                         maxval=1)
  enc = nnx.jit(lambda m, x: m.encode(x))
  ids = enc(model, x)
  assert ids.shape == (2, K) and ids.dtype == jnp.int32
  np.testing.assert_array_equal(
      nnx.jit(lambda m, x: m.encode(x, num_tokens=2))(model, x), ids[:, :2])
  dec = nnx.jit(lambda m, i: m.decode(i))
  for length in (1, 4, K):
    assert dec(model, ids[:, :length]).shape == (2, 8, 8, 3)
  with pytest.raises(ValueError, match=r'expected 1\.\.6'):
    model.decode(jnp.zeros((2, K + 1), jnp.int32))
  with pytest.raises(ValueError, match='num_tokens must be in'):
    model.encode(x, num_tokens=0)
  with pytest.raises(ValueError, match=r'expects images \[B, 8, 8, 3\]'):
    model.encode(jnp.zeros((2, 16, 16, 3)))
  # Train mode with an rng draws k and reports it.
  out = nnx.jit(lambda m, x: m(x, train=True,
                                rng=jax.random.PRNGKey(0)))(model, x)
  assert 1 <= float(out.metrics['tokens_kept']) <= K
  assert set(out.terms) == {'quantizer'} == set(model.loss_terms)


def test_proxy_codes_against_a_frozen_vqgan():
  """Stage 1: the cross-entropy targets are the teacher's codes on the patch
  grid (checked against numpy), the teacher is frozen, and training on the
  proxy loss lowers it."""
  config = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'vqgan.py') + ':test')
  vq = registry.build_model(config, seed=1)  # 16², f=2: 8x8 codes
  with pytest.raises(ValueError, match='do not match the patch grid'):
    titok.TiTok(image_size=16, patch_size=4, num_tokens=4, width=16,
                encoder_depth=1, decoder_depth=1, num_heads=2, embed_dim=4,
                quantizer=dict(name='vq', codebook_size=16),
                proxy_teacher=vq, rngs=nnx.Rngs(0))
  model = titok.TiTok(image_size=16, patch_size=2, num_tokens=4, width=16,
                      encoder_depth=1, decoder_depth=1, num_heads=2,
                      embed_dim=4, quantizer=dict(name='vq', codebook_size=16,
                                                  use_cosine_sim=True),
                      proxy_teacher=vq, rngs=nnx.Rngs(0))
  assert not jax.tree.leaves(nnx.state(model.teacher, nnx.Param))
  frozen_before = jax.tree.map(np.array,
                               nnx.state(model.teacher, teachers.Frozen))
  x = jax.random.uniform(jax.random.PRNGKey(3), (4, 16, 16, 3), minval=-1,
                         maxval=1)
  key = jax.random.PRNGKey(0)
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt, x):
    def loss_fn(m):
      out = m(x, train=True, rng=key)
      logits = m.head(m.decode_features(out.quantizer.quantized))
      ce = out.terms['proxy_ce']
      return ce + out.terms['quantizer'], (ce, logits, m.teacher.encode(x))
    (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m)
    opt.update(m, grads)
    return aux

  ce, logits, codes = step(model, opt, x)
  logits = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
  targets = np.asarray(codes).reshape(-1)
  top = logits.max(1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
  np.testing.assert_allclose(ce, -logp[np.arange(len(targets)), targets]
                             .mean(), rtol=1e-4)
  losses = [float(ce)] + [float(step(model, opt, x)[0]) for _ in range(20)]
  assert losses[-1] < 0.7 * losses[0], losses
  after = nnx.state(model.teacher, teachers.Frozen)
  jax.tree.map(np.testing.assert_array_equal, frozen_before,
               jax.tree.map(np.array, after))
