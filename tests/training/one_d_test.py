"""The 1D image tokenizers on the shared training system: config validation,
paper-variant shapes, and a short train + evaluate + reload smoke run."""

import json
import math
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizers_jax import config_lib
from tokenizers_jax.models.tokenizer import Tokenizer
from tokenizers_jax.training import steps as steps_lib
from tokenizers_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(spec):
  return config_lib.load_config_file(os.path.join(REPO, 'configs', spec))


@pytest.mark.parametrize('spec, size, tokens, vocab', [
    ('titok.py:s128', 256, 128, 4096),
    ('one_d_piece.py:s256', 256, 256, 4096),
    ('flextok.py:d12_d12', 256, 256, 64000),
    ('titok.py:tiny', 32, 16, 256),
    ('one_d_piece.py:tiny', 32, 32, 4096),
    ('flextok.py:tiny', 32, 32, 64000),
])
def test_variants_build_with_their_token_counts(spec, size, tokens, vocab):
  """Abstract build (no FLOPs): ids [1, K] and the codebook size."""
  config = get_config(spec)
  config.loss.perceptual_weight = 0.0  # no LPIPS weights here
  steps_lib.validate_config(config)
  assert config.data.image_size == size
  gen, _ = nnx.eval_shape(lambda: steps_lib.build_models(config))
  graph, state = nnx.split(gen)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  ids = jax.eval_shape(lambda s, x: nnx.merge(graph, s).encode(x), state, x)
  assert ids.shape == (1, tokens) and ids.dtype == jnp.int32
  assert gen.codebook_size == vocab


def test_config_errors_name_the_key():
  config = get_config('flextok.py:test')
  config.model.patch_size = 5
  with pytest.raises(config_lib.ConfigError, match='model.patch_size'):
    steps_lib.validate_config(config)
  config = get_config('titok.py:test')
  config.model.num_tokens = 0
  with pytest.raises(config_lib.ConfigError, match='model.num_tokens'):
    steps_lib.validate_config(config)


@pytest.mark.parametrize('name', [
    pytest.param('one_d_piece', marks=pytest.mark.slow), 'flextok'])
def test_trains_evaluates_and_reloads(name, tmp_path):
  """Three steps of the test variant through `train_and_evaluate`: finite,
  never-skipped steps; the model's extra losses are logged (FlexTok's flow
  loss); evaluation reports PSNR and the equal-bits bicubic baseline with
  bits = K log2(V) per image; the workdir reloads as a Tokenizer whose
  `encode(num_tokens=k)` gives the first k ids and decodes any prefix.
  (The config is the test variant unchanged, as in colab/flextok.ipynb, so
  the two share compiled programs through the persistent cache.)"""
  config = get_config(f'{name}.py:test')
  final = train_lib.train_and_evaluate(config, str(tmp_path), stop_after=3)
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  train_rows = [r for r in rows if 'train/loss' in r]
  assert train_rows and all(r['train/skipped'] == 0 for r in train_rows)
  if name == 'flextok':
    assert all(np.isfinite(r['train/flow']) and r['train/flow'] > 0
               for r in train_rows)
    np.testing.assert_allclose(train_rows[-1]['train/loss'],
                               train_rows[-1]['train/flow'], rtol=1e-6)
  else:
    assert all(1 <= r['quant/tokens_kept'] <= 8 for r in train_rows)
  assert final['step'] == 3
  assert np.isfinite(final['eval/psnr']) and 'eval/bicubic_psnr' not in final
  tok = Tokenizer.from_workdir(str(tmp_path))
  big_k, vocab = tok.model.num_tokens, tok.model.codebook_size
  np.testing.assert_allclose(final['eval/bits_per_image'],
                             big_k * math.log2(vocab), rtol=1e-6)
  assert np.isfinite(final['eval/bicubic_bits_psnr'])
  x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3))
  ids = tok.encode(x)
  assert ids.shape == (4, big_k)
  np.testing.assert_array_equal(tok.encode(x, num_tokens=4), ids[:, :4])
  assert tok.decode(ids[:, :3]).shape == (4, 16, 16, 3)
