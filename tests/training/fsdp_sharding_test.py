"""FSDP: on a mesh with fsdp=8 the rules shard every large variable.

Checked for the tokenizer of every config's test variant and of the paper
variants (built shape-only with `nnx.eval_shape`, so the paper models cost
no memory), and for the full train state of `task.create` (generator,
discriminator, EMA, optimizer state) on the VQ-GAN test variant.

Thresholds. At paper scale a variable under 2^16 elements (256 KiB in
float32; 1 MiB with its two Adam moments and EMA) is noise against a
device's 16-80 GiB, and such variables are under 2 % of every paper
model's bytes (experiments/scale_check.py), so every variable of at least
2^16 elements must be sharded. The test variants are 16-32x narrower (widths
8-32 against 256-768), so a weight matrix or conv kernel is ~2^8-2^10 times
smaller: 2^16 / 2^7 = 2^9 keeps every weight matrix and kernel of the micro
models in the check and leaves out only per-channel vectors (biases, norm
scales) and tiny test codebooks. A variable none of whose dimensions 8
divides cannot be split 8 ways and is replicated by design
(`sharding.state_shardings`); it is not counted.
"""

import os

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import numpy as np

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.models import registry
from tokenizers_jax.training import abstract
from tokenizers_jax.training import optim
from tokenizers_jax.training import tasks
from tokenizers_jax.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FSDP = 8
TEST_THRESHOLD = 2 ** 9
PAPER_THRESHOLD = 2 ** 16
TEST_CONFIGS = ('vqgan', 'lfq', 'wetok', 'fqgan', 'titok', 'one_d_piece',
                'flextok', 'audio_codec', 'neurorvq')
PAPER_CONFIGS = ('vqgan.py:imagenet_f16', 'lfq.py:imagenet_256',
                 'titok.py:s128', 'flextok.py:d12_d12', 'audio_codec.py:paper',
                 'neurorvq.py:paper')


def _config(spec: str):
  config = config_lib.load_config_file(os.path.join(ROOT, 'configs', spec))
  config.mesh.shape = (1, FSDP, 1)
  return config


def _mesh(config):
  return train.make_mesh(config)


def _unsharded(tree, threshold: int) -> list[str]:
  """Paths of leaves (arrays or ShapeDtypeStructs with shardings) of at
  least `threshold` elements, with a dimension FSDP divides, not sharded
  over 'fsdp'."""
  bad = []
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    shardable = any(d % FSDP == 0 for d in x.shape)
    if (np.prod(x.shape) >= threshold and shardable
        and not abstract.splits(x, 'fsdp')):
      bad.append(f'{jax.tree_util.keystr(path)} {tuple(x.shape)} '
                 f'{x.sharding.spec}')
  return bad


def _abstract_tokenizer(config, mesh):
  """(params, non-param variables, optimizer state) of the config's
  tokenizer as ShapeDtypeStructs sharded by the config's rules; the
  optimizer leaves sharded like their parameters."""
  model = nnx.eval_shape(lambda: registry.build_model(config))
  rules = tuple(tuple(r) for r in config.sharding_rules)

  def shaped(filt):
    state = nnx.state(model, filt)
    sh = nnx.to_pure_dict(sharding_lib.state_shardings(state, mesh, rules))
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nnx.to_pure_dict(state), sh)

  params, rest = shaped(nnx.Param), shaped(nnx.Not(nnx.Param))
  tx = optim.make_optimizer(config.optim, config.total_steps)
  opt = jax.eval_shape(tx.init, params)
  opt_sh = abstract.opt_state_shardings(
      opt, params, jax.tree.map(lambda x: x.sharding, params), mesh)
  opt = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      opt, opt_sh)
  return params, rest, opt


class RulesShardLargeVariablesTest(parameterized.TestCase):

  @parameterized.parameters(*TEST_CONFIGS)
  def test_test_variant(self, name):
    config = _config(f'{name}.py:test')
    params, rest, opt = _abstract_tokenizer(config, _mesh(config))
    for part, tree in (('params', params), ('rest', rest), ('opt', opt)):
      self.assertEqual(_unsharded(tree, TEST_THRESHOLD), [],
                       f'{name}:test {part}')

  @parameterized.parameters(*PAPER_CONFIGS)
  def test_paper_variant(self, spec):
    config = _config(spec)
    params, rest, opt = _abstract_tokenizer(config, _mesh(config))
    for part, tree in (('params', params), ('rest', rest), ('opt', opt)):
      self.assertEqual(_unsharded(tree, PAPER_THRESHOLD), [], f'{spec} {part}')
    # What the threshold leaves out is a negligible share of the bytes.
    frac, _ = abstract.sharded_fraction(params)
    self.assertGreater(frac, 0.98, spec)


class CreateShardsTheTrainStateTest(absltest.TestCase):
  """The state `task.create` places on the mesh (VQ-GAN test variant)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = _config('vqgan.py:test')
    cls.mesh = _mesh(cls.config)
    with jax.set_mesh(cls.mesh):
      _, cls.state, _ = tasks.get_task(cls.config).create(cls.config,
                                                          cls.mesh)

  def test_parameters_ema_and_buffers(self):
    for key in ('gen', 'disc', 'ema'):
      self.assertEqual(_unsharded(self.state[key], TEST_THRESHOLD), [], key)

  def test_matches_the_rules(self):
    params, rest, _ = _abstract_tokenizer(self.config, self.mesh)
    got = jax.tree.map(lambda x: x.sharding.spec, self.state['gen'])
    want = jax.tree.map(lambda x: x.sharding.spec,
                        {'params': params, 'rest': rest})
    self.assertEqual(got, want)

  def test_abstract_create_matches(self):
    _, state, _ = abstract.abstract_create(self.config, self.mesh)
    leaves = lambda t: [(jax.tree_util.keystr(p), tuple(x.shape), x.dtype)
                        for p, x in jax.tree_util.tree_leaves_with_path(t)]
    self.assertEqual(leaves(state), leaves(self.state))
    for key in ('gen', 'disc', 'ema'):
      self.assertEqual(jax.tree.map(lambda x: x.sharding.spec, state[key]),
                       jax.tree.map(lambda x: x.sharding.spec,
                                    self.state[key]), key)
    for key in ('gen_opt', 'disc_opt'):
      self.assertEqual(_unsharded(state[key], TEST_THRESHOLD), [], key)

  def test_optimizer_state(self):
    for key in ('gen_opt', 'disc_opt'):
      self.assertEqual(_unsharded(self.state[key], TEST_THRESHOLD), [], key)


if __name__ == '__main__':
  absltest.main()
