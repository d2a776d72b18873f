"""Shared fixtures: a random tiny tokenizer workdir and its pretokenized
fake images (train with flips, validation), built once per session."""

import os

import pytest

from tokenizers_jax import config_lib
from tokenizers_jax import pretokenize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def tokenizer_config(quantizer: dict | None = None, source: str = 'fake:24'):
  """configs/vqgan.py:test (16² images, 8x8 tokens of 32 codes) on fake
  images."""
  c = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'vqgan.py') + ':test')
  c.data.source = source
  if quantizer is not None:
    c.quantizer = quantizer
  return c


@pytest.fixture(scope='session')
def tokenizer_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('random_vqgan'))
  return pretokenize.write_random_tokenizer(tokenizer_config(), workdir)


@pytest.fixture(scope='session')
def tokens_dir(tokenizer_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('tokens'))
  quiet = lambda _: None
  pretokenize.run(tokenizer_dir, out, split='train', flip=True, batch_size=8,
                  shard_size=8, log=quiet)
  pretokenize.run(tokenizer_dir, out, split='validation', batch_size=8,
                  shard_size=8, log=quiet)
  return out
