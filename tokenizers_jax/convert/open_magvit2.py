"""Open-MAGVIT2 (TencentARC) LFQ tokenizer checkpoints -> our LFQ-GAN workdirs.

  python -m tokenizers_jax.convert --from=open_magvit2 \
      --checkpoint=imagenet_256_L.ckpt \
      --reference_config=configs/Open-MAGVIT2/gpu/imagenet_lfqgan_256_L.yaml \
      --workdir=/tmp/open_magvit2_256
  python -m tokenizers_jax.convert --export=open_magvit2 \
      --workdir=/tmp/open_magvit2_256 --output=/tmp/open_magvit2.safetensors

The release's `VQModel` (src/Open_MAGVIT2/models/lfqgan.py; a Lightning
checkpoint whose `state_dict` loads with `weights_only=True`, else the
one-line extraction `common.read_tensors` prints) maps onto
`models/vqgan.py: VQGAN` with the `magvit2` front end in the release's layout
(`configs/lfq.py: OPEN_MAGVIT2_LAYOUT`) and the `lfq` quantizer:

  Open-MAGVIT2 (encoder.* / decoder.*)   ours (frontend/encoder|decoder/...)
  conv_in.weight (encoder: no bias)      conv_in/kernel
  down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}.*
                                         down/{i}/blocks/{j}/
                                           {norm1,conv1,norm2,conv2,shortcut}/*
  down.{i}.downsample.*                  down/{i}/downsample/*
  mid_block.{j}.*                        mid_blocks/{j}/*
  up.{i}.block.{j}.*                     up/{i}/blocks/{j}/*
  up.{i}.upsample.conv1.*                up/{i}/upsample/conv/*
  adaptive.{i}.{gamma,beta}.*            up/{i}/norm/{gamma,beta}/* (Linear)
  norm_out.*, conv_out.*                 norm_out/*, conv_out/*

  Open-MAGVIT2 (the rest)                ours
  (none: LFQ reads the encoder output)   quant_conv, post_quant_conv:
                                           identity 1x1 convs, frozen
                                           (config.optim.frozen)
  quantize.{mask,codebook,zero} buffers  checked (LSB-first bits), dropped
  model_ema.{name without dots}          the EMA of the generator (`ema`)
  model_ema.lossdiscriminator*,          dropped (no discriminator EMA
    model_ema.num_updates                  here); model_ema.decay ->
                                           config.ema_decay
  loss.discriminator.main.{0,2+3n,2+3L}  disc conv_in, convs/{n}, conv_out
  loss.discriminator.main.{3+3n}         disc norms/{n} (BatchNorm)
  loss.perceptual_loss.*                 LPIPS files in workdir/lpips/

The released discriminator is taming's NLayerDiscriminator (PatchGAN with
BatchNorm), which ours hosts. A checkpoint with another discriminator layout
is refused; convert its generator with `--ignore=loss.discriminator.` (the
discriminator then starts random, and the report says so).

Token ids: the release's LFQ quantizes `where(z > 0, 1, -1)` and its index
is `sum_i [z_i > 0] * 2^i` (first channel least significant), which is our
`lfq` quantizer's convention. With `token_factorization=True` (the AR stage's
configs) the release splits the bits into (`factorized_bits[0]` low bits,
the rest) and returns two indices: ours with `num_groups=2` when both halves
are equal.

Losses (`lossconfig.params` of VQLPIPSWithDiscriminator): entropy weight
`codebook_weight * sample_minimization_weight`, diversity gamma
`batch_maximization_weight / sample_minimization_weight`, commitment
`commit_weight`, `codebook_enlarge_ratio/_steps` -> `model.entropy_anneal =
(1 + ratio, steps)`, `gen_loss_weight` -> fixed `loss.disc_weight` (None:
VQ-GAN's adaptive weight x `disc_weight`), `lecam_loss_weight`, `disc_start`,
L1 + `perceptual_weight` x LPIPS.

Export writes the same names back (raw weights and `model_ema.*` from our
EMA, the discriminator, LPIPS) plus the Lightning-CLI YAML; it refuses a
workdir whose quant convs are no longer identities or whose front end is not
in the release's layout.

Dimension legend: Z latent channels = embed_dim = bits B (2^B codes),
L discriminator layers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from tokenizers_jax.convert import common
from tokenizers_jax.convert import lpips as lpips_convert
from tokenizers_jax.convert import taming as taming_convert

SOURCE = 'open_magvit2'
# Open-MAGVIT2 hard-codes GroupNorm(32, eps=1e-6) in every norm.
GROUPS = 32
_DISC = 'loss.discriminator.'
_LPIPS = 'loss.perceptual_loss.'
_EMA = 'model_ema.'
_EMA_DISC = _EMA + 'lossdiscriminator'
_QUANT = 'quantize.'
# The 1x1 convs of our VQGAN that the release does not have.
IDENTITY_CONVS = ('quant_conv', 'post_quant_conv')
_BLOCK_MODULES = {'blocks': 'block', 'mid_blocks': 'mid_block',
                  'shortcut': 'nin_shortcut'}
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
# Config keys of the release's VQModel that only matter to its trainer.
_MODEL_TARGET = 'lfqgan.VQModel'


@dataclasses.dataclass(frozen=True)
class OpenMagvit2Arch:
  """A released Open-MAGVIT2 VQModel: ddconfig, LFQ and discriminator.

  bits: LFQ bits = z_channels = embed_dim (2^bits implicit codes).
  factorized_bits: the (low, high) split of `token_factorization`, or None.
  """
  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  bits: int
  in_channels: int = 3
  resolution: int = 256
  factorized_bits: tuple[int, int] | None = None
  sample_minimization_weight: float = 1.0
  batch_maximization_weight: float = 1.0
  # NLayerDiscriminator (ndf, n_layers) when the checkpoint has one.
  disc: tuple[int, int] | None = None
  # lossconfig.params of VQLPIPSWithDiscriminator, when a config gave them.
  loss: tuple[tuple[str, Any], ...] = ()
  learning_rate: float | None = None

  def structure(self) -> tuple:
    return (self.ch, self.ch_mult, self.num_res_blocks, self.bits,
            self.in_channels, self.disc)


# -----------------------------------------------------------------------------
# Architecture: from the tensors, or from the release's config.
# -----------------------------------------------------------------------------


def _count(sd: common.StateDict, pattern: str) -> int:
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def _disc_arch(sd: common.StateDict) -> tuple[int, int] | None:
  names = [n for n in sd.names(_DISC) if n not in sd.skipped]  # --ignore
  if not names:
    return None
  if f'{_DISC}main.0.weight' not in sd:
    raise common.ConversionError(
        f'the discriminator ({names[0]}, ...) is not the NLayerDiscriminator '
        '(PatchGAN, loss.discriminator.main.*) of the Open-MAGVIT2 release, '
        'the one our discriminator hosts. Convert the generator only with '
        f'--ignore={_DISC} (the discriminator then starts random)')
  return taming_convert._disc_arch(sd)  # pylint: disable=protected-access


def infer_arch(sd: common.StateDict, resolution: int = 256) -> OpenMagvit2Arch:
  """The architecture read off the tensor shapes of a VQModel state dict."""
  for name in ('encoder.conv_in.weight', 'encoder.conv_out.weight',
               'decoder.conv_in.weight', 'decoder.conv_out.weight'):
    if name not in sd:
      raise common.ConversionError(
          f'{name} not found: not an Open-MAGVIT2 VQModel state dict (its '
          f'keys start with {sd.names()[:6]})')
  if 'quant_conv.weight' in sd or 'encoder.mid.block_1.conv1.weight' in sd:
    raise common.ConversionError(
        'quant_conv / encoder.mid.block_1 found: a taming VQModel layout; '
        'use --from=taming')
  if 'quantize.embedding.weight' in sd:
    raise common.ConversionError(
        'quantize.embedding.weight found: a codebook quantizer (IBQ or VQ), '
        'not Open-MAGVIT2\'s lookup-free quantizer')
  if any('.conv_shortcut.' in n for n in sd.names()):
    raise common.ConversionError(
        'conv_shortcut tensors found: ResBlocks with use_conv_shortcut=True, '
        'which the released Encoder/Decoder never build')
  if 'encoder.conv_in.bias' in sd:
    raise common.ConversionError(
        'encoder.conv_in.bias found: the released encoder\'s conv_in has no '
        'bias (another Open-MAGVIT2 variant?)')
  levels = _count(sd, 'encoder.down.{}.block.0.conv1.weight')
  blocks = _count(sd, 'encoder.down.0.block.{}.conv1.weight')
  if levels < 1 or blocks < 1:
    raise common.ConversionError(
        'encoder.down.0.block.0.conv1.weight not found: no encoder levels')
  ch, in_channels = sd.shape('encoder.conv_in.weight')[:2]
  ch_mult = []
  for i in range(levels):
    width = sd.shape(f'encoder.down.{i}.block.0.conv1.weight')[0]
    if width % ch:
      raise common.ConversionError(f'level {i} width {width} is not a '
                                   f'multiple of ch={ch}')
    ch_mult.append(width // ch)
  bits = sd.shape('encoder.conv_out.weight')[0]
  dec_in = sd.shape('decoder.conv_in.weight')[1]
  if dec_in != bits:
    raise common.ConversionError(
        f'decoder.conv_in takes {dec_in} channels, the encoder gives {bits}'
        + (' (a noise-concatenating generative decoder, e.g. WeTok\'s '
           'GANDecoder)' if dec_in == 2 * bits else ''))
  out_ch = sd.shape('decoder.conv_out.weight')[0]
  if out_ch != in_channels:
    raise common.ConversionError(
        f'out_ch={out_ch} differs from in_channels={in_channels}; our front '
        'end decodes to its input channels')
  if bits > 31:
    raise common.ConversionError(f'{bits} LFQ bits: at most 31 supported')
  return OpenMagvit2Arch(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=blocks,
                         bits=bits, in_channels=in_channels,
                         resolution=resolution, disc=_disc_arch(sd))


def _model_node(cfg: dict) -> tuple[dict, dict]:
  """(model init args, the whole config) of a Lightning-CLI or taming-style
  release config."""
  model = cfg.get('model', cfg)
  if not isinstance(model, dict):
    raise common.ConversionError('the reference config has no model mapping')
  target = model.get('class_path', model.get('target'))
  params = model.get('init_args', model.get('params', model))
  if not isinstance(params, dict) or 'ddconfig' not in params:
    raise common.ConversionError(
        'the reference config has no model.init_args.ddconfig (an '
        'Open-MAGVIT2 tokenizer YAML, e.g. configs/Open-MAGVIT2/gpu/'
        'imagenet_lfqgan_256_L.yaml, is expected)')
  if target and not str(target).endswith(_MODEL_TARGET):
    raise common.ConversionError(
        f'model.class_path is {target!r}; only Open-MAGVIT2\'s '
        f'{_MODEL_TARGET} (the LFQ tokenizer) is supported')
  return params, cfg


def _data_size(cfg: dict) -> int | None:
  data = cfg.get('data')
  if not isinstance(data, dict):
    return None
  args = data.get('init_args', data.get('params', data)) or {}
  for split in ('train', 'validation', 'test'):
    node = args.get(split) if isinstance(args, dict) else None
    try:
      size = node['params']['config']['size']
    except (TypeError, KeyError):
      continue
    if size:
      return int(size)
  return None


def arch_from_config(cfg: dict, inferred: OpenMagvit2Arch,
                     image_size: int | None = None) -> OpenMagvit2Arch:
  """The architecture of a release's YAML/JSON config, checked against the
  tensors (`inferred`). The resolution is the data size (the release's
  `ddconfig.resolution` is not used by its networks)."""
  p, whole = _model_node(cfg)
  dd = p['ddconfig']
  if dd.get('double_z', False):
    raise common.ConversionError('ddconfig.double_z=True is not supported')
  if dd.get('out_ch', dd.get('in_channels', 3)) != dd.get('in_channels', 3):
    raise common.ConversionError('ddconfig.out_ch != in_channels is not '
                                 'supported')
  z = int(dd['z_channels'])
  embed_dim = int(p.get('embed_dim', z))
  n_embed = int(p.get('n_embed', 2 ** embed_dim))
  if embed_dim != z:
    raise common.ConversionError(
        f'embed_dim={embed_dim} differs from z_channels={z}: the release\'s '
        'LFQ reads the encoder output directly')
  if n_embed != 2 ** embed_dim:
    raise common.ConversionError(
        f'n_embed={n_embed} is not 2^embed_dim = {2 ** embed_dim}')
  factorized = None
  if p.get('token_factorization'):
    low, high = (int(b) for b in p.get('factorized_bits', (9, 9)))
    if low + high != embed_dim or low != high:
      raise common.ConversionError(
          f'token_factorization with factorized_bits=[{low}, {high}]: only '
          f'two equal halves of the {embed_dim} bits are supported')
    factorized = (low, high)
  loss = dict((p.get('lossconfig') or {}).get('params') or {})
  for key, ok in (('disc_conditional', False), ('use_actnorm', False),
                  ('disc_in_channels', 3)):
    if loss.get(key, ok) != ok:
      raise common.ConversionError(f'lossconfig.params.{key}={loss[key]!r} '
                                   'is not supported')
  smw = float(p.get('sample_minimization_weight', 1.0))
  if smw <= 0:
    raise common.ConversionError(
        f'sample_minimization_weight={smw}: our entropy loss needs a '
        'positive per-sample weight')
  lr = p.get('learning_rate')
  arch = OpenMagvit2Arch(
      ch=int(dd['ch']), ch_mult=tuple(int(m) for m in dd['ch_mult']),
      num_res_blocks=int(dd['num_res_blocks']), bits=z,
      in_channels=int(dd.get('in_channels', 3)),
      resolution=int(image_size or _data_size(whole) or inferred.resolution),
      factorized_bits=factorized, sample_minimization_weight=smw,
      batch_maximization_weight=float(p.get('batch_maximization_weight',
                                            1.0)),
      disc=((int(loss.get('disc_ndf', 64)), int(loss.get('disc_num_layers',
                                                           3)))
            if inferred.disc is not None else None),
      loss=tuple(sorted((k, v) for k, v in loss.items()
                        if v is None or isinstance(v, (int, float, str,
                                                       bool)))),
      learning_rate=float(lr) if lr is not None else None)
  if arch.structure() != inferred.structure():
    names = ('ch', 'ch_mult', 'num_res_blocks', 'z_channels (bits)',
             'in_channels', 'discriminator (ndf, n_layers)')
    diffs = [f'{n}: config {a}, tensors {b}' for n, a, b in
             zip(names, arch.structure(), inferred.structure()) if a != b]
    raise common.ConversionError('the reference config does not describe '
                                 'this checkpoint: ' + '; '.join(diffs))
  return arch


# -----------------------------------------------------------------------------
# Our config.
# -----------------------------------------------------------------------------


def _loss_value(arch: OpenMagvit2Arch, key: str, default):
  """lossconfig.params[key], with VQLPIPSWithDiscriminator's defaults."""
  return dict(arch.loss).get(key, default)


