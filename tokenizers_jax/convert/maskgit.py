"""MaskGIT VQGAN tokenizer checkpoints (google-research/maskgit) <-> our
VQ-GAN workdirs.

  python -m tokenizers_jax.convert --from=maskgit \
      --checkpoint=tokenizer_imagenet256_checkpoint --workdir=/tmp/maskgit_vq
  python -m tokenizers_jax.convert --export=maskgit --workdir=/tmp/maskgit_vq \
      --output=/tmp/maskgit_vq.msgpack

The release is a Flax checkpoint: msgpack bytes (`flax.serialization.
msgpack_restore`, no pickle) of `{'params': {'encoder', 'decoder',
'quantizer'}}` (a tree without the `params` level, or the same tree as
`.npz` / `.safetensors` with '/'-joined names, is read too). It maps onto
`models/vqgan.py: VQGAN` with the 'maskgit' front end
(`frontends/maskgit_vqgan.py`) and `quant_conv=False`; L levels, R
ResBlocks per level (flax's auto-names count modules of one class in the
order they are created):

  release (params/...)                      ours (gen params)
  encoder/Conv_0                            frontend/encoder/conv_in
  encoder/ResBlock_{i*R+j}                  frontend/encoder/down/{i}/blocks/{j}
  encoder/Conv_{1+i}  (conv_downsample)     frontend/encoder/down/{i}/downsample
  encoder/ResBlock_{L*R+j}                  frontend/encoder/mid/{j}
  encoder/GroupNorm_0, Conv_last            frontend/encoder/norm_out, conv_out
  decoder/Conv_0                            frontend/decoder/conv_in
  decoder/ResBlock_{j}                      frontend/decoder/mid/{j}
  decoder/ResBlock_{R+(L-1-i)*R+j}          frontend/decoder/up/{i}/blocks/{j}
  decoder/Conv_{L-i}                        frontend/decoder/up/{i}/upsample
  decoder/GroupNorm_0, Conv_L               frontend/decoder/norm_out, conv_out
  .../ResBlock_k/GroupNorm_0, Conv_0,       .../norm1, conv1,
     GroupNorm_1, Conv_1, Conv_2               norm2, conv2, shortcut
  quantizer/codebook [K, E]                 quantizer/codebook [K, E]

Leaves keep their names (`kernel`, `bias`, `scale`) and layouts (Flax and
NNX convs are both HWIO). Every array must be used. The architecture is read
off the shapes, or from the release's config (`--reference_config`: the
`vqgan_config.get_config().to_dict()` of maskgit, as JSON or YAML; its
`vqvae` block) checked against them.

Dimension legend: K codes, E code dimension (embedding_dim), L resolution
levels, R ResBlocks per level.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from tokenizers_jax.convert import common

_BLOCK = {'norm1': 'GroupNorm_0', 'conv1': 'Conv_0', 'norm2': 'GroupNorm_1',
          'conv2': 'Conv_1', 'shortcut': 'Conv_2'}
_LEAVES = ('kernel', 'bias', 'scale')
MASKGIT_GROUPS = 32  # flax.linen.GroupNorm's default, used by the release.
ConversionError = common.ConversionError


@dataclasses.dataclass(frozen=True)
class MaskgitArch:
  """A MaskGIT VQVAE (`config.vqvae`) architecture and quantizer losses."""
  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  z_channels: int
  in_channels: int
  codebook_size: int
  conv_downsample: bool = False
  activation: str = 'swish'
  resolution: int = 256
  commitment_cost: float = 0.25
  entropy_loss_ratio: float = 0.1
  entropy_temperature: float = 0.01

  def structure(self) -> tuple:
    return (self.ch, self.ch_mult, self.num_res_blocks, self.z_channels,
            self.in_channels, self.codebook_size, self.conv_downsample)


# -----------------------------------------------------------------------------
# Reading the release.
# -----------------------------------------------------------------------------


def _flatten_tree(tree, prefix: str = '') -> dict[str, np.ndarray]:
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_flatten_tree(v, f'{prefix}{k}/'))
  elif tree is not None:
    out[prefix[:-1]] = np.asarray(tree)
  return out


def read_release(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{'/'-joined name: array} of a MaskGIT checkpoint (floats as float32).

  A file ending in .npz / .safetensors is read as flat tensors; anything
  else as flax msgpack bytes (`flax.serialization.msgpack_restore`).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise ConversionError(
        f'{path!r} is a directory; pass the checkpoint file itself (the '
        "release's tokenizer_imagenet256_checkpoint is one msgpack file)")
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint not found: {path!r}')
  if path.endswith(('.npz', '.safetensors')):
    tensors = common.read_tensors(path)
  else:
    from flax import serialization  # pylint: disable=g-import-not-at-top
    with open(path, 'rb') as f:
      data = f.read()
    try:
      tree = serialization.msgpack_restore(data)
    except Exception as e:  # pylint: disable=broad-except
      raise ConversionError(
          f'{path!r} is not a flax msgpack checkpoint ({type(e).__name__}: '
          f'{e}); a .npz or .safetensors file of the params tree is read '
          'too') from e
    if not isinstance(tree, dict):
      raise ConversionError(f'{path!r} holds a {type(tree).__name__}, not a '
                            'params tree')
    tensors = _flatten_tree(tree)
  out = {}
  for k, v in tensors.items():
    v = np.asarray(v)
    if v.dtype.kind == 'f' or v.dtype.name == 'bfloat16':
      v = v.astype(np.float32)
    out[k] = v
  # {'params': {...}} (the variables dict the release stores) -> the tree.
  if any(k.startswith('params/') for k in out):
    out = {(k[len('params/'):] if k.startswith('params/') else k): v
           for k, v in out.items()}
  return out


# -----------------------------------------------------------------------------
# Architecture: from the shapes, or from the release's config.
# -----------------------------------------------------------------------------


def _count(sd: common.StateDict, pattern: str) -> int:
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def infer_arch(sd: common.StateDict, resolution: int = 256) -> MaskgitArch:
  """The architecture read off the shapes of a MaskGIT VQVAE params tree."""
  for name in ('encoder/Conv_0/kernel', 'decoder/Conv_0/kernel',
               'quantizer/codebook'):
    if name not in sd:
      raise ConversionError(
          f'{name} not found: not a MaskGIT VQVAE params tree (its names '
          f'start with {sd.names()[:6]})')
  for marker, norm in (('BatchNorm_', 'BN'), ('LayerNorm_', 'LN')):
    if any(marker in n for n in sd.names()):
      raise ConversionError(
          f'{marker[:-1]} layers found (norm_type={norm!r}); only the '
          "GroupNorm ('GN') VQVAE of the release is supported")
  _, _, in_channels, ch = sd.shape('encoder/Conv_0/kernel')
  levels = _count(sd, 'decoder/Conv_{}/kernel') - 1
  n_enc = _count(sd, 'encoder/ResBlock_{}/Conv_0/kernel')
  n_dec = _count(sd, 'decoder/ResBlock_{}/Conv_0/kernel')
  if levels < 1 or n_enc != n_dec or n_enc % (levels + 1) or not n_enc:
    raise ConversionError(
        f'{n_enc} encoder / {n_dec} decoder ResBlocks and {levels + 1} decoder '
        'convs: not the MaskGIT layout ((L + 1) * R ResBlocks on each side, '
        'L + 1 decoder convs for L levels)')
  blocks = n_enc // (levels + 1)
  enc_convs = _count(sd, 'encoder/Conv_{}/kernel')
  if enc_convs == 2:
    conv_downsample = False
  elif enc_convs == levels + 1:
    conv_downsample = True
  else:
    raise ConversionError(
        f'{enc_convs} encoder convs: expected 2 (average-pool downsampling) '
        f'or {levels + 1} (conv_downsample) for {levels} levels')
  ch_mult = []
  for i in range(levels):
    width = sd.shape(f'encoder/ResBlock_{i * blocks}/Conv_0/kernel')[-1]
    if width % ch:
      raise ConversionError(f'level {i} width {width} is not a multiple of '
                            f'filters={ch}')
    ch_mult.append(width // ch)
  z = sd.shape(f'encoder/Conv_{enc_convs - 1}/kernel')[-1]
  k, e = sd.shape('quantizer/codebook')
  if e != z:
    raise ConversionError(f'the codebook has {e}-dimensional codes, the '
                          f'encoder outputs {z} channels')
  out_ch = sd.shape(f'decoder/Conv_{levels}/kernel')[-1]
  if out_ch != in_channels:
    raise ConversionError(f'the decoder outputs {out_ch} channels, the '
                          f'encoder takes {in_channels}')
  return MaskgitArch(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=blocks,
                     z_channels=z, in_channels=in_channels, codebook_size=k,
                     conv_downsample=conv_downsample, resolution=resolution)


def arch_from_config(cfg: dict, inferred: MaskgitArch) -> MaskgitArch:
  """The architecture of the release's config (the `vqvae` block of
  `vqgan_config.get_config().to_dict()`), checked against the shapes."""
  v = cfg.get('vqvae', cfg) if isinstance(cfg, dict) else None
  if not isinstance(v, dict) or 'filters' not in v:
    raise ConversionError(
        "the reference config has no vqvae block with 'filters' (maskgit's "
        'configs/vqgan_config.py get_config().to_dict() as JSON/YAML is '
        'expected)')
  if v.get('quantizer', 'vq') != 'vq':
    raise ConversionError(f"vqvae.quantizer={v['quantizer']!r}: only 'vq' "
                          '(not the Gumbel quantizer) is supported')
  if v.get('norm_type', 'GN') != 'GN':
    raise ConversionError(f"vqvae.norm_type={v['norm_type']!r}: only 'GN' "
                          'is supported')
  if v.get('conv_fn', 'conv') != 'conv':
    raise ConversionError(f"vqvae.conv_fn={v['conv_fn']!r} is not supported")
  if v.get('entropy_loss_type', 'softmax') != 'softmax':
    raise ConversionError(
        f"vqvae.entropy_loss_type={v['entropy_loss_type']!r}: our entropy "
        "loss is the 'softmax' form only")
  act = v.get('activation_fn', 'swish')
  if act not in ('swish', 'relu'):
    raise ConversionError(f'vqvae.activation_fn={act!r} is not supported')
  res = cfg.get('image_size', inferred.resolution)
  arch = MaskgitArch(
      ch=int(v['filters']),
      ch_mult=tuple(int(m) for m in v['channel_multipliers']),
      num_res_blocks=int(v['num_res_blocks']),
      z_channels=int(v['embedding_dim']),
      in_channels=int(v.get('input_dim', inferred.in_channels)),
      codebook_size=int(v['codebook_size']),
      conv_downsample=bool(v.get('conv_downsample', False)),
      activation=act, resolution=int(res),
      commitment_cost=float(v.get('commitment_cost', 0.25)),
      entropy_loss_ratio=float(v.get('entropy_loss_ratio', 0.1)),
      entropy_temperature=float(v.get('entropy_temperature', 0.01)))
  if arch.structure() != inferred.structure():
    names = ('filters', 'channel_multipliers', 'num_res_blocks',
             'embedding_dim', 'input channels', 'codebook_size',
             'conv_downsample')
    diffs = [f'{n}: config {a}, tensors {b}' for n, a, b in
             zip(names, arch.structure(), inferred.structure()) if a != b]
    raise ConversionError('the reference config does not describe this '
                          'checkpoint: ' + '; '.join(diffs))
  return arch


# -----------------------------------------------------------------------------
# Our config.
# -----------------------------------------------------------------------------


def quantizer_config(arch: MaskgitArch) -> dict:
  """Our VectorQuantizer options equal to MaskGIT's VectorQuantizer:
  commitment_cost * mean((sg[q] - z)^2) + mean((q - sg[z])^2) + ratio *
  entropy(softmax(-d / T))."""
  return dict(name='vq', codebook_size=arch.codebook_size,
              commitment_weight=arch.commitment_cost, codebook_weight=1.0,
              entropy_loss_weight=arch.entropy_loss_ratio,
              entropy_temperature=arch.entropy_temperature,
              diversity_gamma=1.0, use_cosine_sim=False, kmeans_init=False,
              threshold_ema_dead_code=0.0, ema_update=False)


def frontend_config(arch: MaskgitArch) -> dict:
  return dict(ch=arch.ch, ch_mult=arch.ch_mult,
              num_res_blocks=arch.num_res_blocks, z_channels=arch.z_channels,
              in_channels=arch.in_channels, num_groups=MASKGIT_GROUPS,
              conv_downsample=arch.conv_downsample,
              activation=arch.activation, pixel_range='unit')


def build_config(arch: MaskgitArch, base_config: str | None = None,
                 image_size: int | None = None):
  """configs/vqgan.py:imagenet_f16 with the release's architecture."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = common.load_base_config(base_config or common.default_base_config())
  c.model_name = 'vqgan'
  c.data.image_size = int(image_size or arch.resolution)
  c.model.embed_dim = arch.z_channels
  c.model.frontend_name = 'maskgit'
  c.model.pre_quant_norm = False
  c.model.quant_conv = False
  c.model.frontend = frontend_config(arch)
  c.quantizer = ml_collections.ConfigDict(quantizer_config(arch),
                                          type_safe=False)
  return c


