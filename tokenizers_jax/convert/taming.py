"""taming-transformers VQModel checkpoints <-> our VQ-GAN workdirs.

  python -m tokenizers_jax.convert --from=taming --checkpoint=last.ckpt \
      --reference_config=model.yaml --workdir=/tmp/vqgan_f16_1024
  python -m tokenizers_jax.convert --export=taming --workdir=/tmp/vqgan_f16_1024 \
      --output=/tmp/vqgan_f16_1024.safetensors

The release's state dict (`VQModel.state_dict()`, or a Lightning checkpoint
whose `state_dict` loads with `weights_only=True`) maps onto
`models/vqgan.py: VQGAN` with the `taming` front end:

  taming                                    ours (gen params)
  encoder.down.{i}.block.{j}.*              frontend/encoder/down/{i}/blocks/{j}/*
  encoder.down.{i}.attn.{j}.*               frontend/encoder/down/{i}/attns/{j}/*
  encoder.down.{i}.downsample.conv.*        frontend/encoder/down/{i}/downsample/conv/*
  encoder.mid.block_1 / attn_1 / block_2    frontend/encoder/mid_block_1 / mid_attn / mid_block_2
  encoder.conv_in, norm_out, conv_out       frontend/encoder/conv_in, norm_out, conv_out
  decoder.* (up.{i}.block / attn / upsample)  frontend/decoder/* (up/{i}/blocks / attns / upsample)
  quant_conv.*, post_quant_conv.*           quant_conv/*, post_quant_conv/*
  quantize.embedding.weight [K, E]          quantizer/codebook [K, E]
  loss.discriminator.main.{0, 2+3n, 2+3L}   disc conv_in, convs/{n}, conv_out
  loss.discriminator.main.{3+3n}            disc norms/{n} (BatchNorm; running stats in rest)
  loss.perceptual_loss.*                    LPIPS files in workdir/lpips/ (config.loss paths)

`.weight` is a conv kernel (OIHW -> HWIO) or a GroupNorm/BatchNorm scale,
`.bias` a bias. Every tensor of the checkpoint must be used (BatchNorm's
`num_batches_tracked` has no counterpart and is dropped on purpose).

The architecture comes from the release's YAML (`model.params`: ddconfig,
embed_dim, n_embed, lossconfig.params for the discriminator and loss
weights) or, without one, from the tensor shapes (then `resolution` is
`--image_size`, default 256). The quantizer: taming's VectorQuantizer with
`legacy=True` (every release: VQModel hard-codes it) weighs
`mean((sg[zq] - z)^2) + beta * mean((zq - sg[z])^2)`, i.e. our
`commitment_weight=1, codebook_weight=beta`; `legacy=False` is
`commitment_weight=beta, codebook_weight=1` (`model.params.legacy` /
`model.params.beta` are read when a config has them).

Dimension legend: K codes, E code dimension (embed_dim), L discriminator
layers (n_layers).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from tokenizers_jax.convert import common
from tokenizers_jax.convert import lpips as lpips_convert

# taming hard-codes GroupNorm(32) in every ResNet and attention block.
TAMING_GROUPS = 32
_MODULES = {'blocks': 'block', 'attns': 'attn', 'mid_block_1': 'mid.block_1',
            'mid_attn': 'mid.attn_1', 'mid_block_2': 'mid.block_2'}
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_DISC = 'loss.discriminator.'
_LPIPS = 'loss.perceptual_loss.'


@dataclasses.dataclass(frozen=True)
class TamingArch:
  """A taming VQModel's architecture (ddconfig + quantizer + discriminator).

  attn_levels: resolution levels (0 = full size) with attention blocks,
  which is what taming's `attn_resolutions` select at its `resolution`.
  """
  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  attn_levels: tuple[int, ...]
  z_channels: int
  in_channels: int
  embed_dim: int
  n_embed: int
  resolution: int = 256
  dropout: float = 0.0
  beta: float = 0.25
  legacy: bool = True
  # NLayerDiscriminator (ndf, n_layers) when the checkpoint has one.
  disc: tuple[int, int] | None = None
  # lossconfig.params of VQLPIPSWithDiscriminator, when a config gave them.
  loss: tuple[tuple[str, Any], ...] = ()

  def structure(self) -> tuple:
    return (self.ch, self.ch_mult, self.num_res_blocks, self.attn_levels,
            self.z_channels, self.in_channels, self.embed_dim, self.n_embed,
            self.disc)


# -----------------------------------------------------------------------------
# Architecture: from the tensors, or from the release's config.
# -----------------------------------------------------------------------------


def _count(sd: common.StateDict, pattern: str) -> int:
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def _disc_arch(sd: common.StateDict) -> tuple[int, int] | None:
  if f'{_DISC}main.0.weight' not in sd:
    return None
  if any(n.endswith('.loc') for n in sd.names(_DISC)):
    raise common.ConversionError(
        'the discriminator uses ActNorm (use_actnorm=True); our '
        'NLayerDiscriminator has BatchNorm, GroupNorm or none. Convert '
        f'without it: --ignore={_DISC}')
  convs = sorted(int(n[len(_DISC) + 5:].split('.')[0])
                 for n in sd.names(_DISC + 'main.')
                 if n.endswith('.weight') and len(sd.shape(n)) == 4)
  n_layers = len(convs) - 2
  expected = [0] + [2 + 3 * n for n in range(n_layers)] + [2 + 3 * n_layers]
  if n_layers < 1 or convs != expected:
    raise common.ConversionError(
        f'discriminator convs at main.{convs}: not the NLayerDiscriminator '
        f'layout (main.{expected})')
  ndf, din = sd.shape(f'{_DISC}main.0.weight')[:2]
  if din != 3:
    raise common.ConversionError(f'discriminator input has {din} channels; '
                                 'ours takes RGB images (3)')
  return ndf, n_layers


def infer_arch(sd: common.StateDict, resolution: int = 256) -> TamingArch:
  """The architecture read off the tensor shapes of a VQModel state dict."""
  for name in ('encoder.conv_in.weight', 'quant_conv.weight',
               'decoder.conv_out.weight', 'encoder.conv_out.weight'):
    if name not in sd:
      if 'quantize.embed.weight' in sd or 'quantize.proj.weight' in sd:
        raise common.ConversionError(
            'this is a GumbelVQ checkpoint (quantize.proj / quantize.embed); '
            'only VQModel (VectorQuantizer) is supported')
      raise common.ConversionError(
          f'{name} not found: not a taming VQModel state dict (its keys '
          f'start with {sd.names()[:6]})')
  if 'quantize.embed.weight' in sd:
    raise common.ConversionError('GumbelVQ checkpoints are not supported')
  for marker in ('temb', 'conv_shortcut'):
    if any(marker in n for n in sd.names()):
      raise common.ConversionError(
          f'{marker} tensors found: a ResnetBlock variant (timestep embedding'
          ' / 3x3 shortcut) that our taming front end does not have')
  levels = _count(sd, 'encoder.down.{}.block.0.conv1.weight')
  blocks = _count(sd, 'encoder.down.0.block.{}.conv1.weight')
  ch, in_channels = sd.shape('encoder.conv_in.weight')[:2]
  ch_mult = []
  for i in range(levels):
    width = sd.shape(f'encoder.down.{i}.block.0.conv1.weight')[0]
    if width % ch:
      raise common.ConversionError(f'level {i} width {width} is not a '
                                   f'multiple of ch={ch}')
    ch_mult.append(width // ch)
  attn = tuple(i for i in range(levels)
               if f'encoder.down.{i}.attn.0.q.weight' in sd)
  dec_attn = tuple(i for i in range(levels)
                   if f'decoder.up.{i}.attn.0.q.weight' in sd)
  if attn != dec_attn:
    raise common.ConversionError(
        f'encoder attention at levels {attn}, decoder at {dec_attn}: taming '
        'places both from one attn_resolutions')
  embed_dim, z = sd.shape('quant_conv.weight')[:2]
  z_out = sd.shape('encoder.conv_out.weight')[0]
  if z_out != z:
    raise common.ConversionError(
        f'encoder.conv_out has {z_out} outputs, quant_conv takes {z}'
        + (' (double_z=True)' if z_out == 2 * z else '') +
        ': only double_z=False VQ models are supported')
  out_ch = sd.shape('decoder.conv_out.weight')[0]
  if out_ch != in_channels:
    raise common.ConversionError(
        f'out_ch={out_ch} differs from in_channels={in_channels}; our front '
        'end decodes to its input channels')
  if 'quantize.embedding.weight' not in sd:
    raise common.ConversionError('quantize.embedding.weight not found')
  n_embed = sd.shape('quantize.embedding.weight')[0]
  return TamingArch(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=blocks,
                    attn_levels=attn, z_channels=z, in_channels=in_channels,
                    embed_dim=embed_dim, n_embed=n_embed,
                    resolution=resolution, disc=_disc_arch(sd))


def _model_params(cfg: dict) -> dict:
  node = cfg
  target = None
  for key in ('model', 'params'):
    if isinstance(node, dict) and key in node and 'ddconfig' not in node:
      target = node.get('target', target)
      node = node[key]
  if not isinstance(node, dict) or 'ddconfig' not in node:
    raise common.ConversionError(
        'the reference config has no model.params.ddconfig (a taming VQModel '
        'YAML, e.g. configs/imagenet_vqgan.yaml, is expected)')
  if target and not str(target).endswith('.VQModel'):
    raise common.ConversionError(
        f'model.target is {target!r}; only taming.models.vqgan.VQModel is '
        'supported (not GumbelVQ, EMAVQ or the segmentation/conditional '
        'models)')
  if node.get('remap') is not None:
    raise common.ConversionError('model.params.remap (a restricted codebook '
                                 'index map) is not supported')
  if node.get('colorize_nlabels') is not None:
    raise common.ConversionError('segmentation VQ models (colorize_nlabels) '
                                 'are not supported')
  return node


def arch_from_config(cfg: dict, inferred: TamingArch) -> TamingArch:
  """The architecture of a release's YAML/JSON config, checked against the
  tensors (`inferred`)."""
  p = _model_params(cfg)
  dd = p['ddconfig']
  if dd.get('double_z', False):
    raise common.ConversionError('ddconfig.double_z=True: not a VQ model')
  if dd.get('out_ch', dd.get('in_channels', 3)) != dd.get('in_channels', 3):
    raise common.ConversionError('ddconfig.out_ch != in_channels is not '
                                 'supported')
  if not dd.get('resamp_with_conv', True):
    raise common.ConversionError('ddconfig.resamp_with_conv=False is not '
                                 'supported')
  res = int(dd['resolution'])
  attn_res = [int(r) for r in dd.get('attn_resolutions', ())]
  levels = len(dd['ch_mult'])
  loss = dict((p.get('lossconfig') or {}).get('params') or {})
  if loss.get('disc_conditional'):
    raise common.ConversionError('disc_conditional=True is not supported')
  if loss.get('use_actnorm'):
    raise common.ConversionError('use_actnorm=True is not supported')
  if loss.get('disc_in_channels', 3) != 3:
    raise common.ConversionError('disc_in_channels must be 3')
  arch = TamingArch(
      ch=int(dd['ch']), ch_mult=tuple(int(m) for m in dd['ch_mult']),
      num_res_blocks=int(dd['num_res_blocks']),
      attn_levels=tuple(i for i in range(levels) if res // 2 ** i in attn_res),
      z_channels=int(dd['z_channels']), in_channels=int(dd.get('in_channels',
                                                               3)),
      embed_dim=int(p['embed_dim']), n_embed=int(p['n_embed']),
      resolution=res, dropout=float(dd.get('dropout', 0.0)),
      beta=float(p.get('beta', 0.25)), legacy=bool(p.get('legacy', True)),
      disc=((int(loss.get('disc_ndf', 64)), int(loss.get('disc_num_layers',
                                                           3)))
            if inferred.disc is not None else None),
      loss=tuple(sorted((k, v) for k, v in loss.items()
                        if isinstance(v, (int, float, str, bool)))))
  if arch.structure() != inferred.structure():
    names = ('ch', 'ch_mult', 'num_res_blocks', 'attention levels',
             'z_channels', 'in_channels', 'embed_dim', 'n_embed',
             'discriminator (ndf, n_layers)')
    diffs = [f'{n}: config {a}, tensors {b}' for n, a, b in
             zip(names, arch.structure(), inferred.structure()) if a != b]
    raise common.ConversionError('the reference config does not describe '
                                 'this checkpoint: ' + '; '.join(diffs))
  return arch


# -----------------------------------------------------------------------------
# Our config.
# -----------------------------------------------------------------------------


def quantizer_config(arch: TamingArch) -> dict:
  """Our VectorQuantizer options equal to taming's VectorQuantizer."""
  return dict(name='vq', codebook_size=arch.n_embed,
              commitment_weight=1.0 if arch.legacy else arch.beta,
              codebook_weight=arch.beta if arch.legacy else 1.0,
              use_cosine_sim=False, kmeans_init=False,
              threshold_ema_dead_code=0.0, ema_update=False)


