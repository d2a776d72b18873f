"""Shared task helpers: the EMA update, config checks, the task registry."""

import jax
import ml_collections
import numpy as np
import pytest

from tokenizers_jax import config_lib
from tokenizers_jax.training import core
from tokenizers_jax.training import tasks


def test_ema_update_formula_and_exact_when_equal():
  rng = np.random.default_rng(0)
  e = {'w': rng.normal(size=(64,)).astype(np.float32)}
  p = {'w': rng.normal(size=(64,)).astype(np.float32)}
  got = np.asarray(core.ema_update(e, p, 0.99)['w'], np.float64)
  want = 0.99 * e['w'].astype(np.float64) + 0.01 * p['w'].astype(np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # A parameter equal to its EMA (frozen) keeps it bitwise, for any decay.
  for decay in (0.9, 0.999, 0.9999):
    np.testing.assert_array_equal(core.ema_update(e, e, decay)['w'], e['w'])


def _config(batch, shape):
  return ml_collections.ConfigDict(dict(
      data=dict(global_batch_size=batch, eval_batch_size=batch),
      mesh=dict(shape=shape, axes=('data', 'fsdp', 'model')),
      quantizer=dict(name='vq')))


def test_batch_and_mesh_checks_name_the_key():
  n = jax.device_count()
  tasks.check_batch_fits_mesh(_config(2 * n, (-1, 1, 1)),
                              ('global_batch_size', 'eval_batch_size'))
  if n > 1:
    with pytest.raises(config_lib.ConfigError, match='data.eval_batch_size'):
      tasks.check_batch_fits_mesh(_config(n + 1, (-1, 1, 1)),
                                  ('eval_batch_size',))
    # The 'model' axis does not split the batch.
    tasks.check_batch_fits_mesh(_config(1, (1, 1, -1)))
  with pytest.raises(config_lib.ConfigError, match='mesh.shape'):
    tasks.check_batch_fits_mesh(_config(8, (n + 1, 1, 1)))
  with pytest.raises(config_lib.ConfigError, match='must be positive'):
    tasks.check_batch_fits_mesh(_config(0, (-1, 1, 1)))
  tasks.check_quantizer_name(_config(1, (1, 1, 1)))
  bad = _config(1, (1, 1, 1))
  bad.quantizer.name = 'nope'
  with pytest.raises(config_lib.ConfigError, match='quantizer.name'):
    tasks.check_quantizer_name(bad)
  # Switching quantizers by name alone leaves the old one's keys: named.
  stale = _config(1, (1, 1, 1))
  stale.quantizer.update(name='fsq', levels=(8, 5), codebook_size=256)
  with pytest.raises(config_lib.ConfigError,
                     match=r'quantizer.codebook_size.*FSQ.*levels'):
    tasks.check_quantizer_name(stale)


def test_task_registry():
  assert tasks.get_task('image').name == 'image'
  assert tasks.get_task(ml_collections.ConfigDict({'task': 'eeg'})).name == 'eeg'
  with pytest.raises(config_lib.ConfigError, match='unknown task'):
    tasks.get_task('video')