# -----------------------------------------------------------------------------
# Names.
# -----------------------------------------------------------------------------


def _levels(config_or_arch) -> tuple[int, int, bool]:
  fe = getattr(config_or_arch, 'ch_mult', None)
  if fe is not None:
    a = config_or_arch
    return len(a.ch_mult), a.num_res_blocks, a.conv_downsample
  fe = config_or_arch.model.frontend
  return (len(fe.ch_mult), int(fe.num_res_blocks),
          bool(fe.get('conv_downsample', False)))


def release_name(path: tuple, arch) -> str:
  """Our generator parameter path -> its '/'-joined release name.

  `arch` is a MaskgitArch or one of our configs (model.frontend)."""
  path = tuple(str(p) for p in path)
  if path == ('quantizer', 'codebook'):
    return 'quantizer/codebook'
  levels, r, conv_down = _levels(arch)
  bad = ConversionError(f'{"/".join(path)} has no MaskGIT counterpart')
  if len(path) < 4 or path[0] != 'frontend' or path[-1] not in _LEAVES:
    raise bad
  half, rest, leaf = path[1], path[2:-1], path[-1]

  def block(index: int, sub: tuple) -> str:
    if len(sub) != 1 or sub[0] not in _BLOCK:
      raise bad
    return f'{half}/ResBlock_{index}/{_BLOCK[sub[0]]}/{leaf}'

  head = rest[0]
  if half == 'encoder':
    if head == 'down' and len(rest) >= 3 and rest[2] == 'blocks':
      return block(int(rest[1]) * r + int(rest[3]), rest[4:])
    if head == 'mid':
      return block(levels * r + int(rest[1]), rest[2:])
    module = {'conv_in': 'Conv_0', 'norm_out': 'GroupNorm_0',
              'conv_out': f'Conv_{levels if conv_down else 1}'}.get(head)
    if head == 'down' and len(rest) == 3 and rest[2] == 'downsample':
      module = f'Conv_{1 + int(rest[1])}'
  elif half == 'decoder':
    if head == 'up' and len(rest) >= 3 and rest[2] == 'blocks':
      return block(r + (levels - 1 - int(rest[1])) * r + int(rest[3]),
                   rest[4:])
    if head == 'mid':
      return block(int(rest[1]), rest[2:])
    module = {'conv_in': 'Conv_0', 'norm_out': 'GroupNorm_0',
              'conv_out': f'Conv_{levels}'}.get(head)
    if head == 'up' and len(rest) == 3 and rest[2] == 'upsample':
      module = f'Conv_{levels - int(rest[1])}'
  else:
    raise bad
  if module is None or (len(rest) != 1 and head not in ('down', 'up')):
    raise bad
  return f'{half}/{module}/{leaf}'


