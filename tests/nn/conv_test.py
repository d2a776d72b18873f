"""nn.conv: its fast forms against XLA's own convolutions."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def _weighted(y):
  """A loss whose gradient differs per output element."""
  return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)


def test_space_to_depth_equals_the_strided_convolution():
  """Values and both gradients of the space-to-depth form against XLA's
  stride-2 conv, for the PatchGAN's 4x4 pad-1 conv and an asymmetrically
  padded 2x2 one; an odd padded size keeps the strided conv (bitwise)."""
  rng = np.random.default_rng(3)
  for shape, kernel, padding in (((2, 8, 6, 3), (4, 4, 3, 5), ((1, 1), (1, 1))),
                                 ((1, 6, 6, 4), (2, 2, 4, 2), ((0, 2), (1, 1)))):
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel), jnp.float32)
    assert conv_lib.s2d_applies(x.shape, w.shape, (2, 2), padding)
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, _DIMS)

    def loss(fn, x, w, padding=padding, dn=dn):
      return _weighted(fn(x, w, (2, 2), padding, dimension_numbers=dn))

    got = jax.value_and_grad(functools.partial(
        loss, conv_lib.conv_general_dilated_s2d), (0, 1))(x, w)
    want = jax.value_and_grad(functools.partial(
        loss, jax.lax.conv_general_dilated), (0, 1))(x, w)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  x = jnp.asarray(rng.standard_normal((1, 7, 7, 2)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 4, 2, 3)), jnp.float32)
  assert not conv_lib.s2d_applies(x.shape, w.shape, (2, 2), ((1, 1), (1, 1)))
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, _DIMS)
  np.testing.assert_array_equal(
      conv_lib.conv_general_dilated_s2d(x, w, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=dn),
      jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                   dimension_numbers=dn))


def test_subpixel_upsample_equals_repeat_then_conv():
  """upsample2x_conv3x3 against jnp.repeat + a 'SAME' 3x3 conv: values and
  the gradients of input and kernel; a wrong kernel shape is an error."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 5, 4, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 6)), jnp.float32)

  def reference(x, w):
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return jax.lax.conv_general_dilated(up, w, (1, 1), 'SAME',
                                        dimension_numbers=_DIMS)

  got = jax.value_and_grad(lambda x, w: _weighted(
      conv_lib.upsample2x_conv3x3(x, w)), (0, 1))(x, w)
  want = jax.value_and_grad(lambda x, w: _weighted(reference(x, w)),
                            (0, 1))(x, w)
  assert conv_lib.upsample2x_conv3x3(x, w).shape == (2, 10, 8, 6)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='kernel'):
    conv_lib.upsample2x_conv3x3(x, w[:2])
