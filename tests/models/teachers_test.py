"""Tests for tokenizers_jax.models.teachers.

The ViT reference is an independent tiny PyTorch ViT written below in timm's
module layout (random init); its `state_dict()` is saved with `torch.save`,
loaded with `ViTTeacher.from_file`, and both must give the same CLS features.

Dimension legend:
  B: batch, S: image size, P: patch size, D: width, M: MLP width
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from tokenizers_jax.models import teachers as teachers_lib

S, P, D, DEPTH, HEADS, M = 16, 4, 16, 2, 2, 32


class TorchBlock(nn.Module):

  def __init__(self, d, heads, m, eps, act):
    super().__init__()
    self.heads, self.act = heads, act
    self.norm1 = nn.LayerNorm(d, eps=eps)
    self.attn = nn.Module()
    self.attn.qkv = nn.Linear(d, 3 * d)
    self.attn.proj = nn.Linear(d, d)
    self.norm2 = nn.LayerNorm(d, eps=eps)
    self.mlp = nn.Module()
    self.mlp.fc1 = nn.Linear(d, m)
    self.mlp.fc2 = nn.Linear(m, d)

  def forward(self, x):
    b, n, d = x.shape
    hd = d // self.heads
    qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, hd]
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
    x = x + self.attn.proj(a.transpose(1, 2).reshape(b, n, d))
    h = self.mlp.fc1(self.norm2(x))
    h = h * torch.sigmoid(1.702 * h) if self.act == 'quick_gelu' else F.gelu(h)
    return x + self.mlp.fc2(h)


class TorchViT(nn.Module):
  """CLS-token ViT; CLIP flavour adds `norm_pre` and a bias-free `head`."""

  def __init__(self, clip=False):
    super().__init__()
    eps = 1e-5 if clip else 1e-6
    act = 'quick_gelu' if clip else 'gelu'
    self.patch_embed = nn.Module()
    self.patch_embed.proj = nn.Conv2d(3, D, P, P)
    self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.5)
    self.pos_embed = nn.Parameter(torch.randn(1, (S // P) ** 2 + 1, D) * 0.5)
    self.norm_pre = nn.LayerNorm(D, eps=eps) if clip else None
    self.blocks = nn.ModuleList(
        [TorchBlock(D, HEADS, M, eps, act) for _ in range(DEPTH)])
    self.norm = nn.LayerNorm(D, eps=eps)
    self.head = nn.Linear(D, 8, bias=False) if clip else None
    with torch.no_grad():  # Non-trivial LayerNorm affine parameters.
      for mod in self.modules():
        if isinstance(mod, nn.LayerNorm):
          mod.weight.uniform_(0.5, 1.5)
          mod.bias.uniform_(-0.2, 0.2)

  def forward(self, x, grid=None):
    """x: normalised [B, 3, H, W]."""
    t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
    pos = self.pos_embed
    g = int(math.isqrt(pos.shape[1] - 1))
    gh, gw = x.shape[2] // P, x.shape[3] // P
    if (gh, gw) != (g, g):
      grid_pos = pos[:, 1:].reshape(1, g, g, D).permute(0, 3, 1, 2)
      grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode='bilinear',
                               align_corners=False)
      pos = torch.cat([pos[:, :1],
                       grid_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, D)], 1)
    t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + pos
    if self.norm_pre is not None:
      t = self.norm_pre(t)
    for blk in self.blocks:
      t = blk(t)
    out = self.norm(t)[:, 0]
    return self.head(out) if self.head is not None else out


def _images(size, seed=0, b=3):
  return np.random.default_rng(seed).uniform(-1, 1, (b, size, size, 3)).astype(
      np.float32)


def _torch_features(net, images, mean, std):
  x = (images + 1) / 2
  x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  with torch.no_grad():
    return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.fixture(scope='module')
def vit_files(tmp_path_factory):
  torch.manual_seed(0)
  out = {}
  for name in ('dino', 'clip'):
    net = TorchViT(clip=name == 'clip').eval()
    path = tmp_path_factory.mktemp('vit') / f'{name}.pth'
    torch.save(net.state_dict(), path)
    out[name] = (net, path)
  return out


@pytest.mark.parametrize('name', ['dino', 'clip'])
def test_vit_matches_torch(vit_files, name):
  net, path = vit_files[name]
  if name == 'dino':
    teacher = teachers_lib.ViTTeacher.from_file(path, num_heads=HEADS)
    mean, std = teachers_lib.IMAGENET_MEAN, teachers_lib.IMAGENET_STD
  else:
    teacher = teachers_lib.ViTTeacher.from_file(
        path, num_heads=HEADS, ln_eps=1e-5, act='quick_gelu',
        normalization='clip', use_head=True)
    mean, std = teachers_lib.CLIP_MEAN, teachers_lib.CLIP_STD
  assert (teacher.depth, teacher.width, teacher.patch_size, teacher.mlp_dim,
          teacher.image_size) == (DEPTH, D, P, M, S)
  assert teacher.out_dim == (8 if name == 'clip' else D)
  x = _images(S)
  got = np.asarray(jax.jit(lambda t, x: t(x))(teacher, jnp.asarray(x)))
  want = _torch_features(net, x, mean, std)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_vit_interpolates_positions_and_reads_npz(vit_files, tmp_path):
  """No input resize (image_size=None): a 24x24 image gives a 6x6 grid and
  the stored 4x4 positions are bilinearly resized as torch does."""
  net, path = vit_files['dino']
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  npz = tmp_path / 'dino.npz'
  np.savez(npz, **state)
  teacher = teachers_lib.ViTTeacher.from_file(npz, num_heads=HEADS,
                                              image_size=None)
  x = _images(24, seed=1, b=2)
  want = _torch_features(net, x, teachers_lib.IMAGENET_MEAN,
                         teachers_lib.IMAGENET_STD)
  got = jax.jit(lambda t, x: t(x))(teacher, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_vit_resizes_input_to_its_size(vit_files):
  net, path = vit_files['dino']
  teacher = teachers_lib.ViTTeacher.from_file(path, num_heads=HEADS)
  x = _images(32, seed=2, b=2)
  # Downsampling by 2 with an antialiased bilinear (triangle) filter.
  small = torch.nn.functional.interpolate(
      torch.from_numpy(((x + 1) / 2).transpose(0, 3, 1, 2).copy()),
      size=(S, S), mode='bilinear', align_corners=False, antialias=True)
  small = small.numpy().transpose(0, 2, 3, 1) * 2 - 1
  want = _torch_features(net, small, teachers_lib.IMAGENET_MEAN,
                         teachers_lib.IMAGENET_STD)
  got = jax.jit(lambda t, x: t(x))(teacher, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


def test_vit_loading_errors(vit_files, tmp_path):
  net, _ = vit_files['dino']
  state = dict(net.state_dict())

  def save(st, name):
    p = tmp_path / name
    torch.save(st, p)
    return p

  missing = dict(state)
  del missing['blocks.1.norm2.bias']
  with pytest.raises(ValueError, match=r'missing keys.*blocks\.1\.norm2\.bias'):
    teachers_lib.ViTTeacher.from_file(save(missing, 'missing.pth'),
                                      num_heads=HEADS)
  bad = dict(state, **{'blocks.0.attn.proj.weight': torch.zeros(D, D // 2)})
  with pytest.raises(ValueError,
                     match=r'wrong shapes.*blocks\.0\.attn\.proj\.weight'):
    teachers_lib.ViTTeacher.from_file(save(bad, 'bad.pth'), num_heads=HEADS)
  no_patch = {k: v for k, v in state.items() if not k.startswith('patch_')}
  with pytest.raises(ValueError, match='patch_embed.proj.weight'):
    teachers_lib.ViTTeacher.from_file(save(no_patch, 'np.pth'))
  ls = dict(state, **{'blocks.0.ls1.gamma': torch.ones(D)})
  with pytest.raises(ValueError, match=r'blocks\.0\.ls1\.gamma'):
    teachers_lib.ViTTeacher.from_file(save(ls, 'ls.pth'), num_heads=HEADS)
  with pytest.raises(ValueError, match='depth=3 contradicts'):
    teachers_lib.ViTTeacher.from_file(save(state, 'ok.pth'), depth=3)
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    teachers_lib.ViTTeacher.from_file(tmp_path / 'nope.pth')
  with pytest.raises(ValueError, match='unknown normalization'):
    teachers_lib.ViTTeacher(image_size=S, patch_size=P, width=D, depth=1,
                            normalization='laion')


def _all_variables_frozen(module):
  params = nnx.state(module, nnx.Param)
  assert not jax.tree.leaves(params), 'teacher weights must not be nnx.Param'
  frozen = nnx.state(module, teachers_lib.Frozen)
  assert jax.tree.leaves(frozen)
  return frozen


@pytest.mark.parametrize('kind', ['random_conv', 'vit'])
def test_teacher_weights_frozen_and_gradient_free(kind):
  if kind == 'vit':
    teacher = teachers_lib.make_teacher(
        dict(name='vit', image_size=S, patch_size=P, width=D, depth=1,
             num_heads=HEADS))
  else:
    teacher = teachers_lib.make_teacher(dict(out_dim=12, width=4, seed=3))
  frozen = _all_variables_frozen(teacher)
  graph, frozen, rest = nnx.split(teacher, teachers_lib.Frozen, ...)
  x = jnp.asarray(_images(S, b=2))

  def f(fr, x):
    return jnp.sum(nnx.merge(graph, fr, rest)(x) ** 2)

  g_w, g_x = jax.jit(jax.grad(f, argnums=(0, 1)))(frozen, x)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(g_w))
  assert not np.any(np.asarray(g_x))
  assert float(f(frozen, x)) > 0


def test_random_conv_teacher_is_seeded():
  x = jnp.asarray(_images(S, b=2))
  a = teachers_lib.RandomConvTeacher(out_dim=12, width=4, seed=0)(x)
  b = teachers_lib.RandomConvTeacher(out_dim=12, width=4, seed=0)(x)
  c = teachers_lib.RandomConvTeacher(out_dim=12, width=4, seed=1)(x)
  assert a.shape == (2, 12) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    teachers_lib.RandomConvTeacher(out_dim=12, width=4)(x[..., :2])
  with pytest.raises(ValueError, match='unknown teacher'):
    teachers_lib.make_teacher({'name': 'resnet'})
  spec = ml_collections.ConfigDict(dict(name='random_conv', out_dim=12,
                                        width=4, seed=0))
  np.testing.assert_array_equal(teachers_lib.make_teacher(spec)(x), a)