def quantizer_config(arch: OpenMagvit2Arch) -> dict:
  """Our LFQ options equal to the release's LFQ + its loss weights."""
  smw = arch.sample_minimization_weight
  return dict(
      name='lfq', codebook_size=2 ** arch.bits,
      num_groups=2 if arch.factorized_bits else 1,
      entropy_loss_weight=float(_loss_value(arch, 'codebook_weight', 1.0))
      * smw,
      commitment_loss_weight=float(_loss_value(arch, 'commit_weight', 0.25)),
      entropy_temperature=0.01,
      diversity_gamma=arch.batch_maximization_weight / smw)


def build_config(arch: OpenMagvit2Arch, base_config: str | None = None,
                 image_size: int | None = None, notes: list | None = None):
  """configs/lfq.py:open_magvit2_256 with the release's architecture and
  losses."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  notes = [] if notes is None else notes
  c = common.load_base_config(
      base_config or common.default_base_config('lfq.py:open_magvit2_256'))
  size = int(image_size or arch.resolution)
  c.model_name = 'lfqgan'
  c.data.image_size = size
  c.model.embed_dim = arch.bits
  c.model.frontend_name = 'magvit2'
  c.model.pre_quant_norm = False
  c.model.frontend = dict(
      ch=arch.ch, ch_mult=arch.ch_mult, num_res_blocks=arch.num_res_blocks,
      z_channels=arch.bits, in_channels=arch.in_channels, num_groups=GROUPS,
      shortcut_kernel=1, conv_bias=False, adaptive_norm='before',
      decoder_norm_out='group', adaptive_norm_ddof=1,
      depth_to_space_order='dcr')
  c.quantizer = ml_collections.ConfigDict(quantizer_config(arch),
                                          type_safe=False)
  ratio = float(_loss_value(arch, 'codebook_enlarge_ratio', 3))
  steps = int(_loss_value(arch, 'codebook_enlarge_steps', 2000))
  c.model.entropy_anneal = (1.0 + ratio, steps) if ratio > 0 else (1.0, 0)
  if arch.disc is not None:
    c.disc = dict(ndf=arch.disc[0], n_layers=arch.disc[1], norm='batch')
  gan = str(_loss_value(arch, 'disc_loss', 'hinge'))
  if gan == 'non_saturate':
    notes.append('disc_loss=non_saturate: our discriminator uses vanilla '
                 '(BCE per patch, x0.5), the release BCE of per-sample mean '
                 'logits')
    gan = 'vanilla'
  c.loss.gan_loss = gan
  c.loss.g_loss = 'vanilla'  # non_saturate_gen_loss
  c.loss.recon = 'l1'
  c.loss.recon_weight = float(_loss_value(arch, 'pixelloss_weight', 1.0))
  c.loss.perceptual_weight = float(_loss_value(arch, 'perceptual_weight',
                                               1.0))
  c.loss.quantizer_weight = 1.0  # The weights are in the quantizer options.
  c.loss.disc_start = int(_loss_value(arch, 'disc_start', 0))
  factor = float(_loss_value(arch, 'disc_factor', 1.0))
  gen_weight = _loss_value(arch, 'gen_loss_weight', None)
  if gen_weight is None:
    c.loss.adaptive_weight = True
    c.loss.disc_weight = float(_loss_value(arch, 'disc_weight', 1.0)) * factor
  else:
    c.loss.adaptive_weight = False
    c.loss.disc_weight = float(gen_weight) * factor
  lecam = _loss_value(arch, 'lecam_loss_weight', None)
  c.loss.lecam_weight = float(lecam or 0.0)
  c.loss.lecam_decay = 0.999  # LeCAM_EMA's decay
  if arch.learning_rate is not None:
    c.optim.lr = c.disc_optim.lr = arch.learning_rate
  # The release has no quant_conv / post_quant_conv: ours are identities,
  # kept so by freezing them.
  c.optim.frozen = tuple(sorted(set(tuple(c.optim.get('frozen', ()) or ())
                                    + IDENTITY_CONVS)))
  return c


# -----------------------------------------------------------------------------
# Names.
# -----------------------------------------------------------------------------


def generator_name(path: tuple) -> str | None:
  """Our generator parameter path -> its Open-MAGVIT2 state-dict name (None
  for the identity convs the release does not have)."""
  path = tuple(str(p) for p in path)
  if path[0] in IDENTITY_CONVS:
    return None
  if path[0] != 'frontend' or path[1] not in ('encoder', 'decoder'):
    raise common.ConversionError(f'{"/".join(path)} has no Open-MAGVIT2 '
                                 'counterpart')
  half, *modules, leaf = path[1:]
  # decoder/up/{i}/norm/{gamma,beta} -> decoder.adaptive.{i}.{gamma,beta}
  if half == 'decoder' and modules[:1] == ['up'] and modules[2:3] == ['norm']:
    return '.'.join([half, 'adaptive', modules[1]] + modules[3:]
                    + [_LEAVES[leaf]])
  names = []
  for i, m in enumerate(modules):
    if m == 'conv' and i and modules[i - 1] == 'upsample':
      names.append('conv1')
    else:
      names.append(_BLOCK_MODULES.get(m, m))
  return '.'.join([half] + names + [_LEAVES[leaf]])


def ema_name(name: str) -> str:
  """LitEma's buffer name of a parameter: the name without its dots."""
  return _EMA + name.replace('.', '')


