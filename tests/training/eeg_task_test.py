"""The EEG task end to end: a few steps of `train_and_evaluate` with the
`test` variant of configs/neurorvq.py, the non-finite step skip, and config
errors."""

import json
import os

import jax
import numpy as np
import pytest

from tokenizers_jax import config_lib
from tokenizers_jax.training import eeg_task
from tokenizers_jax.training import tasks
from tokenizers_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def get_config(arg='test'):
  return config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'neurorvq.py') + ':' + arg)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('neurorvq'))
  config = get_config()
  final = train_lib.train_and_evaluate(config, workdir)
  return config, workdir, final


def test_train_and_evaluate(trained):
  config, workdir, final = trained
  assert tasks.get_task(config) is eeg_task.TASK
  assert final['step'] == config.total_steps
  g, q = len(config.model.branches), config.quantizer.num_quantizers
  want = ['eval/nmse', 'eval/pearson', 'eval/codebook_usage', 'eval/loss',
          'eval/phase_cos']
  want += [f'eval/{kind}/{b}' for kind in ('band_power_db', 'band_nmse')
           for b in ('delta', 'theta', 'alpha', 'beta', 'gamma')]
  want += [f'eval/usage/branch{i}/level{j}' for i in range(g)
           for j in range(q)]
  want += [f'eval/residual_norm/depth{d}' for d in range(q + 1)]
  for k in want:
    assert k in final and np.isfinite(final[k]), k
  assert 0 < final['eval/codebook_usage'] <= 1
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert len(losses) == config.total_steps // config.log_every
  assert all(np.isfinite(losses))
  assert os.path.isdir(os.path.join(workdir, 'checkpoints'))
  images = os.listdir(os.path.join(workdir, 'images'))
  assert images and images[0].startswith('reconstructions')


@pytest.mark.slow  # A second compile of the train step (~35 s on CPU).
def test_nonfinite_batch_is_skipped(trained):
  config = trained[0]
  mesh = train_lib.make_mesh(config)
  with jax.set_mesh(mesh):
    trainer, state, sh = eeg_task.create(config, mesh)
    data_sh = train_lib.batch_sharding(mesh)
    step = jax.jit(lambda s, b: eeg_task.train_step(trainer, s, b),
                   in_shardings=(sh, data_sh), out_shardings=(sh, None),
                   donate_argnums=0)
    local = next(eeg_task.train_iterator(config))
    local['eeg'][0, 0, 5] = np.nan
    before = jax.device_get(state['gen']['params'])
    batch = train_lib.to_global(local, data_sh, config.data.global_batch_size)
    state, metrics = step(state, batch)
    after = jax.device_get(state)
  assert int(metrics['train/skipped']) == 1
  assert int(after['nonfinite_consecutive']) == 1 == int(
      after['nonfinite_total'])
  assert int(after['step']) == 1
  jax.tree.map(np.testing.assert_array_equal, after['gen']['params'], before)


def test_config_errors():
  config = get_config()
  config.data.num_patches = 3
  with pytest.raises(config_lib.ConfigError, match='data.num_patches'):
    eeg_task.validate_config(config)
  config = get_config()
  config.data.channels = ('Fp1', 'Q9')
  with pytest.raises(config_lib.ConfigError, match='unknown electrode'):
    eeg_task.validate_config(config)
  config = get_config()
  config.model.loss = 'l1'
  with pytest.raises(config_lib.ConfigError, match='model.loss'):
    eeg_task.validate_config(config)
  config = get_config()
  config.data.global_batch_size = 3
  with pytest.raises(config_lib.ConfigError, match='global_batch_size'):
    eeg_task.validate_config(config)
  for arg in ('tiny', 'tiny,baseline', 'paper'):
    c = get_config(arg)
    eeg_task.validate_config(c)
  base = get_config('tiny,baseline')
  assert len(base.model.branches) == 1 and base.model.loss == 'mse'
  assert base.quantizer.num_quantizers == 4 * get_config(
      'tiny').quantizer.num_quantizers


@pytest.mark.slow  # ~3 minutes on a 2-core CPU.
def test_tiny_model_learns(tmp_path):
  """300 steps of the tiny NeuroRVQ: the loss falls, the phase cosine rises,
  the RVQ residual shrinks with depth, codes stay in use."""
  config = get_config('tiny')
  config.total_steps = 300
  config.log_every = 10
  config.eval_every = 300
  config.checkpoint_every = 300
  config.data.dataset.update(num_recordings=6, seconds=30)
  final = train_lib.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  train = [r for r in rows if 'train/loss' in r]
  first, last = train[0], train[-1]
  assert last['train/loss'] < 0.6 * first['train/loss']
  assert last['train/phase_cos'] > first['train/phase_cos'] + 0.1
  # The first levels shrink the residual (deeper levels of a cosine RVQ
  # stall once the residual is shorter than about half a unit code).
  res = [final[f'eval/residual_norm/depth{d}'] for d in range(4)]
  assert res[0] > res[1] > res[2], res
  assert final['eval/pearson'] > 0.3
  assert min(final[f'eval/usage/branch{g}/level0'] for g in range(4)) > 0.1


def test_tokenizer_from_workdir(trained):
  """Tokenizer.from_workdir on an EEG run: decode(ids, stats) from
  encode_with_stats equals the model's eval-mode reconstruction."""
  from tokenizers_jax.models import Tokenizer  # pylint: disable=g-import-not-at-top
  config, workdir, _ = trained
  tok = Tokenizer.from_workdir(workdir)
  assert tok.modality == 'eeg'
  c = len(config.data.channels)
  n = config.data.num_patches * config.model.patch_size
  x = 3.0 * np.random.default_rng(0).normal(size=(2, c, n)).astype(np.float32)
  ids, stats = tok.encode_with_stats(x)
  assert ids.shape[:3] == (2, c, config.data.num_patches)
  want = tok.model(x, train=False).reconstruction
  got = np.asarray(tok.decode(ids, stats))
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match=r'EEG \[B, C, N\]'):
    tok.encode(x[0])
