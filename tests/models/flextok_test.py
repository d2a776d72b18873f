"""FlexTok: the causal register mask, nested dropout, variable-length decoding
and the flow-matching (+ REPA) training signal."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from tokenizers_jax.models import flextok

R = 8


@pytest.fixture(scope='module')
def model():
  return flextok.FlexTok(
      image_size=8, patch_size=4, num_registers=R, width=16, encoder_depth=2,
      decoder_depth=1, num_heads=2, embed_dim=3,
      quantizer=dict(name='fsq', levels=(5, 5, 5)), num_sample_steps=2,
      repa=dict(layer=1, proj_dim=16,
                teacher=dict(name='random_conv', out_dim=8, width=4)),
      rngs=nnx.Rngs(0))


@pytest.fixture(scope='module')
def images():
  return jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3), minval=-1,
                            maxval=1)


def test_register_mask_layout():
  m = flextok.encoder_mask(3, 4)
  assert m.shape == (7, 7)
  assert m[:3, :3].all() and not m[:3, 3:].any()  # patches: patches only
  assert m[3:, :3].all()                           # registers see patches
  for i in range(4):
    for j in range(4):
      assert m[3 + i, 3 + j] == (j <= i)
  assert flextok.encoder_mask(3, 4, causal=False).all()


def test_a_register_never_attends_to_later_registers(model, images):
  """Changing register j's learned input changes the encoder outputs of
  registers j.. only (two layers, so indirect paths count too); without the
  causal mask earlier registers change as well."""
  run = nnx.jit(lambda m, x: m.encode_latents(x))
  before = np.asarray(run(model, images))
  original = model.registers[...]
  j = 3
  # (A random direction: a constant shift would vanish in the LayerNorms.)
  model.registers[...] = original.at[j].add(
      jax.random.normal(jax.random.PRNGKey(9), original.shape[1:]))
  try:
    after = np.asarray(run(model, images))
    np.testing.assert_array_equal(after[:, :j], before[:, :j])
    assert (np.abs(after[:, j:] - before[:, j:]).max(axis=(0, 2)) > 1e-4).all()
    model.causal_registers = False
    base = np.asarray(run(model, images))
    model.registers[...] = original
    reverted = np.asarray(run(model, images))
    assert np.abs(reverted[:, 0] - base[:, 0]).max() > 1e-4
  finally:
    model.registers[...] = original
    model.causal_registers = True


def test_nested_dropout_statistics():
  key = jax.random.PRNGKey(1)
  n = 60000
  k = np.asarray(flextok.sample_num_kept(key, n, R, 'pow2', cond_dropout=0.1))
  assert set(np.unique(k)) == {0, 1, 2, 4, 8}
  assert stats.binomtest(int((k == 0).sum()), n, 0.1).pvalue > 1e-3
  counts = np.array([(k == v).sum() for v in (1, 2, 4, 8)])
  assert stats.chisquare(counts).pvalue > 1e-3
  u = np.asarray(flextok.sample_num_kept(key, n, R, 'uniform'))
  assert u.min() == 1 and u.max() == R
  assert stats.chisquare(np.bincount(u)[1:]).pvalue > 1e-3
  np.testing.assert_array_equal(flextok.kept_choices(6, 'pow2'), [1, 2, 4, 6])
  # Registers at positions >= k become the mask token, the rest are kept.
  tokens = jax.random.normal(key, (3, R, 5))
  mask_token = jnp.arange(5.0)
  out = np.asarray(flextok.nested_dropout(tokens, jnp.array([0, 2, R]),
                                          mask_token))
  for b, kept in enumerate((0, 2, R)):
    np.testing.assert_array_equal(out[b, :kept], tokens[b, :kept])
    np.testing.assert_array_equal(out[b, kept:],
                                  np.broadcast_to(mask_token, (R - kept, 5)))


def test_variable_length_encode_and_decode(model, images):
  ids = nnx.jit(lambda m, x: m.encode(x))(model, images)
  assert ids.shape == (4, R) and ids.dtype == jnp.int32
  assert int(ids.max()) < model.codebook_size == 125
  np.testing.assert_array_equal(
      nnx.jit(lambda m, x: m.encode(x, num_tokens=3))(model, images),
      ids[:, :3])
  dec = nnx.jit(lambda m, i, key: m.decode(i, key=key))
  key = jax.random.PRNGKey(5)
  for length in (1, 3, R):
    out = dec(model, ids[:, :length], key)
    assert out.shape == (4, 8, 8, 3) and np.isfinite(out).all()
  np.testing.assert_array_equal(out, dec(model, ids, key))  # fixed noise
  with pytest.raises(ValueError, match=r'expected 1\.\.8'):
    model.decode(jnp.zeros((1, R + 1), jnp.int32))
  with pytest.raises(ValueError, match='num_tokens must be in'):
    model.encode(images, num_tokens=R + 1)


def test_flow_and_repa_losses_train(model, images):
  """Train mode returns the weighted flow loss, at init (zero output layer,
  v = 0) exactly mean((noise - x0)²) with the noise its rng gives, and the
  REPA loss; Adam steps on one batch of smooth images lower both; eval mode
  returns an Euler sample."""
  x_hat = nnx.jit(lambda m, x: m(x).reconstruction)(model, images)
  assert x_hat.shape == images.shape
  colors = jax.random.uniform(jax.random.PRNGKey(3), (4, 1, 1, 3),
                              minval=-0.8, maxval=0.8)
  ramp = jnp.linspace(-0.1, 0.1, 8)[None, :, None, None]
  x = colors + ramp * jnp.ones((4, 8, 8, 3))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt, x, key):
    def loss_fn(m):
      out = m(x, train=True, rng=key)
      t = out.terms  # REPA weighted 0.5, as configs/flextok.py:repa does.
      return t['flow'] + 0.5 * t['repa'] + t['quantizer'], t
    (_, extra), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m)
    opt.update(m, grads)
    return extra

  keys = jax.random.split(jax.random.PRNGKey(2), 60)
  hist = [jax.device_get(step(model, opt, x, k)) for k in keys]
  flow = np.array([h['flow'] for h in hist])
  repa = np.array([h['repa'] for h in hist])
  noise = jax.random.normal(jax.random.split(keys[0], 3)[2], x.shape)
  np.testing.assert_allclose(flow[0], np.mean((noise - x) ** 2), rtol=1e-5)
  assert flow[-10:].mean() < 0.85 * flow[:10].mean(), flow
  assert 0 <= repa[0] <= 2.0 and repa[-10:].mean() < 0.5 * repa[:10].mean()
