"""The generators through the shared training loop (config.task='tokens'):
configs/maskgit.py:test and configs/ar.py:test on pretokenized fake images,
sampling, learning on a tiny dataset, config errors, gFID/IS."""

import json
import math
import os

import jax
import numpy as np
import pytest

from tokenizers_jax import config_lib
from tokenizers_jax import sample as sample_lib
from tokenizers_jax.training import checkpoint as ckpt_lib
from tokenizers_jax.training import tasks
from tokenizers_jax.training import tokens_task
from tokenizers_jax.training import train as train_lib

from tests.generation import conftest


def get_config(name, tokens_dir, arg='test'):
  return config_lib.load_config_file(
      os.path.join(conftest.REPO, 'configs', f'{name}.py')
      + f':{arg},dir={tokens_dir}')


@pytest.fixture(scope='module', params=['maskgit', 'ar'])
def trained(request, tokens_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp(request.param))
  config = get_config(request.param, tokens_dir)
  final = train_lib.train_and_evaluate(config, workdir)
  return request.param, config, workdir, final


def test_train_and_evaluate(trained, tokens_dir):
  name, config, workdir, final = trained
  assert tasks.get_task(config) is tokens_task.TASK
  assert final['step'] == config.total_steps
  for k in ('eval/bits_per_image', 'eval/bits_per_token',
            'eval/nll_nats_per_token', 'eval/uniform_bits_per_image'):
    assert np.isfinite(final[k]), k
  # bits = nats / ln 2; per image = per token x 64 tokens.
  np.testing.assert_allclose(final['eval/bits_per_token'],
                             final['eval/nll_nats_per_token'] / math.log(2),
                             rtol=1e-9)
  np.testing.assert_allclose(final['eval/bits_per_image'],
                             64 * final['eval/bits_per_token'], rtol=1e-9)
  assert final['eval/uniform_bits_per_image'] == 64 * 5  # 8x8 of 32 codes.
  if name == 'maskgit':
    assert np.isfinite(final['eval/masked_ce'])
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['tokens']['codebook_size'] == 32
  assert saved['tokens']['token_shape'] == [8, 8]
  assert saved['tokens']['tokenizer_workdir'] == (
      json.load(open(os.path.join(tokens_dir, 'manifest.json')))
      ['tokenizer_workdir'])
  assert os.listdir(os.path.join(workdir, 'images'))  # A sample grid.
  assert 'gFID and IS not computed' in tokens_task.eval_note(config)


def test_sample_command_writes_a_grid(trained, tmp_path):
  name, _, workdir, _ = trained
  out = str(tmp_path / 'samples')
  written = sample_lib.run(workdir, out, num=3, batch_size=2,
                           guidance_scale=2.0 if name == 'ar' else None)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = np.asarray(Image.open(written['grid']))
  assert grid.shape == (32, 32, 3)  # 2x2 cells of 16² images.
  ids = np.load(written['tokens'])
  assert ids.shape == (3, 8, 8) and ids.min() >= 0 and ids.max() < 32


def test_learning_happens_on_a_tiny_dataset(tokens_dir):
  """60 steps of the real train step on 48 token grids: the training
  cross-entropy falls well below its start (ln 32 = 3.47 nats)."""
  config = get_config('ar', tokens_dir)
  config.optim.lr = 3e-3
  task = tasks.get_task(config)
  task.validate_config(config)
  mesh = train_lib.make_mesh(config)
  with jax.set_mesh(mesh):
    trainer, state, sh = task.create(config, mesh)
    data_sh = train_lib.batch_sharding(mesh, config)
    step = jax.jit(lambda s, b: task.train_step(trainer, s, b),
                   in_shardings=(sh, data_sh), donate_argnums=0)
    it = task.train_iterator(config)
    ces = []
    for _ in range(60):
      batch = train_lib.to_global(next(it), data_sh,
                                  config.data.global_batch_size)
      state, m = step(state, batch)
      ces.append(float(m['train/ce']))
  first, last = np.mean(ces[:5]), np.mean(ces[-5:])
  assert first > 3.0 and last < first - 0.5, (first, last)


def test_config_errors(tokens_dir, tmp_path):
  config = get_config('maskgit', str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match='data.dir'):
    tokens_task.validate_config(config)
  config = get_config('maskgit', tokens_dir)
  config.model.width = 31
  with pytest.raises(config_lib.ConfigError, match='model.width'):
    tokens_task.validate_config(config)