def _abstract_generator_params(config):
  from tokenizers_jax.models import registry  # pylint: disable=g-import-not-at-top
  return common.abstract_variables(
      lambda: registry.build_model(config, 0))[0][0]


# -----------------------------------------------------------------------------
# Import.
# -----------------------------------------------------------------------------


def convert(checkpoint: str, workdir: str, *,
            reference_config: str | None = None,
            base_config: str | None = None, image_size: int | None = None,
            overrides: tuple[str, ...] = (), lpips_dir: str | None = None,
            ignore: tuple[str, ...] = (), overwrite: bool = False) -> dict:
  """Converts a MaskGIT VQGAN tokenizer checkpoint into a training workdir.

  Args:
    checkpoint: the release's flax msgpack checkpoint (or .npz/.safetensors
      of the params tree with '/'-joined names).
    workdir: the output workdir (must not hold checkpoints yet).
    reference_config: the release's config as JSON/YAML (its `vqvae` block);
      without it the architecture is read off the shapes.
    base_config: our config the workdir starts from (default
      configs/vqgan.py:imagenet_f16).
    image_size: our data.image_size (default: the config's image_size, else
      256).
    overrides: 'key=value' config overrides, applied last.
    lpips_dir: a `--from=lpips` output dir for the perceptual loss (the
      release has no LPIPS weights; without it perceptual_weight is 0).
    ignore: name prefixes (e.g. 'opt_state') to drop on purpose.
    overwrite: replace the checkpoints already in `workdir`.

  Returns:
    The conversion report (also written to workdir/conversion.json).
  """
  sd = common.StateDict(read_release(checkpoint),
                        f'MaskGIT checkpoint {checkpoint!r}')
  sd.skip_prefixes(ignore)
  arch = infer_arch(sd, image_size or 256)
  if reference_config:
    arch = arch_from_config(common.read_config_file(reference_config), arch)
  config = build_config(arch, base_config, image_size)
  notes = ['the release has no discriminator: it starts random',
           'the networks see images in [0, 1] as in the release; the '
           "front end maps our [-1, 1] to it and back (pixel_range='unit')"]
  if lpips_dir:
    common.use_lpips_files(config, lpips_dir)
  elif config.loss.perceptual_weight > 0:
    config.loss.perceptual_weight = 0.0
    notes.append('no --lpips_dir: loss.perceptual_weight set to 0 (run '
                 '--from=lpips and pass --lpips_dir to fine-tune with it)')
  common.apply_overrides(config, overrides)

  # Take every array before anything is built or written.
  params = _abstract_generator_params(config)
  gen = common.map_tree(params, lambda p, leaf: sd.take(release_name(p, config),
                                                  leaf.shape))
  try:
    sd.check_complete()
  except ConversionError as e:
    outside = sorted({n.split('/')[0] for n in sd.unused()}
                     - {'encoder', 'decoder', 'quantizer'})
    if not outside:
      raise
    raise ConversionError(
        f'{e}\n(entries outside the VQVAE params: {outside}; if they are '
        'training state such as optimizer moments, drop them with '
        + ' '.join(f'--ignore={p}' for p in outside) + ')') from None

  def fill(state):
    state['gen']['params'] = gen
    if common.flatten(state['ema']):
      state['ema'] = common.map_tree(gen, lambda p, v: np.array(v))
    return state

  report = common.conversion_report(
      'maskgit', checkpoint, reference_config, arch, sd, notes)
  common.write_workdir(workdir, config, fill, overwrite=overwrite,
                       report=report)
  return report


