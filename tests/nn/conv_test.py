"""nn.conv: the small-input and wide convolution gradients against XLA's own."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.models.discriminator import NLayerDiscriminator
from tokenizers_jax.nn import conv as conv_lib

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _loss(conv_fn, padding):
  def loss(x, w):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, _DIMS)
    y = conv_fn(x, w, (1, 1), padding, dimension_numbers=dn)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)
  return loss


def test_small_input_gradient_equals_xla_and_forward_is_bitwise_same():
  rng = np.random.default_rng(0)
  # A 4x4 map under a 4x4 kernel (the PatchGAN's last stride-1 conv at 32²),
  # symmetric and asymmetric padding.
  for shape, kernel, padding in (((2, 4, 4, 6), (4, 4, 6, 5), ((1, 1), (1, 1))),
                                 ((3, 3, 4, 2), (4, 4, 2, 3), ((2, 1), (0, 3)))):
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel), jnp.float32)
    assert conv_lib.needs_small_input_grad(x.shape, w.shape, (1, 1))
    ours, ref = (_loss(conv_lib.conv_general_dilated, padding),
                 _loss(jax.lax.conv_general_dilated, padding))
    assert float(ours(x, w)) == float(ref(x, w))
    (gx, gw), (rx, rw) = (jax.grad(ours, (0, 1))(x, w),
                          jax.grad(ref, (0, 1))(x, w))
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(gw, rw)  # XLA's own kernel gradient.


def test_larger_maps_take_the_plain_convolution_bitwise():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 4, 4, 3)), jnp.float32)
  assert not conv_lib.needs_small_input_grad(x.shape, w.shape, (1, 1))
  padding = ((1, 1), (1, 1))
  got = jax.grad(_loss(conv_lib.conv_general_dilated, padding), (0, 1))(x, w)
  want = jax.grad(_loss(jax.lax.conv_general_dilated, padding), (0, 1))(x, w)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_discriminator_gradient_at_32px_with_three_layers():
  """The PatchGAN whose 4x4 map meets a 4x4 kernel: its input gradient equals
  the one through plain `nnx.Conv`s with the same weights."""
  disc = NLayerDiscriminator(ndf=4, n_layers=3, norm='none',
                             rngs=nnx.Rngs(0))
  plain = NLayerDiscriminator(ndf=4, n_layers=3, norm='none',
                              rngs=nnx.Rngs(0))
  for module in [m for _, m in nnx.iter_graph(plain)
                 if isinstance(m, nnx.Conv)]:
    module.conv_general_dilated = jax.lax.conv_general_dilated
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)),
                  jnp.float32)
  grad = lambda d: jax.grad(lambda x: jnp.sum(d(x) ** 2))(x)
  np.testing.assert_allclose(grad(disc), grad(plain), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(disc(x), plain(x))


def test_gemm_kernel_gradient_equals_xla():
  """kh*kw matmuls against XLA's own kernel gradient: 3x3 and 4x4 kernels,
  symmetric, asymmetric and zero padding."""
  rng = np.random.default_rng(2)
  for shape, kernel, padding in (((2, 6, 5, 3), (3, 3, 3, 4), ((1, 1), (1, 1))),
                                 ((1, 7, 6, 2), (4, 4, 2, 3), ((2, 1), (0, 3))),
                                 ((3, 5, 5, 2), (2, 3, 2, 2), ((0, 0), (0, 0)))):
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel), jnp.float32)
    y, vjp = jax.vjp(lambda k: jax.lax.conv_general_dilated(
        x, k, (1, 1), padding, dimension_numbers=_DIMS), w)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    np.testing.assert_allclose(
        conv_lib.gemm_kernel_grad(x, g, w.shape, padding), vjp(g)[0],
        rtol=1e-5, atol=1e-5)


def test_wide_layers_take_the_gemm_kernel_gradient():
  """A wide 'SAME' 3x3 conv through the dispatcher: forward and input
  gradient bitwise XLA's, kernel gradient equal within rounding."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 32, 32, 256)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 256, 256)) / 48, jnp.float32)
  assert conv_lib.needs_gemm_kernel_grad(x.shape, w.shape, (1, 1),
                                         ((1, 1), (1, 1)))

  def loss(conv_fn):
    def f(x, w):
      dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, _DIMS)
      y = conv_fn(x, w, (1, 1), 'SAME', dimension_numbers=dn)
      return jnp.sum(jnp.sin(y)), y
    return jax.jit(jax.grad(f, (0, 1), has_aux=True))

  (gx, gw), y = loss(conv_lib.conv_general_dilated)(x, w)
  (rx, rw), ry = loss(jax.lax.conv_general_dilated)(x, w)
  np.testing.assert_array_equal(y, ry)
  np.testing.assert_array_equal(gx, rx)
  assert not np.array_equal(gw, rw)  # The matmul path ran...
  np.testing.assert_allclose(gw, rw, rtol=2e-5, atol=2e-5 * np.abs(rw).max())


def test_tiny_configs_keep_xla_gradients_and_f16_goes_wide(monkeypatch):
  """Which convolutions of real models take the matmul kernel gradient: none
  of the tiny VQ-GAN's (its results stay bitwise), the wide ones of the
  paper f16 model."""
  from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
  seen = []
  real = conv_lib.needs_gemm_kernel_grad

  def spy(*args):
    seen.append((args[0], args[1], real(*args)))
    return seen[-1][-1]

  monkeypatch.setattr(conv_lib, 'needs_gemm_kernel_grad', spy)
  counts = {}
  for variant, batch in (('tiny', 16), ('imagenet_f16', 2)):
    config = config_lib.load_config_file(
        f'{os.path.dirname(__file__)}/../../configs/vqgan.py:{variant}')
    size = config.data.image_size
    seen.clear()
    gen, disc = nnx.eval_shape(lambda: steps_lib.build_models(config))
    for model, call in ((gen, lambda m, x: m(x)),
                        (disc, lambda m, x: m(x, train=False))):
      graph, state = nnx.split(model)
      jax.eval_shape(lambda s, x, g=graph, c=call: c(nnx.merge(g, s), x),
                     state, jax.ShapeDtypeStruct((batch, size, size, 3),
                                                 jnp.float32))
    counts[variant] = (sum(w for *_, w in seen), len(seen))
  assert counts['tiny'][0] == 0 and counts['tiny'][1] > 10, counts
  assert counts['imagenet_f16'][0] >= 10, counts
