"""Workdirs without the training system: Tokenizer.from_workdir reads only
the generator/EMA, models/ never imports training/, configs written before
the model contract are upgraded, and a checkpoint that does not fit its
config is refused with the differing paths."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax import workdir as workdir_lib
from tokenizers_jax.models.tokenizer import Tokenizer
from tokenizers_jax.training import checkpoint as ckpt_lib
from tokenizers_jax.training import steps as steps_lib
from tokenizers_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A VQ-GAN test-config workdir at step 3 whose EMA differs from its
  params (so the reader's choice is visible)."""
  workdir = str(tmp_path_factory.mktemp('vqgan_wd'))
  config = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'vqgan.py') + ':test')
  steps_lib.validate_config(config)
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    _, state, _ = steps_lib.create(config, mesh)
    state = jax.device_get(state)
    state['ema'] = jax.tree.map(lambda v: v + 1.0, state['ema'])
    train_lib.write_config(config, workdir)
    mgr = ckpt_lib.manager(workdir, keep=1)
    ckpt_lib.save(mgr, 3, jax.device_put(state), force=True)
    mgr.wait_until_finished()
    mgr.close()
  return workdir, state


def _flat(tree):
  return {jax.tree_util.keystr(p, simple=True, separator='/'): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_read_generator_ema_or_raw(saved):
  workdir, state = saved
  params, rest, step, used_ema = workdir_lib.read_generator(workdir)
  assert step == 3 and used_ema
  want = _flat(state['ema'])
  got = _flat(params)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  raw, _, _, used_ema = workdir_lib.read_generator(workdir, use_ema=False)
  assert not used_ema
  for k, v in _flat(state['gen']['params']).items():
    np.testing.assert_array_equal(_flat(raw)[k], v, err_msg=k)
  assert _flat(rest).keys() == _flat(state['gen']['rest']).keys()
  with pytest.raises(FileNotFoundError, match='no checkpoint for step 7'):
    workdir_lib.read_generator(workdir, step=7)


def test_tokenizer_loads_the_generator_only(saved):
  workdir, state = saved
  tok = Tokenizer.from_workdir(workdir)
  assert tok.step == 3 and tok.modality == 'image'
  from flax import nnx  # pylint: disable=g-import-not-at-top
  got = _flat(nnx.to_pure_dict(nnx.state(tok.model, nnx.Param)))
  for k, v in _flat(state['ema']).items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(
      np.float32)
  ids = tok.encode(x)
  assert ids.shape == (2, 8, 8)
  assert tok.decode(ids).shape == x.shape


def test_models_do_not_import_training():
  code = ('import sys; import tokenizers_jax.models.tokenizer; '
          'import tokenizers_jax.models.registry; '
          'bad = sorted(m for m in sys.modules '
          "if m.startswith('tokenizers_jax.training')); "
          'assert not bad, bad')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO,
                 env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_legacy_config_is_upgraded():
  c = ml_collections.ConfigDict(dict(
      task='image', model_name='flextok',
      model=dict(flow_weight=2.0, repa=dict(weight=0.5, layer=1)),
      loss=dict(quantizer_weight=1.0)))
  notes = config_lib.upgrade(c)
  assert dict(c.loss.weights) == {'flow': 2.0, 'repa': 0.5}
  assert 'flow_weight' not in c.model and 'weight' not in c.model.repa
  assert len(notes) == 2
  e = ml_collections.ConfigDict(dict(task='eeg', model_name='neurorvq',
                                     model=dict(loss='neurorvq')))
  config_lib.upgrade(e)
  assert e.loss.quantizer_weight == 1.0 and dict(e.loss.weights) == {'eeg': 1.0}
  assert config_lib.upgrade(c) == []  # Idempotent.


def test_mismatched_checkpoint_is_refused_with_paths(saved, tmp_path):
  workdir, _ = saved
  other = str(tmp_path / 'edited')
  os.makedirs(other)
  os.symlink(os.path.join(workdir, 'checkpoints'),
             os.path.join(other, 'checkpoints'))
  raw = json.load(open(os.path.join(workdir, 'config.json')))
  raw['quantizer']['codebook_size'] = 64
  json.dump(raw, open(os.path.join(other, 'config.json'), 'w'))
  with pytest.raises(ValueError) as err:
    Tokenizer.from_workdir(other)
  msg = str(err.value)
  assert ('quantizer/codebook: shape (32, 4) in the checkpoint, (64, 4) in '
          'the model') in msg
  assert '(1 differences)' in msg and 'init_from' in msg
  with open(os.path.join(other, 'config.json'), 'w') as f:
    f.write('{"broken": ')
  with pytest.raises(ValueError, match='not valid JSON'):
    Tokenizer.from_workdir(other)


def test_encode_and_decode_check_ranges(saved):
  tok = Tokenizer.from_workdir(saved[0])
  x = np.random.default_rng(1).uniform(0, 255, (1, 16, 16, 3)).astype(
      np.float32)
  with pytest.raises(ValueError, match=r'in \[-1, 1\]; got values in .*'
                     r'x / 127\.5 - 1'):
    tok.encode(x)
  ids = np.asarray(tok.encode(x / 127.5 - 1))
  k = tok.model.codebook_size
  with pytest.raises(ValueError, match=rf'must lie in \[0, {k}\).*max {k}'):
    tok.decode(np.full_like(ids, k))
  with pytest.raises(ValueError, match=r'must lie in \[0, .*min -1'):
    tok.decode(np.where(ids == ids.flat[0], -1, ids))
  with pytest.raises(TypeError, match='integer token ids'):
    tok.decode(ids.astype(np.float32))
