"""Checkpoint converters: published tokenizer releases <-> our workdirs.

  python -m tokenizers_jax.convert --from=taming --checkpoint=last.ckpt \
      --reference_config=model.yaml --workdir=/tmp/vqgan_f16
  python -m tokenizers_jax.convert --from=lpips --vgg=vgg16.pth --workdir=/data/lpips
  python -m tokenizers_jax.convert --export=taming --workdir=/tmp/vqgan_f16 \
      --output=/tmp/vqgan_f16.safetensors

From Python: `convert('taming', checkpoint, workdir, **options)` and
`export('taming', workdir, output, **options)` return the conversion report.
A converted workdir is an ordinary training workdir (`Tokenizer.from_workdir`,
`python -m tokenizers_jax.evaluate`, `--config.init_from=DIR`).
"""

from __future__ import annotations

import importlib

from tokenizers_jax.convert.common import ConversionError

# source -> module with `convert(...)`; target -> module with `export(...)`.
SOURCES = {'taming': 'tokenizers_jax.convert.taming',
           'maskgit': 'tokenizers_jax.convert.maskgit',
           'open_magvit2': 'tokenizers_jax.convert.open_magvit2',
           'lpips': 'tokenizers_jax.convert.lpips',
           'flextok': 'tokenizers_jax.convert.flextok',
           'titok': 'tokenizers_jax.convert.titok',
           'neurorvq': 'tokenizers_jax.convert.neurorvq',
           'wavtokenizer': 'tokenizers_jax.convert.wavtokenizer'}
TARGETS = {'taming': 'tokenizers_jax.convert.taming',
           'open_magvit2': 'tokenizers_jax.convert.open_magvit2',
           'wavtokenizer': 'tokenizers_jax.convert.wavtokenizer',
           'maskgit': 'tokenizers_jax.convert.maskgit'}


def _module(table: dict, name: str, what: str):
  if name not in table:
    raise ConversionError(f'unknown {what} {name!r}; known: {sorted(table)}')
  return importlib.import_module(table[name])


def convert(source: str, checkpoint: str | None, workdir: str, **options) -> dict:
  """Converts a `source` release checkpoint into `workdir` (see the
  source's module for its options)."""
  module = _module(SOURCES, source, 'source')
  if source == 'lpips':
    return module.convert(workdir, checkpoint, **options)
  if not checkpoint:
    raise ConversionError(f'--from={source} needs --checkpoint=PATH')
  return module.convert(checkpoint, workdir, **options)


def export(target: str, workdir: str, output: str, **options) -> dict:
  """Writes the model of `workdir` in the `target` release's layout."""
  return _module(TARGETS, target, 'export target').export(workdir, output,
                                                           **options)


__all__ = ['ConversionError', 'SOURCES', 'TARGETS', 'convert', 'export']