@pytest.mark.slow  # The Inception at 299² on a few images (~1 min on CPU).
def test_gfid_and_inception_score(trained, tmp_path):
  from tokenizers_jax.evaluators import fid as fid_lib  # pylint: disable=g-import-not-at-top
  name, config, workdir, _ = trained
  if name != 'ar':
    pytest.skip('one generator is enough')
  state = {}
  for prefix, p in fid_lib.random_params(0).items():
    state[f'{prefix}.conv.weight'] = p['kernel'].transpose(3, 2, 0, 1)
    for ours, theirs in (('scale', 'weight'), ('bias', 'bias'),
                         ('mean', 'running_mean'), ('var', 'running_var')):
      state[f'{prefix}.bn.{theirs}'] = p[ours]
  rng = np.random.default_rng(0)
  state['fc.weight'] = rng.normal(0, 0.05, (1008, 2048)).astype(np.float32)
  state['fc.bias'] = np.zeros(1008, np.float32)
  path = str(tmp_path / 'inception.npz')
  np.savez(path, **state)
  config = train_lib.load_config(workdir)
  with config.unlocked():
    config.eval.inception_path = path
    config.eval.num_fid_samples = 8
  task = tasks.get_task(config)
  task.validate_config(config)
  mesh = train_lib.make_mesh(config)
  with jax.set_mesh(mesh):
    trainer, st, _ = task.create(config, mesh)
    st, _ = ckpt_lib.restore_state_only(workdir, st)
    out, _ = task.evaluate(trainer, st, config, mesh, num_batches=1)
  assert np.isfinite(out['eval/gfid']) and out['eval/gfid'] >= 0
  assert 1.0 <= out['eval/inception_score'] <= 1008
  assert tokens_task.eval_note(config) is None


def test_inception_score_formula():
  from tokenizers_jax.evaluators import generation  # pylint: disable=g-import-not-at-top
  # Every sample certain of a different class: IS = number of classes.
  logits = np.full((4, 4), -1e9)
  np.fill_diagonal(logits, 0.0)
  np.testing.assert_allclose(generation.inception_score(logits)[0], 4.0,
                             rtol=1e-6)
  # Identical predictions: IS = 1.
  np.testing.assert_allclose(
      generation.inception_score(np.zeros((6, 10)))[0], 1.0, rtol=1e-9)


@pytest.mark.slow  # Another tokenizer, two runs and samplers (~60-150 s).
def test_residual_tokens_end_to_end(tmp_path):
  """An RVQ tokenizer (tokens [8, 8, 2]): the manifest names the levels and
  both generators train a step and sample through the depth head."""
  from tokenizers_jax import pretokenize  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  q = ml_collections.ConfigDict(dict(name='rvq', num_quantizers=2,
                                     codebook_size=16, codebook_dim=4),
                                type_safe=False)
  wd = pretokenize.write_random_tokenizer(
      conftest.tokenizer_config(q, source='fake:8'), str(tmp_path / 'rvq'))
  out = str(tmp_path / 'tokens')
  for split in ('train', 'validation'):
    pretokenize.run(wd, out, split=split, batch_size=8, log=lambda _: None)
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert manifest['token_shape'] == [8, 8, 2]
  assert (manifest['num_levels'], manifest['level_kind']) == (2, 'residual')
  for name in ('ar', 'maskgit'):
    config = get_config(name, out)
    config.total_steps = 2
    config.eval_every = config.checkpoint_every = 2
    config.num_eval_batches = 1
    final = train_lib.train_and_evaluate(config, str(tmp_path / name))
    assert np.isfinite(final['eval/bits_per_image'])
    assert final['eval/uniform_bits_per_image'] == 64 * 2 * 4
    written = sample_lib.run(str(tmp_path / name), str(tmp_path / f'{name}_s'),
                             num=2, batch_size=2)
    assert np.load(written['tokens']).shape == (2, 8, 8, 2)


@pytest.mark.slow  # A codec build, pretokenize, 6 steps and sampling (~40 s).
def test_audio_tokens_end_to_end(tmp_path):
  """Audio: variable-length utterance tokens, training on crops of
  `data.crop_tokens`, bits per second, WAV samples."""
  import soundfile  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import pretokenize  # pylint: disable=g-import-not-at-top
  c = config_lib.load_config_file(
      os.path.join(conftest.REPO, 'configs', 'audio_codec.py') + ':test')
  c.data.source = 'fake:6'
  wd = pretokenize.write_random_tokenizer(c, str(tmp_path / 'codec'))
  out = str(tmp_path / 'tokens')
  for split in ('train', 'validation'):
    stats = pretokenize.run(wd, out, split=split, batch_size=4,
                            log=lambda _: None)
  manifest = stats['manifest']
  assert manifest['token_shape'] == [None]
  assert manifest['tokens_per_second'] == 16000 / manifest['hop']
  config = get_config('ar', out)
  config.data.crop_tokens = 20
  config.data.global_batch_size = config.data.eval_batch_size = 8
  with pytest.raises(config_lib.ConfigError, match='crop_tokens'):
    bad = get_config('ar', out)
    tokens_task.validate_config(bad)
  final = train_lib.train_and_evaluate(config, str(tmp_path / 'ar'))
  np.testing.assert_allclose(
      final['eval/bits_per_second'],
      final['eval/bits_per_token'] * manifest['tokens_per_second'], rtol=1e-9)
  written = sample_lib.run(str(tmp_path / 'ar'), str(tmp_path / 's'), num=2,
                           batch_size=2)
  wav, rate = soundfile.read(written['wavs'][0])
  assert rate == 16000 and wav.shape == (20 * manifest['hop'],)