def build_config(arch: TamingArch, base_config: str | None = None,
                 image_size: int | None = None):
  """configs/vqgan.py:imagenet_f16 with the release's architecture and loss."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = common.load_base_config(base_config or common.default_base_config())
  size = int(image_size or arch.resolution)
  c.model_name = 'vqgan'
  c.data.image_size = size
  c.model.embed_dim = arch.embed_dim
  c.model.frontend_name = 'taming'
  c.model.pre_quant_norm = False
  c.model.frontend = dict(
      ch=arch.ch, ch_mult=arch.ch_mult, num_res_blocks=arch.num_res_blocks,
      attn_resolutions=tuple(size // 2 ** i for i in arch.attn_levels),
      z_channels=arch.z_channels, in_channels=arch.in_channels,
      num_groups=TAMING_GROUPS, dropout=arch.dropout)
  c.quantizer = ml_collections.ConfigDict(quantizer_config(arch),
                                          type_safe=False)
  if arch.disc is not None:
    c.disc = dict(ndf=arch.disc[0], n_layers=arch.disc[1], norm='batch')
  loss = dict(arch.loss)
  renames = {'disc_start': 'disc_start', 'codebook_weight': 'quantizer_weight',
             'pixelloss_weight': 'recon_weight',
             'perceptual_weight': 'perceptual_weight',
             'disc_loss': 'gan_loss'}
  for theirs, ours in renames.items():
    if theirs in loss:
      c.loss[ours] = type(c.loss[ours])(loss[theirs])
  if 'disc_weight' in loss or 'disc_factor' in loss:
    # taming scales the generator's GAN term by disc_factor * disc_weight.
    c.loss.disc_weight = float(loss.get('disc_weight', 1.0)) * float(
        loss.get('disc_factor', 1.0))
  c.loss.recon = 'l1'
  return c


# -----------------------------------------------------------------------------
# Names.
# -----------------------------------------------------------------------------


def generator_name(path: tuple) -> str:
  """Our generator parameter path -> its taming state-dict name."""
  if tuple(path) == ('quantizer', 'codebook'):
    return 'quantize.embedding.weight'
  if path[0] in ('quant_conv', 'post_quant_conv'):
    parts = list(path)
  elif path[0] == 'frontend' and path[1] in ('encoder', 'decoder'):
    parts = list(path[1:])
  else:
    raise common.ConversionError(f'{"/".join(map(str, path))} has no taming '
                                 'counterpart')
  *modules, leaf = parts
  return '.'.join([_MODULES.get(m, str(m)) for m in modules] + [_LEAVES[leaf]])


def discriminator_name(path: tuple, n_layers: int) -> str | None:
  """Our NLayerDiscriminator variable path -> taming `main.{i}` name."""
  leaf = path[-1]
  if path[0] == 'conv_in':
    index = 0
  elif path[0] == 'conv_out':
    index = 2 + 3 * n_layers
  elif path[0] == 'convs':
    index = 2 + 3 * int(path[1])
  elif path[0] == 'norms':
    index = 3 + 3 * int(path[1])
  else:
    raise common.ConversionError(f'discriminator {path} has no taming '
                                 'counterpart')
  name = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
          'mean': 'running_mean', 'var': 'running_var'}[leaf]
  return f'{_DISC}main.{index}.{name}'


def _torch_shape(shape: tuple) -> tuple:
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


def _take(sd: common.StateDict, name: str, shape: tuple) -> np.ndarray | None:
  value = sd.take(name, _torch_shape(tuple(shape)))
  if value is None:
    return None
  return common.conv_from_torch(value) if len(shape) == 4 else value


def _abstract_models(config):
  from tokenizers_jax.training import steps  # pylint: disable=g-import-not-at-top
  return common.abstract_variables(lambda: steps.build_models(config))


# -----------------------------------------------------------------------------
# Import.
# -----------------------------------------------------------------------------


def convert(checkpoint: str, workdir: str, *,
            reference_config: str | None = None,
            base_config: str | None = None, image_size: int | None = None,
            overrides: tuple[str, ...] = (), lpips_dir: str | None = None,
            ignore: tuple[str, ...] = (), overwrite: bool = False) -> dict:
  """Converts a taming VQModel checkpoint into a training workdir.

  Args:
    checkpoint: the release's state dict (.ckpt/.pt/.pth loadable with
      weights_only=True, .safetensors or .npz).
    workdir: the output workdir (must not hold checkpoints yet).
    reference_config: the release's YAML/JSON config; without it the
      architecture is read off the tensor shapes.
    base_config: our config the workdir starts from (default
      configs/vqgan.py:imagenet_f16).
    image_size: our data.image_size (default: the release's resolution).
    overrides: 'key=value' config overrides, applied last.
    lpips_dir: a `--from=lpips` output dir used when the checkpoint has no
      LPIPS weights (else the perceptual loss is switched off).
    ignore: tensor-name prefixes to drop on purpose.
    overwrite: replace the checkpoints already in `workdir`.

  Returns:
    The conversion report (also written to workdir/conversion.json).
  """
  sd = common.StateDict(common.read_tensors(checkpoint),
                        f'taming checkpoint {checkpoint!r}')
  sd.skip_prefixes(ignore)
  arch = infer_arch(sd, image_size or 256)
  if reference_config:
    arch = arch_from_config(common.read_config_file(reference_config), arch)
  notes = []
  config = build_config(arch, base_config, image_size)

  has_lpips = bool(sd.names(_LPIPS)) and not any(
      _LPIPS.startswith(p) for p in ignore)
  lpips_out = os.path.join(os.path.abspath(workdir), 'lpips')
  if has_lpips:
    common.use_lpips_files(config, lpips_out)
  elif lpips_dir:
    common.use_lpips_files(config, lpips_dir)
  elif config.loss.perceptual_weight > 0:
    config.loss.perceptual_weight = 0.0
    notes.append('no LPIPS weights in the checkpoint and no --lpips_dir: '
                 'loss.perceptual_weight set to 0 (run --from=lpips and pass '
                 '--lpips_dir to fine-tune with it)')
  if arch.disc is None:
    notes.append('no discriminator in the checkpoint: it starts random')
  common.apply_overrides(config, overrides)

  # Take every tensor before anything is built or written.
  (gp, gr), (dp, dr) = _abstract_models(config)
  del gr
  gen = common.map_tree(gp, lambda p, leaf: _take(sd, generator_name(p), leaf.shape))
  disc_params = disc_rest = None
  if arch.disc is not None:
    n_layers = arch.disc[1]
    disc_params = common.map_tree(dp, lambda p, leaf: _take(
        sd, discriminator_name(p, n_layers), leaf.shape))
    disc_rest = common.map_tree(dr, lambda p, leaf: _take(
        sd, discriminator_name(p, n_layers), leaf.shape))
    for name in sd.names(_DISC):
      if name.endswith('num_batches_tracked'):
        sd.skip(name)
  lpips_weights = lpips_convert.take_embedded(sd, _LPIPS) if has_lpips else None
  sd.check_complete()

  if lpips_weights:
    lpips_convert.write_files(lpips_out, *lpips_weights)

  def fill(state):
    state['gen']['params'] = gen
    if disc_params is not None:
      state['disc']['params'] = disc_params
      state['disc']['rest'] = disc_rest
    if common.flatten(state['ema']):
      state['ema'] = common.map_tree(gen, lambda p, v: np.array(v))
    return state

  report = common.conversion_report(
      'taming', checkpoint, reference_config, arch, sd, notes,
      lpips=({'vgg': config.loss.lpips_vgg_path,
              'lin': config.loss.lpips_lin_path}
             if config.loss.lpips_vgg_path else None))
  common.write_workdir(workdir, config, fill, overwrite=overwrite,
                       report=report)
  return report


# -----------------------------------------------------------------------------
# Export.
# -----------------------------------------------------------------------------


def _check_exportable(config) -> None:
  from tokenizers_jax.frontends.image import group_count  # pylint: disable=g-import-not-at-top
  m, q = config.model, dict(config.quantizer)
  problems = []
  if config.get('model_name') != 'vqgan' or m.get('frontend_name',
                                                    'taming') != 'taming':
    problems.append('only VQ-GAN models with the taming front end')
  if m.get('pre_quant_norm'):
    problems.append('model.pre_quant_norm has no taming counterpart')
  if q.get('name') != 'vq':
    problems.append(f'quantizer {q.get("name")!r} is not a plain VQ')
  for key in ('use_cosine_sim', 'simvq'):
    if q.get(key):
      problems.append(f'quantizer.{key}=True has no taming counterpart')
  if q.get('codebook_dim') not in (None, m.embed_dim):
    problems.append('quantizer.codebook_dim (projected lookup) has no taming '
                    'counterpart')
  fe = m.frontend
  widths = [fe.ch * k for k in fe.ch_mult]
  groups = fe.get('num_groups', 32)
  if any(group_count(w, groups) != TAMING_GROUPS for w in widths):
    problems.append(f'taming normalises with {TAMING_GROUPS} groups; widths '
                    f'{widths} with num_groups={groups} do not')
  if problems:
    raise common.ConversionError('this workdir cannot be written as a taming '
                                 'VQModel: ' + '; '.join(problems))


def taming_config(config) -> dict:
  """The VQModel YAML (as a dict) of one of our configs."""
  fe, q = config.model.frontend, dict(config.quantizer)
  size = config.data.image_size
  legacy = q.get('codebook_weight', 1.0) != 1.0 or q.get(
      'commitment_weight', 0.25) == 1.0
  beta = q.get('codebook_weight', 0.25) if legacy else q.get(
      'commitment_weight', 0.25)
  loss = config.loss
  return {'model': {
      'target': 'taming.models.vqgan.VQModel',
      'params': {
          'embed_dim': int(config.model.embed_dim),
          'n_embed': int(q['codebook_size']),
          'legacy': bool(legacy), 'beta': float(beta),
          'ddconfig': {
              'double_z': False, 'z_channels': int(fe.z_channels),
              'resolution': int(size),
              'in_channels': int(fe.get('in_channels', 3)),
              'out_ch': int(fe.get('in_channels', 3)), 'ch': int(fe.ch),
              'ch_mult': [int(k) for k in fe.ch_mult],
              'num_res_blocks': int(fe.num_res_blocks),
              'attn_resolutions': [int(r) for r in fe.attn_resolutions],
              'dropout': float(fe.get('dropout', 0.0))},
          'lossconfig': {
              'target': ('taming.modules.losses.vqperceptual.'
                         'VQLPIPSWithDiscriminator'),
              'params': {
                  'disc_conditional': False, 'disc_in_channels': 3,
                  'disc_start': int(loss.disc_start),
                  'disc_weight': float(loss.disc_weight),
                  'codebook_weight': float(loss.quantizer_weight),
                  'pixelloss_weight': float(loss.recon_weight),
                  'perceptual_weight': float(loss.perceptual_weight),
                  'disc_num_layers': int(config.disc.n_layers),
                  'disc_ndf': int(config.disc.ndf),
                  'disc_loss': str(loss.gan_loss)}}}}}


def _lpips_tensors(config) -> dict[str, np.ndarray]:
  from tokenizers_jax.losses import perceptual  # pylint: disable=g-import-not-at-top
  lp = perceptual.LPIPS.from_files(config.loss.lpips_vgg_path,
                                   config.loss.lpips_lin_path)
  out = {}
  for k, stage in enumerate(perceptual.VGG16_STAGES):
    for i in stage:
      conv = lp.vgg.conv(i)
      out[f'{_LPIPS}net.slice{k + 1}.{i}.weight'] = common.conv_to_torch(
          np.asarray(conv.kernel[...]))
      out[f'{_LPIPS}net.slice{k + 1}.{i}.bias'] = np.asarray(conv.bias[...])
  for k, head in enumerate(lp.linear_heads()):
    out[f'{_LPIPS}lin{k}.model.1.weight'] = np.asarray(
        head[...]).reshape(1, -1, 1, 1)
  out[f'{_LPIPS}scaling_layer.shift'] = np.asarray(
      perceptual.LPIPS_SHIFT, np.float32).reshape(1, 3, 1, 1)
  out[f'{_LPIPS}scaling_layer.scale'] = np.asarray(
      perceptual.LPIPS_SCALE, np.float32).reshape(1, 3, 1, 1)
  return out


def export(workdir: str, output: str, *, use_ema: bool = True,
           discriminator: bool = True, lpips: bool = True) -> dict:
  """Writes a workdir's VQ-GAN as a taming VQModel state dict.

  `output` ends in .safetensors (or .pt/.pth/.bin for torch.save); the
  VQModel YAML goes next to it (`.yaml`, or `.json` without PyYAML). The
  discriminator (BatchNorm only) and the LPIPS weights named by the config
  are included unless switched off, so that the file loads into the whole
  VQModel with strict=True.
  """
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
  out = {}
  for path, value in params.items():
    value = np.asarray(value, np.float32)
    out[generator_name(path)] = (common.conv_to_torch(value)
                                 if value.ndim == 4 else value)
  notes = []
  if discriminator and config.disc.get('norm', 'batch') == 'batch':
    n_layers = int(config.disc.n_layers)
    disc = dict(common.flatten(state['disc']['params']))
    disc.update(common.flatten(state['disc']['rest']))
    for path, value in disc.items():
      value = np.asarray(value, np.float32)
      out[discriminator_name(path, n_layers)] = (
          common.conv_to_torch(value) if value.ndim == 4 else value)
    for n in range(n_layers):
      out[f'{_DISC}main.{3 + 3 * n}.num_batches_tracked'] = np.zeros(
          (), np.int64)
  elif discriminator:
    notes.append(f'discriminator norm {config.disc.norm!r} is not taming\'s '
                 'BatchNorm: not exported')
  if lpips and config.loss.get('lpips_vgg_path') and config.loss.get(
      'lpips_lin_path'):
    out.update(_lpips_tensors(config))
  elif lpips:
    notes.append('no LPIPS files in the config: loss.perceptual_loss.* not '
                 'exported (taming loads its own with strict=False)')
  common.write_tensors(output, out)
  yaml_path = _write_taming_config(output, taming_config(config))
  return {'target': 'taming', 'workdir': os.path.abspath(workdir),
          'step': int(step), 'ema': used_ema, 'output': os.path.abspath(output),
          'config': yaml_path, 'tensors': len(out), 'notes': notes}


def _write_taming_config(output: str, cfg: dict) -> str:
  stem = os.path.splitext(os.path.abspath(output))[0]
  try:
    import yaml  # pylint: disable=g-import-not-at-top
  except ImportError:
    import json  # pylint: disable=g-import-not-at-top
    path = stem + '.json'
    with open(path, 'w') as f:
      json.dump(cfg, f, indent=2)
    return path
  path = stem + '.yaml'
  with open(path, 'w') as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
  return path
