"""Tests for tokenizers_jax.models.discriminator.

The reference is an independent PyTorch (NCHW) PatchGAN written below; the
Flax model gets its weights (and BatchNorm statistics) and must reproduce its
logits in eval and train mode, and its running-mean update.

Dimension legend:
  B: batch, H/W: image size, h/w: logit grid
"""

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from tokenizers_jax.frontends.image import group_count
from tokenizers_jax.models import discriminator as disc_lib

NDF, N_LAYERS = 16, 2


class TorchPatchGAN(nn.Module):
  """PatchGAN: k4 s2 convs, then a k4 s1 conv, then a k4 s1 conv to 1."""

  def __init__(self, ndf, n_layers, norm):
    super().__init__()
    self.norm = norm
    self.conv_in = nn.Conv2d(3, ndf, 4, 2, 1)
    self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
    width = ndf
    for n in range(1, n_layers + 1):
      out = ndf * min(2 ** n, 8)
      self.convs.append(nn.Conv2d(width, out, 4, 2 if n < n_layers else 1, 1,
                                  bias=norm != 'batch'))
      if norm == 'batch':
        self.norms.append(nn.BatchNorm2d(out, momentum=0.1, eps=1e-5))
      elif norm == 'group':
        self.norms.append(nn.GroupNorm(group_count(out, 32), out, eps=1e-5))
      else:
        self.norms.append(nn.Identity())
      width = out
    self.conv_out = nn.Conv2d(width, 1, 4, 1, 1)

  def forward(self, x):
    h = F.leaky_relu(self.conv_in(x), 0.2)
    for conv, norm in zip(self.convs, self.norms):
      h = F.leaky_relu(norm(conv(h)), 0.2)
    return self.conv_out(h)


def _build(norm, **kw):
  # The RBG key keeps the per-shape initializer compiles cheap on CPU.
  return disc_lib.NLayerDiscriminator(
      ndf=NDF, n_layers=N_LAYERS, norm=norm, **kw,
      rngs=nnx.Rngs(jax.random.key(0, impl='rbg')))


def _copy(tmodel, fmodel):
  def conv(t, f):
    f.kernel[...] = jnp.asarray(t.weight.detach().numpy().transpose(2, 3, 1, 0))
    if t.bias is not None:
      f.bias[...] = jnp.asarray(t.bias.detach().numpy())
    else:
      assert f.bias is None
  conv(tmodel.conv_in, fmodel.conv_in)
  conv(tmodel.conv_out, fmodel.conv_out)
  for tc, fc in zip(tmodel.convs, fmodel.convs):
    conv(tc, fc)
  for tn, fn in zip(tmodel.norms, fmodel.norms):
    if isinstance(tn, nn.Identity):
      assert fn is None
      continue
    fn.scale[...] = jnp.asarray(tn.weight.detach().numpy())
    fn.bias[...] = jnp.asarray(tn.bias.detach().numpy())
    if isinstance(tn, nn.BatchNorm2d):
      fn.mean[...] = jnp.asarray(tn.running_mean.numpy())
      fn.var[...] = jnp.asarray(tn.running_var.numpy())


def _nhwc(t):
  return t.detach().permute(0, 2, 3, 1).numpy()


class NLayerDiscriminatorTest(parameterized.TestCase):

  @parameterized.parameters(('batch', False), ('batch', True),
                            ('group', False), ('none', False),
                            ('batch', True, 'space_to_depth'))
  def test_matches_pytorch(self, norm, train, strided_conv='direct'):
    torch.manual_seed(0)
    tmodel = TorchPatchGAN(NDF, N_LAYERS, norm)
    for m in tmodel.modules():
      if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.3)
        nn.init.normal_(m.bias, 0.0, 0.3)
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.normal_(0.0, 0.3)
        m.running_var.uniform_(0.5, 2.0)
    old_mean = [m.running_mean.clone() for m in tmodel.norms
                if isinstance(m, nn.BatchNorm2d)]
    old_var = [m.running_var.clone() for m in tmodel.norms
               if isinstance(m, nn.BatchNorm2d)]
    fmodel = _build(norm, strided_conv=strided_conv)
    _copy(tmodel, fmodel)

    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3))
    x = x.astype(np.float32)
    tmodel.train(train)
    with torch.no_grad():
      expected = _nhwc(tmodel(torch.from_numpy(x).permute(0, 3, 1, 2)))

    @nnx.jit(static_argnums=2)
    def run(model, x, train):
      return model(x, train=train)

    logits = run(fmodel, jnp.asarray(x), train)
    self.assertEqual(logits.shape, (4, 6, 6, 1))
    self.assertEqual(logits.dtype, jnp.float32)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)

    if norm == 'batch':
      bns = [m for m in tmodel.norms if isinstance(m, nn.BatchNorm2d)]
      for i, (tn, fn) in enumerate(zip(bns, fmodel.norms)):
        if not train:
          np.testing.assert_array_equal(fn.mean[...], old_mean[i].numpy())
          continue
        np.testing.assert_allclose(fn.mean[...], tn.running_mean.numpy(),
                                   rtol=1e-4, atol=1e-5)
        # PyTorch tracks the unbiased batch variance, Flax the biased one.
        n = 4 * {0: 8, 1: 7}[i] ** 2  # Elements per channel at that layer.
        torch_step = tn.running_var.numpy() - 0.9 * old_var[i].numpy()
        np.testing.assert_allclose(
            fn.var[...], 0.9 * old_var[i].numpy() + torch_step * (n - 1) / n,
            rtol=1e-4, atol=1e-5)

  def test_taming_default_shape(self):
    model = nnx.eval_shape(
        lambda: disc_lib.NLayerDiscriminator(rngs=nnx.Rngs(0)))
    out = jax.eval_shape(lambda m, x: m(x), model,
                         jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32))
    self.assertEqual(out.shape, (2, 30, 30, 1))
    self.assertEqual([c.kernel.shape[-1] for c in model.convs],
                     [128, 256, 512])
    self.assertEqual(model.convs[-1].strides, (1, 1))

  def test_init_and_metadata(self):
    model = _build('batch')
    kernel = model.convs[1].kernel  # [4, 4, 32, 64]
    self.assertAlmostEqual(float(jnp.std(kernel[...])), 0.02, delta=0.002)
    scale = model.norms[1].scale[...]
    self.assertAlmostEqual(float(jnp.mean(scale)), 1.0, delta=0.01)
    self.assertAlmostEqual(float(jnp.std(scale)), 0.02, delta=0.01)
    self.assertIsNone(model.convs[0].bias)  # No bias before BatchNorm.
    self.assertIsNotNone(model.conv_in.bias)
    self.assertEqual(kernel.get_metadata()['out_sharding'],
                     ('conv_h', 'conv_w', 'embed_in', 'embed'))
    self.assertFalse(kernel.get_metadata()['eager_sharding'])
    self.assertEqual(model.norms[0].scale.get_metadata()['out_sharding'],
                     ('embed',))

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'Unknown norm'):
      disc_lib.NLayerDiscriminator(norm='instance', rngs=nnx.Rngs(0))
    with self.assertRaisesRegex(ValueError, 'Unknown strided_conv'):
      disc_lib.NLayerDiscriminator(strided_conv='fft', rngs=nnx.Rngs(0))
    model = nnx.eval_shape(lambda: _build('none'))
    with self.assertRaisesRegex(ValueError, r'\[B, H, W, 3\]'):
      jax.eval_shape(lambda m, x: m(x), model,
                     jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32))


if __name__ == '__main__':
  absltest.main()
