"""LPIPS (VGG16) weights -> the two local files `LPIPS.from_files` reads.

  python -m tokenizers_jax.convert --from=lpips --vgg=/data/vgg16.pth \
      --workdir=/data/lpips
  # -> /data/lpips/lpips_vgg16.npz, /data/lpips/lpips_vgg_lin.npz

Sources of the two parts:
  linear heads  `--checkpoint`: the `lpips` wheel's `lpips/weights/v0.1/
                vgg.pth` (the default when the package is installed; it is
                found without importing `lpips`, which needs torchvision),
                keys `lin{k}.model.1.weight` [1, C, 1, 1].
  VGG16 trunk   `--vgg`: a torchvision-layout state dict (`features.{i}.
                weight/bias`; the classifier is not used), or nothing when
                `--checkpoint` already holds the trunk in the LPIPS/taming
                layout (`net.slice{k}.{i}.*`, e.g. taming's `vgg.pth`).

Both outputs are `.npz` (readable without torch): `features.{i}.weight/
bias` (OIHW, as torchvision) and `lin{k}.model.1.weight`.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from tokenizers_jax.convert import common
from tokenizers_jax.losses import perceptual

VGG_FILE = 'lpips_vgg16.npz'
LIN_FILE = 'lpips_vgg_lin.npz'


def default_heads_path() -> str:
  """The linear heads the `lpips` wheel ships (weights/v0.1/vgg.pth)."""
  spec = importlib.util.find_spec('lpips')
  if spec is None or not spec.submodule_search_locations:
    raise common.ConversionError(
        'no --checkpoint given and the lpips package is not installed '
        '(pip install --no-deps lpips); pass --checkpoint=PATH/vgg.pth')
  path = os.path.join(spec.submodule_search_locations[0], 'weights', 'v0.1',
                      'vgg.pth')
  if not os.path.isfile(path):
    raise common.ConversionError(f'the lpips package has no {path}')
  return path


def _stage_of(index: int) -> int:
  for k, stage in enumerate(perceptual.VGG16_STAGES):
    if index in stage:
      return k
  raise KeyError(index)


def take_trunk(sd: common.StateDict, layout: str,
               prefix: str = '') -> dict[str, np.ndarray]:
  """The 13 VGG16 convs as {'features.{i}.weight/bias': OIHW arrays}.

  layout: 'torchvision' (`features.{i}.*`) or 'lpips' (`net.slice{k}.{i}.*`,
  also taming's `loss.perceptual_loss.` with that prefix).
  """
  out = {}
  for i, cin, cout in perceptual.VGG16_CONVS:
    src = (f'{prefix}features.{i}' if layout == 'torchvision' else
           f'{prefix}net.slice{_stage_of(i) + 1}.{i}')
    for name, shape in (('weight', (cout, cin, 3, 3)), ('bias', (cout,))):
      value = sd.take(f'{src}.{name}', shape)
      if value is not None:
        out[f'features.{i}.{name}'] = value.astype(np.float32)
  return out


def take_heads(sd: common.StateDict, prefix: str = '') -> dict[str, np.ndarray]:
  """The five linear heads as {'lin{k}.model.1.weight': [1, C, 1, 1]}."""
  out = {}
  for k, c in enumerate(perceptual.LPIPS_CHANNELS):
    name = f'{prefix}lin{k}.model.1.weight'
    if name not in sd and f'{prefix}lin{k}.model.0.weight' in sd:
      name = f'{prefix}lin{k}.model.0.weight'  # Saved without dropout.
    value = sd.take(name, (1, c, 1, 1))
    # The lpips package also registers the heads as a ModuleList `lins`:
    # the same tensors under a second name.
    alias = name.replace(f'{prefix}lin{k}.', f'{prefix}lins.{k}.', 1)
    if alias in sd:
      twin = sd.take(alias, (1, c, 1, 1))
      if value is not None and twin is not None and not np.array_equal(
          twin, value):
        raise common.ConversionError(f'{alias} differs from {name}')
    if value is not None:
      out[f'lin{k}.model.1.weight'] = value.astype(np.float32)
  return out


def take_scaling_layer(sd: common.StateDict, prefix: str = '') -> None:
  """Uses the fixed input scaling buffers after checking they are LPIPS's."""
  for name, ref in (('shift', perceptual.LPIPS_SHIFT),
                    ('scale', perceptual.LPIPS_SCALE)):
    key = f'{prefix}scaling_layer.{name}'
    if key in sd:
      value = sd.take(key, (1, 3, 1, 1))
      if value is not None and not np.allclose(value.reshape(-1), ref,
                                               atol=1e-6):
        raise common.ConversionError(
            f'{key} = {value.reshape(-1).tolist()}, not LPIPS v0.1\'s {ref}')


def take_embedded(sd: common.StateDict, prefix: str) -> tuple[dict, dict]:
  """(trunk, heads) of an LPIPS module stored inside a tokenizer checkpoint
  under `prefix` (lpips-package names; its scaling layer is checked)."""
  trunk = take_trunk(sd, 'lpips', prefix)
  heads = take_heads(sd, prefix)
  take_scaling_layer(sd, prefix)
  return trunk, heads


def write_files(output_dir: str, trunk: dict, heads: dict) -> tuple[str, str]:
  """Writes both .npz files and checks that `LPIPS.from_files` loads them."""
  os.makedirs(output_dir, exist_ok=True)
  vgg_path = os.path.join(os.path.abspath(output_dir), VGG_FILE)
  lin_path = os.path.join(os.path.abspath(output_dir), LIN_FILE)
  common.write_tensors(vgg_path, trunk)
  common.write_tensors(lin_path, heads)
  perceptual.LPIPS.from_files(vgg_path, lin_path)  # Validates both files.
  return vgg_path, lin_path


def convert(output_dir: str, checkpoint: str | None = None,
            vgg: str | None = None) -> dict:
  """Converts LPIPS heads (+ a VGG16 trunk) into `output_dir`.

  Returns a report: the file paths, the config flags that use them, and the
  tensors read and left out (the torchvision classifier only).
  """
  heads_path = checkpoint or default_heads_path()
  heads_sd = common.StateDict(common.read_tensors(heads_path),
                              f'LPIPS heads {heads_path!r}')
  has_trunk = any(k.startswith('net.slice') for k in heads_sd.names())
  if has_trunk and vgg:
    raise common.ConversionError(
        f'{heads_path!r} already holds a VGG16 trunk (net.slice*); drop --vgg')
  if not has_trunk and not vgg:
    raise common.ConversionError(
        f'{heads_path!r} holds only the linear heads; give the VGG16 trunk '
        'with --vgg=PATH (a torchvision-layout vgg16 state dict)')
  heads = take_heads(heads_sd)
  take_scaling_layer(heads_sd)
  report = {'source': 'lpips', 'heads': os.path.abspath(heads_path)}
  if has_trunk:
    trunk = take_trunk(heads_sd, 'lpips')
    heads_sd.check_complete()
    report['tensors_read'] = len(heads_sd.used)
  else:
    trunk_sd = common.StateDict(common.read_tensors(vgg),
                                f'VGG16 trunk {vgg!r}')
    for name in trunk_sd.names('classifier.'):
      trunk_sd.skip(name)  # The fully connected layers: not used by LPIPS.
    trunk = take_trunk(trunk_sd, 'torchvision')
    heads_sd.check_complete()
    trunk_sd.check_complete()
    report['vgg'] = os.path.abspath(vgg)
    report['tensors_read'] = len(heads_sd.used) + len(trunk_sd.used)
    report['left_out'] = sorted(trunk_sd.skipped)
  vgg_path, lin_path = write_files(output_dir, trunk, heads)
  report.update(
      vgg_path=vgg_path, lin_path=lin_path,
      flags=f'--config.loss.lpips_vgg_path={vgg_path} '
            f'--config.loss.lpips_lin_path={lin_path}')
  return report
