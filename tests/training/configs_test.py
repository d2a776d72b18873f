"""Every config variant builds; the paper-scale VQ-GAN has the paper's shapes
and takes one real training step at a tiny batch (slow)."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.losses.perceptual import LPIPS
from tokenizers_jax.training import steps as steps_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(REPO, 'configs', 'vqgan.py')


def get_config(arg):
  return config_lib.load_config_file(f'{CONFIG_FILE}:{arg}')


def test_paper_config_needs_local_lpips_weights():
  config = get_config('imagenet_f16')
  with pytest.raises(config_lib.ConfigError, match='loss.lpips_vgg_path'):
    steps_lib.validate_config(config)


@pytest.mark.parametrize('variant, tokens, num_codes, code_dim', [
    ('tiny', 8, 256, 8),
    ('imagenet_f16', 16, 1024, 256),
])
def test_variant_shapes(variant, tokens, num_codes, code_dim):
  """Abstract build (no FLOPs): token grid, codebook and output shapes."""
  config = get_config(variant)
  size = config.data.image_size
  gen, disc = nnx.eval_shape(lambda: steps_lib.build_models(config))
  graph, state = nnx.split(gen)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  ids = jax.eval_shape(lambda s, x: nnx.merge(graph, s).encode(x), state, x)
  assert ids.shape == (2, tokens, tokens) and ids.dtype == jnp.int32
  out = jax.eval_shape(lambda s, i: nnx.merge(graph, s).decode(i), state, ids)
  assert out.shape == (2, size, size, 3)
  q = gen.quantizer
  assert q.codebook_size == num_codes
  assert q.codebook.shape == (num_codes, code_dim)
  dgraph, dstate = nnx.split(disc)
  logits = jax.eval_shape(lambda s, x: nnx.merge(dgraph, s)(x, train=False),
                          dstate, x)
  assert logits.shape[0] == 2 and logits.shape[-1] == 1


@pytest.mark.slow
def test_paper_config_one_step_at_batch_one():
  """imagenet_f16 (256², 16×16 tokens, LPIPS on, random LPIPS weights) takes a
  real train step with the GAN on: finite losses, every parameter group moves."""
  config = get_config('imagenet_f16')
  config.data.global_batch_size = 1
  config.loss.perceptual_weight = 0.0
  config.loss.disc_start = 0
  config.mesh.shape = (1, 1, 1)
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    trainer, state, _ = steps_lib.create(config, mesh)
    import dataclasses  # pylint: disable=g-import-not-at-top
    trainer = dataclasses.replace(trainer, lpips=LPIPS())
    config.loss.perceptual_weight = 1.0
    images = np.random.default_rng(0).uniform(-1, 1, (1, 256, 256, 3))
    batch = {'image': jnp.asarray(images, jnp.float32)}
    before = jax.device_get(state)
    new, metrics = jax.jit(lambda s, b: steps_lib.train_step(trainer, s, b))(
        state, batch)
    new = jax.device_get(new)
  for k in ('train/loss', 'train/recon', 'train/perceptual', 'train/d_loss',
            'train/g_weight'):
    assert np.isfinite(metrics[k]), k
  assert float(metrics['train/perceptual']) > 0
  assert int(metrics['train/skipped']) == 0
  for group in ('gen', 'disc'):
    moved = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(before[group]['params']),
                 jax.tree.leaves(new[group]['params']))]
    assert np.mean(moved) > 0.9, (group, np.mean(moved))
