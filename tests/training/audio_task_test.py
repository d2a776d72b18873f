"""The audio task through the shared training loop (configs/audio_codec.py).

A few train steps of the `test` variant on a 20-sentence eSpeak corpus built
in a temporary directory, on the 8 simulated CPU devices (data parallel),
with the GAN switched on at step 4; then the evaluation's metrics. References:
the reconstruction loss falls, the discriminator loss is exactly 0 before
`disc_start` (gate) and positive after, the bitrate formula, and the number
of validation sentences (every 10th of 20).
"""

import importlib.util
import json
import math
import os

import pytest

from tokenizers_jax import config_lib
from tokenizers_jax.training import audio_task
from tokenizers_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(REPO, 'configs', 'audio_codec.py')


def get_config(arg='test'):
  spec = importlib.util.spec_from_file_location('audio_config', CONFIG_FILE)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  config = get_config('test')
  config.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  workdir = str(tmp_path_factory.mktemp('audio'))
  final = train_lib.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return config, workdir, final, rows


def test_trains_and_evaluates(run):
  config, workdir, final, rows = run
  assert final['step'] == config.total_steps
  train_rows = [r for r in rows if 'train/loss' in r]
  assert [r['step'] for r in train_rows] == list(range(2, 13, 2))
  # Reconstruction (multi-scale mel L1) falls.
  assert train_rows[-1]['train/mel'] < train_rows[0]['train/mel']
  # Discriminator gated off before disc_start = 4, on afterwards.
  assert train_rows[0]['train/d_loss'] == 0.0
  assert all(r['train/d_loss'] > 0 for r in train_rows if r['step'] > 4)
  assert all(r['train/skipped'] == 0 for r in train_rows)
  for key in ('eval/pesq', 'eval/stoi', 'eval/mel_distance',
              'eval/stft_distance', 'eval/si_snr', 'eval/codebook_usage',
              'eval/bitrate_bps'):
    assert math.isfinite(final[key]), key
  assert 1.0 <= final['eval/pesq'] <= 4.7
  assert 0.0 <= final['eval/stoi'] <= 1.0
  assert 0.0 < final['eval/codebook_usage'] <= 1.0
  # hop 80 at 16 kHz: 200 tokens/s x log2(32) bits.
  assert final['eval/bitrate_bps'] == 200 * 5
  assert final['eval/num_utterances'] == 2
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '12'))


def test_config_errors():
  config = get_config('test')
  config.data.crop_seconds = 0.001
  with pytest.raises(config_lib.ConfigError, match='data.crop_seconds'):
    audio_task.validate_config(config)
  config = get_config('test')
  config.loss.gan_loss = 'wasserstein'
  with pytest.raises(config_lib.ConfigError, match='loss.gan_loss'):
    audio_task.validate_config(config)
  config = get_config('test')
  config.quantizer.name = 'nope'
  with pytest.raises(config_lib.ConfigError, match='quantizer.name'):
    audio_task.validate_config(config)
  config = get_config('test')
  config.model.frontend.n_fft = 81   # n_fft - hop must be even.
  with pytest.raises(config_lib.ConfigError, match='model.frontend'):
    audio_task.validate_config(config)


def test_variants_build():
  for arg, bits, tps in (('tiny', 8, 100), ('tiny,rvq', 12, 100),
                         ('tiny,vq_codes=4096', 12, 100),
                         ('paper', 12, 75), ('paper,tps=40', 12, 40)):
    c = get_config(arg)
    audio_task.validate_config(c)
    hop = audio_task.hop_of(c)
    assert c.data.sample_rate / hop == tps, arg
    q = c.quantizer
    levels = q.get('num_quantizers', 1)
    assert levels * math.log2(q.codebook_size) == bits, arg


@pytest.mark.slow  # CI time budget; the EEG and image runs test the same path.
def test_tokenizer_from_workdir(run):
  """Tokenizer.from_workdir on an audio run: decode(encode(x)) equals the
  model's own eval-mode reconstruction; images are refused by name."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.models import Tokenizer  # pylint: disable=g-import-not-at-top
  _, workdir, _, _ = run
  tok = Tokenizer.from_workdir(workdir)
  assert tok.modality == 'audio'
  hop = math.prod(tok.config.model.frontend.strides)
  t = np.arange(20 * hop) / tok.config.data.sample_rate
  x = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (220.0, 330.0)])
  ids = tok.encode(x.astype(np.float32))
  assert ids.shape[:2] == (2, 20)
  want = tok.model(jnp.asarray(x, jnp.float32), train=False).reconstruction
  np.testing.assert_allclose(np.asarray(tok.decode(ids)),
                             np.clip(np.asarray(want), -1, 1), atol=1e-5)
  with pytest.raises(ValueError, match=r'waveforms \[B, N\]'):
    tok.encode(np.zeros((1, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match='NaN'):
    tok.encode(np.full((1, 20 * hop), np.nan, np.float32))