# -----------------------------------------------------------------------------
# Export.
# -----------------------------------------------------------------------------


def _check_exportable(config) -> None:
  m, q = config.model, dict(config.quantizer)
  problems = []
  if config.get('model_name') != 'vqgan' or m.get('frontend_name') != 'maskgit':
    problems.append("only VQ-GAN models with the 'maskgit' front end")
  if m.get('quant_conv', True):
    problems.append('model.quant_conv=True (the release has no quant_conv / '
                    'post_quant_conv)')
  if m.get('pre_quant_norm'):
    problems.append('model.pre_quant_norm has no MaskGIT counterpart')
  if q.get('name') != 'vq':
    problems.append(f'quantizer {q.get("name")!r} is not a plain VQ')
  for key in ('use_cosine_sim', 'simvq'):
    if q.get(key):
      problems.append(f'quantizer.{key}=True has no MaskGIT counterpart')
  if q.get('codebook_dim') not in (None, m.get('embed_dim')):
    problems.append('quantizer.codebook_dim (projected lookup) has no '
                    'MaskGIT counterpart')
  fe = m.get('frontend', {})
  if fe.get('pixel_range', 'unit') != 'unit':
    problems.append("model.frontend.pixel_range must be 'unit' (the release "
                    'sees [0, 1] images)')
  widths = [fe.get('ch', 0) * k for k in fe.get('ch_mult', ())]
  if any(w % MASKGIT_GROUPS for w in widths) or fe.get(
      'num_groups', MASKGIT_GROUPS) != MASKGIT_GROUPS:
    problems.append(f'the release normalises with {MASKGIT_GROUPS} groups; '
                    f'widths {widths} / num_groups={fe.get("num_groups")} '
                    'do not')
  if problems:
    raise ConversionError('this workdir cannot be written as a MaskGIT '
                          'VQVAE: ' + '; '.join(problems))