def _torch_shape(shape: tuple) -> tuple:
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _from_torch(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return common.conv_from_torch(value)
  if value.ndim == 2:  # Linear [out, in] -> [in, out].
    return np.ascontiguousarray(value.T)
  return value


def _identity(shape: tuple) -> np.ndarray:
  if len(shape) == 4:  # [1, 1, Z, Z] kernel.
    if shape[:2] != (1, 1) or shape[2] != shape[3]:
      raise common.ConversionError(f'internal: identity conv of shape {shape}')
    return np.eye(shape[2], dtype=np.float32).reshape(shape)
  return np.zeros(shape, np.float32)


def _take(sd: common.StateDict, name: str | None, shape: tuple,
          ema: bool = False) -> np.ndarray | None:
  if name is None:
    return _identity(tuple(shape))
  value = sd.take(ema_name(name) if ema else name,
                  _torch_shape(tuple(shape)))
  return None if value is None else _from_torch(value)


def _check_quantizer_buffers(sd: common.StateDict, arch: OpenMagvit2Arch):
  """The LFQ's buffers (non-persistent in the release; present in some
  exports) must be the LSB-first bit weights and +-1 codes; then dropped."""
  weights = 2 ** np.arange(arch.bits)
  for name in sd.names(_QUANT):
    value = sd.tensors[name]
    leaf = name[len(_QUANT):]
    ok = True
    if leaf == 'mask':
      ok = np.array_equal(value.reshape(-1), weights)
      if not ok and np.array_equal(value.reshape(-1), weights[::-1]):
        raise common.ConversionError(
            f'{name} is MSB-first (vector-quantize-pytorch\'s order); the '
            'Open-MAGVIT2 LFQ, and ours, are LSB-first')
    elif leaf in ('pre_mask', 'post_mask') and arch.factorized_bits:
      ok = np.array_equal(value.reshape(-1),
                          2 ** np.arange(arch.factorized_bits[0]))
    elif leaf == 'codebook':
      codes = np.arange(2 ** arch.bits)[:, None]
      want = ((codes & weights) != 0) * 2.0 - 1.0
      ok = value.shape == want.shape and np.array_equal(value, want)
    elif leaf != 'zero':
      raise common.ConversionError(
          f'{name}: the release\'s LFQ has no such buffer (and no '
          'parameters)')
    if not ok:
      raise common.ConversionError(f'{name} is not the release\'s LFQ '
                                   'buffer (LSB-first bits, +-1 codes)')
    sd.skip(name)


# -----------------------------------------------------------------------------
# Import.
# -----------------------------------------------------------------------------


def convert(checkpoint: str, workdir: str, *,
            reference_config: str | None = None,
            base_config: str | None = None, image_size: int | None = None,
            overrides: tuple[str, ...] = (), lpips_dir: str | None = None,
            ignore: tuple[str, ...] = (), overwrite: bool = False) -> dict:
  """Converts an Open-MAGVIT2 tokenizer checkpoint into a training workdir.

  Args:
    checkpoint: the release's state dict (.ckpt/.pt/.pth loadable with
      weights_only=True, .safetensors or .npz).
    workdir: the output workdir (must not hold checkpoints yet).
    reference_config: the release's YAML/JSON config (Lightning CLI
      `model.init_args`, or `model.params`); without it the architecture is
      read off the tensor shapes and the losses are the release 256_L's.
    base_config: our config the workdir starts from (default
      configs/lfq.py:open_magvit2_256).
    image_size: our data.image_size (default: the config's data size, else
      256).
    overrides: 'key=value' config overrides, applied last.
    lpips_dir: a `--from=lpips` output dir used when the checkpoint has no
      LPIPS weights (else the perceptual loss is switched off).
    ignore: tensor-name prefixes to drop on purpose (e.g.
      `loss.discriminator.` for a discriminator ours cannot host).
    overwrite: replace the checkpoints already in `workdir`.

  Returns:
    The conversion report (also written to workdir/conversion.json).
  """
  sd = common.StateDict(common.read_tensors(checkpoint),
                        f'Open-MAGVIT2 checkpoint {checkpoint!r}')
  sd.skip_prefixes(ignore)
  ignored_disc = any(_DISC.startswith(p) for p in ignore)
  notes = []
  arch = infer_arch(sd, image_size or 256)
  if reference_config:
    arch = arch_from_config(common.read_config_file(reference_config), arch,
                            image_size)
  else:
    # Without the YAML: the released 256_L / 128_L loss settings.
    arch = dataclasses.replace(arch, loss=tuple(sorted(dict(
        disc_start=0, gen_loss_weight=0.1, lecam_loss_weight=0.05,
        codebook_weight=0.1, commit_weight=0.25, codebook_enlarge_ratio=0,
        disc_ndf=(arch.disc or (64, 3))[0],
        disc_num_layers=(arch.disc or (64, 3))[1]).items())))
    notes.append('no --reference_config: the loss weights are the release '
                 'imagenet_lfqgan_256_L\'s (LeCam 0.05; the 128_L uses 0.01)')
  if arch.factorized_bits:
    notes.append('token_factorization: ids are (low, high) halves, as the '
                 'release\'s (indices_pre, indices_post); our entropy loss is '
                 'then per half, the release\'s over all 2^B codes')
  config = build_config(arch, base_config, image_size, notes)

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
    notes.append('discriminator ' + ('ignored (--ignore)' if ignored_disc
                                     else 'not in the checkpoint')
                 + ': it starts random')
  has_ema = any(n.startswith(_EMA) for n in sd.names())
  if has_ema and f'{_EMA}decay' in sd:
    decay = sd.take(f'{_EMA}decay', ())
    if decay is not None:
      config.ema_decay = float(decay)
  common.apply_overrides(config, overrides)

  # Take every tensor before anything is built or written.
  (gp, _), (dp, dr) = taming_convert._abstract_models(config)  # pylint: disable=protected-access
  map_tree = common.map_tree
  gen = map_tree(gp, lambda p, leaf: _take(sd, generator_name(p), leaf.shape))
  ema = None
  if has_ema:
    ema = map_tree(gp, lambda p, leaf: _take(sd, generator_name(p),
                                             leaf.shape, ema=True))
    sd.skip(f'{_EMA}num_updates')
    dropped = sd.names(_EMA_DISC)
    for name in dropped:
      sd.skip(name)
    if dropped:
      notes.append(f'{len(dropped)} discriminator EMA tensors '
                   f'({_EMA_DISC}*) dropped: our train state keeps no '
                   'discriminator EMA')
  disc_params = disc_rest = None
  if arch.disc is not None:
    n_layers = arch.disc[1]
    disc_params = map_tree(dp, lambda p, leaf: taming_convert._take(  # pylint: disable=protected-access
        sd, taming_convert.discriminator_name(p, n_layers), leaf.shape))
    disc_rest = map_tree(dr, lambda p, leaf: taming_convert._take(  # pylint: disable=protected-access
        sd, taming_convert.discriminator_name(p, n_layers), leaf.shape))
    for name in sd.names(_DISC):
      if name.endswith('num_batches_tracked'):
        sd.skip(name)
  _check_quantizer_buffers(sd, arch)
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
      state['ema'] = map_tree(ema if ema is not None else gen,
                              lambda p, v: np.array(v))
    elif ema is not None:
      notes.append('the config keeps no EMA: model_ema.* read but not '
                   'stored')
    return state

  report = common.conversion_report(
      SOURCE, checkpoint, reference_config, arch, sd, notes,
      identity_initialised=[f'{m}/{leaf}' for m in IDENTITY_CONVS
                            for leaf in ('kernel', 'bias')],
      ema=('model_ema.*' if ema is not None else
           'none in the checkpoint: EMA = the weights'),
      lpips=({'vgg': config.loss.lpips_vgg_path,
              'lin': config.loss.lpips_lin_path}
             if config.loss.lpips_vgg_path else None))
  common.write_workdir(workdir, config, fill, overwrite=overwrite,
                       report=report)
  return report



# -----------------------------------------------------------------------------
# Export.
# -----------------------------------------------------------------------------

_RELEASE_FRONTEND = dict(conv_bias=False, adaptive_norm='before',
                         decoder_norm_out='group', adaptive_norm_ddof=1,
                         depth_to_space_order='dcr', shortcut_kernel=1,
                         noise_concat=False)


def _check_exportable(config, params: dict) -> None:
  from tokenizers_jax.frontends.image import group_count  # pylint: disable=g-import-not-at-top
  m, q = config.model, dict(config.quantizer)
  fe = dict(m.frontend)
  problems = []
  if config.get('model_name') not in ('lfqgan', 'vqgan') or m.get(
      'frontend_name') != 'magvit2':
    problems.append('only LFQ-GAN models with the magvit2 front end')
  defaults = dict(conv_bias=True, adaptive_norm='after',
                  decoder_norm_out='adaptive', adaptive_norm_ddof=0,
                  depth_to_space_order='crd', shortcut_kernel=1,
                  noise_concat=False)
  for key, want in _RELEASE_FRONTEND.items():
    if fe.get(key, defaults[key]) != want:
      problems.append(f'model.frontend.{key}={fe.get(key, defaults[key])!r} '
                      f'(the release: {want!r})')
  widths = [fe['ch'] * k for k in fe['ch_mult']]
  groups = fe.get('num_groups', 32)
  if any(group_count(w, groups) != GROUPS for w in widths):
    problems.append(f'the release normalises with {GROUPS} groups; widths '
                    f'{widths} with num_groups={groups} do not')
  if m.get('pre_quant_norm'):
    problems.append('model.pre_quant_norm has no Open-MAGVIT2 counterpart')
  if q.get('name') != 'lfq' or q.get('spherical'):
    problems.append(f'quantizer {q.get("name")!r} is not a plain LFQ')
  if float(q.get('codebook_scale', 1.0)) != 1.0:
    problems.append('quantizer.codebook_scale != 1')
  if int(q.get('num_groups', 1)) not in (1, 2):
    problems.append('quantizer.num_groups > 2 (token_factorization splits '
                    'in two)')
  if 2 ** int(m.embed_dim) != int(q['codebook_size']) or int(
      m.embed_dim) != int(fe['z_channels']):
    problems.append('embed_dim, z_channels and log2(codebook_size) must be '
                    'equal (the release\'s LFQ reads the encoder output)')
  for conv in IDENTITY_CONVS:
    if (conv, 'kernel') not in params:
      continue
    kernel = np.asarray(params[(conv, 'kernel')])
    if not (np.array_equal(kernel, _identity(kernel.shape))
            and not np.any(np.asarray(params[(conv, 'bias')]))):
      problems.append(f'{conv} is not the identity (trained without '
                      'optim.frozen?); the release has no such conv')
  if problems:
    raise common.ConversionError('this workdir cannot be written as an '
                                 'Open-MAGVIT2 VQModel: ' + '; '.join(problems))


def release_config(config) -> dict:
  """The release's Lightning-CLI YAML (as a dict) of one of our configs."""
  fe, q, loss = config.model.frontend, dict(config.quantizer), config.loss
  bits = int(config.model.embed_dim)
  smw = 1.0
  factor, steps = tuple(config.model.get('entropy_anneal', (1.0, 0)))
  params = {
      'disc_conditional': False, 'disc_in_channels': 3,
      'disc_start': int(loss.disc_start),
      'codebook_weight': float(q.get('entropy_loss_weight', 0.1)) / smw,
      'commit_weight': float(q.get('commitment_loss_weight', 0.25)),
      'codebook_enlarge_ratio': float(factor) - 1.0 if steps else 0.0,
      'codebook_enlarge_steps': int(steps or 2000),
      'pixelloss_weight': float(loss.recon_weight),
      'perceptual_weight': float(loss.perceptual_weight),
      'disc_num_layers': int(config.disc.n_layers),
      'disc_ndf': int(config.disc.ndf), 'disc_loss': str(loss.gan_loss)}
  if loss.get('adaptive_weight', True):
    params['disc_weight'] = float(loss.disc_weight)
  else:
    params['gen_loss_weight'] = float(loss.disc_weight)
  if loss.get('lecam_weight'):
    params['lecam_loss_weight'] = float(loss.lecam_weight)
  init = {
      'ddconfig': {'double_z': False, 'z_channels': int(fe.z_channels),
                   'resolution': int(config.data.image_size),
                   'in_channels': int(fe.get('in_channels', 3)),
                   'out_ch': int(fe.get('in_channels', 3)), 'ch': int(fe.ch),
                   'ch_mult': [int(k) for k in fe.ch_mult],
                   'num_res_blocks': int(fe.num_res_blocks)},
      'lossconfig': {'target': 'src.Open_MAGVIT2.modules.losses.'
                               'vqperceptual.VQLPIPSWithDiscriminator',
                     'params': params},
      'n_embed': 2 ** bits, 'embed_dim': bits,
      'learning_rate': float(config.optim.lr),
      'sample_minimization_weight': smw,
      'batch_maximization_weight': float(q.get('diversity_gamma', 1.0)) * smw,
      'use_ema': float(config.get('ema_decay', 0.0) or 0.0) > 0}
  if int(q.get('num_groups', 1)) == 2:
    init.update(token_factorization=True,
                factorized_bits=[bits // 2, bits - bits // 2])
  size = int(config.data.image_size)
  return {'model': {'class_path': 'src.Open_MAGVIT2.models.lfqgan.VQModel',
                    'init_args': init},
          'data': {'class_path': 'main.DataModuleFromConfig',
                   'init_args': {'train': {'params': {'config': {
                       'size': size}}}}}}


def export(workdir: str, output: str, *, use_ema: bool = True,
           discriminator: bool = True, lpips: bool = True) -> dict:
  """Writes a workdir's LFQ-GAN as an Open-MAGVIT2 VQModel state dict.

  `output` ends in .safetensors (or .pt/.pth/.bin for torch.save); the
  Lightning-CLI YAML goes next to it (`.yaml`, or `.json` without PyYAML).
  The raw weights go to `encoder.*`/`decoder.*`, the EMA (when kept and
  `use_ema`) to LitEma's `model_ema.*` (the release evaluates with those);
  the discriminator (BatchNorm PatchGAN) and the LPIPS weights named by the
  config are included unless switched off. The discriminator has no EMA
  here: its `model_ema.*` copies are its weights.
  """
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  config = train_lib.load_config(workdir)
  state, step = common.read_workdir_state(workdir)
  raw = common.flatten(state['gen']['params'])
  ema = common.flatten(state.get('ema') or {})
  used_ema = bool(use_ema and ema)
  _check_exportable(config, raw)
  if used_ema:
    _check_exportable(config, ema)

  def torch_value(value):
    value = np.asarray(value, np.float32)
    if value.ndim == 4:
      return common.conv_to_torch(value)
    return np.ascontiguousarray(value.T) if value.ndim == 2 else value

  out = {}
  for tree, prefix in ((raw, False), (ema if used_ema else {}, True)):
    for path, value in tree.items():
      name = generator_name(path)
      if name is not None:
        out[ema_name(name) if prefix else name] = torch_value(value)
  notes = []
  if discriminator and config.disc.get('norm', 'batch') == 'batch':
    n_layers = int(config.disc.n_layers)
    disc_params = common.flatten(state['disc']['params'])
    for path, value in list(disc_params.items()) + list(
        common.flatten(state['disc']['rest']).items()):
      name = taming_convert.discriminator_name(path, n_layers)
      out[name] = torch_value(value)
      if used_ema and path in disc_params:
        out[ema_name(name)] = torch_value(value)
    for n in range(n_layers):
      out[f'{_DISC}main.{3 + 3 * n}.num_batches_tracked'] = np.zeros(
          (), np.int64)
  elif discriminator:
    notes.append(f'discriminator norm {config.disc.norm!r} is not the '
                 'release\'s BatchNorm: not exported')
  if used_ema:
    out[f'{_EMA}decay'] = np.asarray(config.ema_decay, np.float32)
    out[f'{_EMA}num_updates'] = np.asarray(-1, np.int32)
  if lpips and config.loss.get('lpips_vgg_path') and config.loss.get(
      'lpips_lin_path'):
    out.update(taming_convert._lpips_tensors(config))  # pylint: disable=protected-access
  elif lpips:
    notes.append('no LPIPS files in the config: loss.perceptual_loss.* not '
                 'exported (the release loads its own with strict=False)')
  common.write_tensors(output, out)
  yaml_path = taming_convert._write_taming_config(  # pylint: disable=protected-access
      output, release_config(config))
  return {'target': SOURCE, 'workdir': os.path.abspath(workdir),
          'step': int(step), 'ema': used_ema, 'output': os.path.abspath(output),
          'config': yaml_path, 'tensors': len(out), 'notes': notes}
