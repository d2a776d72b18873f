"""Config helpers (big_vision style): variant strings and validation.

A config file defines `get_config(arg)`; `arg` is a variant string such as
'tiny' or 'tiny,bf16' parsed with `parse_arg`. Configs are ml_collections
ConfigDicts: overriding an unknown key on the command line fails at once.
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, *, lazy: bool = False, **defaults):
  """'tiny,steps=300,bf16' -> ConfigDict(variant='tiny', steps=300, bf16=True).

  Values are converted to the type of their default; a bare word is the first
  positional default (usually the variant name) or a boolean flag.
  """
  out = dict(defaults)
  names = list(defaults)
  for i, part in enumerate(p for p in (arg or '').split(',') if p):
    if '=' in part:
      key, value = part.split('=', 1)
      if key not in defaults:
        raise ValueError(f'unknown config argument {key!r}; known: {names}')
      kind = type(defaults[key])
      out[key] = (value.lower() in ('1', 'true', 'yes')) if kind is bool else kind(value)
    elif i == 0 and names and isinstance(defaults[names[0]], str):
      out[names[0]] = part
    elif part in defaults and isinstance(defaults[part], bool):
      out[part] = True
    else:
      raise ValueError(f'cannot parse config argument {part!r}; known: {names}')
  return ml_collections.ConfigDict(out) if not lazy else out


class ConfigError(ValueError):
  """A config that cannot work; the message names the key."""


def require(condition: bool, key: str, message: str) -> None:
  if not condition:
    raise ConfigError(f'config.{key}: {message}')


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """'configs/vqgan.py:tiny,bf16' -> that file's `get_config('tiny,bf16')`.

  The same spec the `--config` flag takes, for notebooks and scripts.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path!r} not found')
  module_spec = importlib.util.spec_from_file_location(
      f'_config_{abs(hash(os.path.abspath(path)))}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise AttributeError(f'{path} defines no get_config(arg)')
  return module.get_config(arg or None)