def maskgit_config(config) -> dict:
  """The `vqvae` block (plus image_size) of MaskGIT's config for ours."""
  fe, q = config.model.frontend, dict(config.quantizer)
  return {'image_size': int(config.data.image_size), 'vqvae': {
      'quantizer': 'vq', 'codebook_size': int(q['codebook_size']),
      'entropy_loss_ratio': float(q.get('entropy_loss_weight', 0.0)),
      'entropy_temperature': float(q.get('entropy_temperature', 0.01)),
      'entropy_loss_type': 'softmax',
      'commitment_cost': float(q.get('commitment_weight', 0.25)),
      'filters': int(fe.ch), 'num_res_blocks': int(fe.num_res_blocks),
      'channel_multipliers': [int(k) for k in fe.ch_mult],
      'embedding_dim': int(config.model.embed_dim),
      'conv_downsample': bool(fe.get('conv_downsample', False)),
      'activation_fn': str(fe.get('activation', 'swish')),
      'norm_type': 'GN'}}


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def export(workdir: str, output: str, *, use_ema: bool = True,
           discriminator: bool = False, lpips: bool = False) -> dict:
  """Writes a workdir's model as a MaskGIT VQVAE checkpoint.

  `output`: flax msgpack bytes of {'params': tree} (any name, e.g.
  `.msgpack`; what `flax.training.checkpoints.restore_checkpoint` and
  maskgit's `restore_from_path` read), or `.npz` / `.safetensors` with
  '/'-joined names. The config goes next to it as `<stem>.json`. The release
  has no discriminator or LPIPS weights, so `discriminator` / `lpips` are
  ignored (noted in the report).
  """
  import json  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  config = train_lib.load_config(workdir)
  _check_exportable(config)
  state, step = common.read_workdir_state(workdir)
  ema = state.get('ema') or {}
  used_ema = bool(use_ema and common.flatten(ema))
  params = common.flatten(ema if used_ema else state['gen']['params'])
  if ('quantizer', 'codebook') not in params:  # An EMA codebook is state.
    params[('quantizer', 'codebook')] = common.flatten(
        state['gen']['rest'])[('quantizer', 'codebook')]
  flat = {release_name(path, config): np.asarray(v, np.float32)
          for path, v in params.items()}
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  if output.endswith(('.npz', '.safetensors')):
    common.write_tensors(output, flat)
  else:
    from flax import serialization  # pylint: disable=g-import-not-at-top
    with open(output, 'wb') as f:
      f.write(serialization.msgpack_serialize({'params': _unflatten(flat)}))
  stem = os.path.splitext(os.path.abspath(output))[0]
  config_path = stem + '.json'
  with open(config_path, 'w') as f:
    json.dump(maskgit_config(config), f, indent=2)
  notes = []
  if discriminator or lpips:
    notes.append('the MaskGIT tokenizer checkpoint holds the generator only; '
                 'the discriminator / LPIPS weights are not written')
  return {'target': 'maskgit', 'workdir': os.path.abspath(workdir),
          'step': int(step), 'ema': used_ema, 'output': os.path.abspath(output),
          'config': config_path, 'tensors': len(flat), 'notes': notes}
