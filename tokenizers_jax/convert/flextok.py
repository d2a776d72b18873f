r"""FlexTok (apple/ml-flextok) release checkpoints -> our FlexTok workdirs.

  python -m tokenizers_jax.convert --from=flextok \
      --checkpoint=flextok_d18_d28_in1k/model.safetensors \
      --reference_config=flextok_d18_d28_in1k/config.json \
      --workdir=/tmp/flextok_d18_d28

The release (`FlexTokFromHub`: safetensors + the hydra config.json) holds a
VAE, an encoder and a decoder (`SequentialModuleDictWrapper`s) and an FSQ
regularizer (no tensors). The encoder and decoder map onto
`models/flextok.py: FlexTok` with `trunk='flextok'`; the VAE is not part of
our model: the converted model works on the VAE's latents ([B, h, w, C],
`model.channels = C`), which the release's own VAE computes (`vae.*` tensors
are dropped on purpose and listed in the report).

  release (encoder.module_dict. / decoder.module_dict.)   ours (gen params)
  enc_patch_emb.patch_proj                           patch_embed
  enc_posemb_module.posembs [1, D, g, g]             (fixed sin-cos; checked)
  enc_register_module.registers [R, D]               registers
  enc_transformer.blocks.{i}.attn.w{q,k,v}           encoder/blocks/{i}/attn/qkv
  enc_transformer.blocks.{i}.attn.proj               .../attn/proj
  enc_transformer.blocks.{i}.mlp.fc{1,2,3}           .../mlp/fc{1,2,3}
  enc_to_latents.proj (after a LayerNorm)            to_code (encoder/norm)
  dec_from_latents.proj                              from_code
  dec_registers_posemb_module.posembs [1, 1, D', R]  dec_register_pos [R, D']
  dec_nested_dropout.dropout_mask_token [D']         mask_token
  dec_latent_dropout.nullcond [D'] (LearnedNullCond) null_token
  dec_noise_patch_emb.patch_proj                     noisy_embed
  dec_patches_posemb_module.posembs [1, D', g, g]    (fixed sin-cos; checked)
  dec_time_embedder.mlp.{0,2}                        time_mlp1, time_mlp2
  dec_transformer.blocks.{i}.* (as the encoder's)    decoder/blocks/{i}/*
  dec_transformer.blocks.{i}.adaLN_modulation.1      decoder/blocks/{i}/ada
  dec_to_patches.adaLN_modulation.1, .proj           decoder/ada, out

(register_pos is 0: the release's encoder registers carry no separate
position; a ZeroNullCond has no tensor and gives `null_cond='zero'`.)
Linear weights are [out, in] there and [in, out] here. The release has no
q/k-norm parameters (parameter-free LayerNorms): ours are set to scale 1,
bias 0; absent biases are zeros. Every tensor of the checkpoint must be used.

The architecture comes from the tensor shapes; what shapes cannot tell
(head_dim, FSQ levels, patch size, the time embedding's max_timestep,
qk_norm, the register mask mode, training-only settings) from the
config.json when given, else from the release classes' defaults (head_dim
64, patch 2, max_timestep 1000, FSQ [8, 8, 8, 5, 5, 5] when the code width
is 6).

Dimension legend: D encoder width, D' decoder width, R registers, E code
width (len(levels)), g the posemb grid (patches per side), C latent channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tokenizers_jax.convert import common

ENC = 'encoder.module_dict.'
DEC = 'decoder.module_dict.'
VAE = 'vae.'
DEFAULT_LEVELS = (8, 8, 8, 5, 5, 5)
# TimestepEmbedder.timestep_embedding's max_period (not a config option).
TIME_MAX_PERIOD = 256.0
# MinRFPipeline's default number of steps (FlexTok.decode's timesteps=None).
PIPELINE_STEPS = 25
_NESTED = {'uniform': 'uniform', 'pow2': 'pow2'}


@dataclasses.dataclass(frozen=True)
class FlexTokArch:
  """A FlexTok release's encoder/decoder architecture (the VAE excluded)."""
  channels: int
  patch_size: int
  grid: int
  width: int
  depth: int
  num_heads: int
  decoder_width: int
  decoder_depth: int
  decoder_num_heads: int
  mlp_ratio: float
  num_registers: int
  embed_dim: int
  levels: tuple[int, ...]
  attn_bias: bool
  mlp_bias: bool
  adaln_groups: int
  time_freq_dim: int
  null_cond: str
  qk_norm: bool = True
  max_timestep: float = 1000.0
  causal_registers: bool = True
  nested_dropout: str = 'uniform'
  cond_dropout: float = 0.0
  time_sampler: str = 'logit_normal'


# -----------------------------------------------------------------------------
# Architecture: from the tensors, refined by the release's config.json.
# -----------------------------------------------------------------------------


def _count(sd: common.StateDict, pattern: str) -> int:
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def _mlp_ratio(width: int, hidden: int, hint: float | None) -> float:
  """mlp_ratio r with int(2 int(width r) / 3) == hidden (GatedMlp)."""
  for r in ([hint] if hint else []) + [4.0, round(1.5 * hidden / width, 6)]:
    if int(2 * int(width * r) / 3) == hidden:
      return float(r)
  raise common.ConversionError(
      f'no mlp_ratio gives a SwiGLU hidden width of {hidden} at width '
      f'{width}')


def _module_configs(cfg: dict) -> dict[str, dict]:
  """{module name: its config} of the encoder, decoder and the rest."""
  if 'config' in cfg and isinstance(cfg['config'], dict):
    cfg = cfg['config']
  if 'encoder' not in cfg or 'decoder' not in cfg:
    raise common.ConversionError(
        'the reference config has no encoder/decoder (the release\'s '
        'config.json of FlexTokFromHub is expected)')
  out = {}
  for part in ('encoder', 'decoder'):
    md = (cfg[part] or {}).get('module_dict') or {}
    out.update({k: (v or {}) for k, v in md.items()})
  for part in ('regularizer', 'flow_matching_noise_module', 'pipeline'):
    out[part] = cfg.get(part) or {}
  return out


def _value(node: dict, key: str, default):
  """A config value; hydra interpolations ('${...}') count as absent."""
  v = node.get(key, default)
  if isinstance(v, str) and v.startswith('${'):
    return default
  return default if v is None else v


def infer_arch(sd: common.StateDict, cfg: dict | None = None) -> FlexTokArch:
  """The architecture of a FlexTok state dict (and config, when given)."""
  mods = _module_configs(cfg) if cfg else {}

  def c(module, key, default):
    return _value(mods.get(module, {}), key, default)

  need = [ENC + 'enc_patch_emb.patch_proj.weight',
          ENC + 'enc_register_module.registers',
          ENC + 'enc_to_latents.proj.weight',
          DEC + 'dec_from_latents.proj.weight',
          DEC + 'dec_noise_patch_emb.patch_proj.weight',
          DEC + 'dec_time_embedder.mlp.0.weight',
          DEC + 'dec_to_patches.proj.weight']
  missing = [n for n in need if n not in sd]
  if missing:
    raise common.ConversionError(
        f'not a FlexTok state dict: {", ".join(missing)} not found (its keys '
        f'start with {sd.names()[:6]})')
  width, pdim = sd.shape(ENC + 'enc_patch_emb.patch_proj.weight')
  num_registers, rw = sd.shape(ENC + 'enc_register_module.registers')
  embed_dim = sd.shape(ENC + 'enc_to_latents.proj.weight')[0]
  dw = sd.shape(DEC + 'dec_from_latents.proj.weight')[0]
  problems = []
  if rw != width:
    problems.append(f'registers are {rw}-wide, the encoder {width}')
  if sd.shape(DEC + 'dec_noise_patch_emb.patch_proj.weight')[1] != pdim:
    problems.append('the decoder patches differ from the encoder\'s')
  enc_blk = ENC + 'enc_transformer.blocks.{}.'
  dec_blk = DEC + 'dec_transformer.blocks.{}.'
  depth = _count(sd, enc_blk + 'attn.wq.weight')
  dec_depth = _count(sd, dec_blk + 'attn.wq.weight')
  if not depth or not dec_depth:
    raise common.ConversionError('no enc_transformer / dec_transformer '
                                 'blocks (attn.wq.weight) found')
  for blk in (enc_blk, dec_blk):
    if blk.format(0) + 'mlp.fc3.weight' not in sd:
      raise common.ConversionError(
          f'{blk.format(0)}mlp has no fc3: a plain (gated_mlp=False) MLP, '
          'which our FlexTok blocks do not have')
  biases = [blk.format(0) + f'attn.{w}.bias' for blk in (enc_blk, dec_blk)
            for w in ('wq', 'wk', 'wv', 'proj')]
  attn_bias = any(n in sd for n in biases)
  mlp_bias = (enc_blk.format(0) + 'mlp.fc1.bias') in sd
  hint = c('enc_transformer', 'mlp_ratio', None)
  ratio = _mlp_ratio(width, sd.shape(enc_blk.format(0) + 'mlp.fc1.weight')[0],
                     hint)
  dec_ratio = _mlp_ratio(dw, sd.shape(dec_blk.format(0) + 'mlp.fc1.weight')[0],
                         c('dec_transformer', 'mlp_ratio', None) or ratio)
  if dec_ratio != ratio:
    problems.append(f'encoder mlp_ratio {ratio} != decoder {dec_ratio} (ours '
                    'has one)')
  ada = sd.shape(dec_blk.format(0) + 'adaLN_modulation.1.weight')[0] if (
      dec_blk.format(0) + 'adaLN_modulation.1.weight') in sd else 0
  groups = ada // (6 * dw)
  if groups not in (1, 2) or groups * 6 * dw != ada:
    problems.append(f'decoder adaLN_modulation has {ada} outputs; expected '
                    f'6 or 12 x {dw}')
  time_freq_dim = sd.shape(DEC + 'dec_time_embedder.mlp.0.weight')[1]
  null = 'learned' if DEC + 'dec_latent_dropout.nullcond' in sd else 'zero'
  pos = ENC + 'enc_posemb_module.posembs'
  grid = sd.shape(pos)[2] if pos in sd else None
  if grid is None or sd.shape(pos)[2] != sd.shape(pos)[3]:
    problems.append(f'{pos}: a square sin-cos posemb grid is expected')
  patch = c('enc_patch_emb', 'patch_sizes', [2, 2])
  if len(set(patch)) != 1:
    problems.append(f'patch_sizes {patch}: only square patches')
  patch = int(patch[0])
  if pdim % (patch * patch):
    problems.append(f'patch dim {pdim} is not C x {patch}^2')
  channels = int(c('enc_patch_emb', 'channels_in', pdim // (patch * patch)))
  if channels * patch * patch != pdim:
    problems.append(f'channels_in {channels} x patch {patch}^2 != {pdim}')
  heads = []
  for w, module in ((width, 'enc_transformer'), (dw, 'dec_transformer')):
    hd = int(c(module, 'head_dim', 64))
    if w % hd:
      problems.append(f'{module} width {w} is not a multiple of head_dim '
                      f'{hd} (give the release\'s config.json)')
    heads.append(max(w // hd, 1))
  levels = c('regularizer', 'levels', None)
  if levels is None:
    if embed_dim != len(DEFAULT_LEVELS):
      problems.append(f'code width {embed_dim}: the FSQ levels are in the '
                      'config.json (regularizer.levels); pass it')
    levels = DEFAULT_LEVELS
  levels = tuple(int(l) for l in levels)
  if len(levels) != embed_dim:
    problems.append(f'FSQ levels {levels} for a code width of {embed_dim}')
  for module in ('enc_transformer', 'dec_transformer'):
    if not c(module, 'gated_mlp', True):
      problems.append(f'{module}.gated_mlp=False')
    if c(module, 'rope_forward_read_key', None):
      problems.append(f'{module} uses RoPE, which ours does not have')
  qk = {bool(c(m, 'qk_norm', True)) for m in ('enc_transformer',
                                              'dec_transformer')}
  if len(qk) != 1:
    problems.append('qk_norm differs between the encoder and the decoder')
  mode = c('enc_seq_packer', 'mask_mode', 'causal_last')
  if mode not in ('causal_last', 'full'):
    problems.append(f'enc_seq_packer.mask_mode={mode!r}: ours has the '
                    "register-causal ('causal_last') or the full mask")
  if c('enc_register_module', 'ordering_mode', 'nested') != 'nested':
    problems.append('enc_register_module.ordering_mode must be nested')
  if problems:
    raise common.ConversionError('this FlexTok checkpoint does not fit our '
                                 'model: ' + '; '.join(problems))
  nested = c('dec_nested_dropout', 'size_sampling_mode', 'uniform')
  ln = bool(c('flow_matching_noise_module', 'ln', True))
  return FlexTokArch(
      channels=channels, patch_size=patch, grid=int(grid), width=int(width),
      depth=depth, num_heads=heads[0], decoder_width=int(dw),
      decoder_depth=dec_depth, decoder_num_heads=heads[1], mlp_ratio=ratio,
      num_registers=int(num_registers), embed_dim=int(embed_dim),
      levels=levels, attn_bias=attn_bias, mlp_bias=mlp_bias,
      adaln_groups=groups, time_freq_dim=int(time_freq_dim), null_cond=null,
      qk_norm=qk.pop(),
      max_timestep=float(c('dec_time_embedder', 'max_timestep', 1000.0)),
      causal_registers=mode == 'causal_last',
      nested_dropout=str(nested),
      cond_dropout=float(c('dec_latent_dropout', 'dropout_prob', 0.0)),
      time_sampler='logit_normal' if ln else 'uniform')


# -----------------------------------------------------------------------------
# Our config.
# -----------------------------------------------------------------------------


def build_config(arch: FlexTokArch, base_config: str | None = None,
                 image_size: int | None = None):
  """configs/flextok.py:tiny with the release's architecture.

  `image_size` is in latent pixels (default: the posemb grid x patch, e.g.
  32 for the releases' 16 x 16 grid of 2 x 2 patches of f8 latents of 256²
  images)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = common.load_base_config(base_config
                              or common.default_base_config('flextok.py:tiny'))
  size = int(image_size or arch.grid * arch.patch_size)
  if size % arch.patch_size or size // arch.patch_size > arch.grid:
    raise common.ConversionError(
        f'image_size {size} (latent pixels) must be a multiple of the patch '
        f'size {arch.patch_size} and at most {arch.grid * arch.patch_size} '
        '(the release\'s posemb grid)')
  c.model_name = 'flextok'
  c.data.image_size = size
  c.model.update(
      patch_size=arch.patch_size, num_registers=arch.num_registers,
      width=arch.width, encoder_depth=arch.depth,
      decoder_depth=arch.decoder_depth, num_heads=arch.num_heads,
      mlp_ratio=arch.mlp_ratio, embed_dim=arch.embed_dim,
      causal_registers=arch.causal_registers,
      nested_dropout=_NESTED.get(arch.nested_dropout, 'pow2'),
      cond_dropout=arch.cond_dropout, time_sampler=arch.time_sampler,
      time_loc=0.0, time_scale=1.0, num_sample_steps=PIPELINE_STEPS,
      guidance_scale=1.0, channels=arch.channels, trunk='flextok',
      qk_norm=arch.qk_norm, attn_bias=arch.attn_bias,
      mlp_bias=arch.mlp_bias, mup_scale=True,
      adaln_groups=arch.adaln_groups, decoder_width=arch.decoder_width,
      decoder_num_heads=arch.decoder_num_heads,
      time_freq_dim=arch.time_freq_dim, time_max_period=TIME_MAX_PERIOD,
      time_embed_scale=1000.0 / arch.max_timestep,
      register_pos_before_dropout=True, null_cond=arch.null_cond,
      guidance='apg')
  c.quantizer = ml_collections.ConfigDict(
      dict(name='fsq', levels=tuple(arch.levels)), type_safe=False)
  c.loss.weights.repa = 0.0  # The release has no REPA projector.
  c.loss.perceptual_weight = 0.0
  return c


# -----------------------------------------------------------------------------
# Tensors.
# -----------------------------------------------------------------------------


def _sincos(size: int, width: int) -> np.ndarray:
  from tokenizers_jax.models import vit  # pylint: disable=g-import-not-at-top
  return vit.sincos_2d(size, size, width)


def _check_posemb(sd: common.StateDict, name: str, width: int, g: int,
                  problems: list[str]) -> None:
  """A fixed sin-cos posemb [1, D, G, G], cropped to g x g, must equal ours
  (the release crops it: posemb_scaling 'absolute')."""
  value = sd.take(name)
  if value is None:
    return
  if value.ndim != 4 or value.shape[:2] != (1, width):
    problems.append(f'{name}: shape {value.shape}, expected [1, {width}, G, '
                    'G] (learnable patch posembs are not supported)')
    return
  theirs = value[0, :, :g, :g].reshape(width, g * g).T
  err = float(np.abs(theirs - _sincos(g, width)).max())
  if err > 1e-4:
    problems.append(f'{name} is not the fixed 2D sin-cos embedding (max '
                    f'difference {err:.3g}); learnable patch posembs are not '
                    'supported')


def _linear(sd, name, din, dout, bias='required'):
  """{kernel [din, dout], bias [dout]} of a torch Linear `name`; bias
  'required', 'optional' (zeros when the release has none) or None (ours
  has none)."""
  w = sd.take(name + '.weight', (dout, din))
  out = {'kernel': None if w is None else np.ascontiguousarray(w.T)}
  if bias == 'optional' and name + '.bias' not in sd:
    out['bias'] = np.zeros((dout,), np.float32)
  elif bias:
    out['bias'] = sd.take(name + '.bias', (dout,))
  return out


def _attention(sd, prefix, width, heads, bias):
  ws = [sd.take(f'{prefix}.{n}.weight', (width, width))
        for n in ('wq', 'wk', 'wv')]
  out = {'qkv': {'kernel': None if any(w is None for w in ws) else
                 np.ascontiguousarray(np.concatenate(ws, 0).T)},
         'proj': _linear(sd, prefix + '.proj', width, width,
                         'optional' if bias else None)}
  if bias:
    bs = [sd.take(f'{prefix}.{n}.bias', (width,)) if f'{prefix}.{n}.bias'
          in sd else np.zeros((width,), np.float32) for n in ('wq', 'wk', 'wv')]
    out['qkv']['bias'] = (None if any(b is None for b in bs)
                          else np.concatenate(bs))
  hd = width // heads
  for n in ('q_norm', 'k_norm'):  # Parameter-free in the release.
    out[n] = {'scale': np.ones((hd,), np.float32),
              'bias': np.zeros((hd,), np.float32)}
  return out


def _blocks(sd, prefix, depth, width, heads, arch, hidden, ada):
  blocks = {}
  for i in range(depth):
    p = f'{prefix}.blocks.{i}'
    block = {'attn': _attention(sd, p + '.attn', width, heads, arch.attn_bias),
             'mlp': {f'fc{k}': _linear(sd, f'{p}.mlp.fc{k}', *dims,
                                       'required' if arch.mlp_bias else None)
                     for k, dims in ((1, (width, hidden)), (2, (hidden, width)),
                                     (3, (width, hidden)))}}
    if not arch.qk_norm:
      del block['attn']['q_norm'], block['attn']['k_norm']
    if ada:
      block['ada'] = _linear(sd, p + '.adaLN_modulation.1', width,
                             ada * width)
    blocks[i] = block
  return blocks


def take_params(sd: common.StateDict, arch: FlexTokArch,
                image_size: int) -> dict:
  """Our generator params (nested dict) from the release's tensors."""
  d, dw, r, e = (arch.width, arch.decoder_width, arch.num_registers,
                 arch.embed_dim)
  pdim = arch.channels * arch.patch_size ** 2
  g = image_size // arch.patch_size
  hidden = int(2 * int(d * arch.mlp_ratio) / 3)
  dec_hidden = int(2 * int(dw * arch.mlp_ratio) / 3)
  problems = []
  _check_posemb(sd, ENC + 'enc_posemb_module.posembs', d, g, problems)
  _check_posemb(sd, DEC + 'dec_patches_posemb_module.posembs', dw, g,
                problems)
  if problems:
    raise common.ConversionError('; '.join(problems))
  params = {
      'patch_embed': _linear(sd, ENC + 'enc_patch_emb.patch_proj', pdim, d),
      'registers': sd.take(ENC + 'enc_register_module.registers', (r, d)),
      'register_pos': np.zeros((r, d), np.float32),
      'encoder': {'blocks': _blocks(sd, ENC + 'enc_transformer', arch.depth,
                                    d, arch.num_heads, arch, hidden, 0)},
      'to_code': _linear(sd, ENC + 'enc_to_latents.proj', d, e),
      'from_code': _linear(sd, DEC + 'dec_from_latents.proj', e, dw),
      'mask_token': sd.take(DEC + 'dec_nested_dropout.dropout_mask_token',
                            (dw,)),
      'noisy_embed': _linear(sd, DEC + 'dec_noise_patch_emb.patch_proj', pdim,
                             dw),
      'time_mlp1': _linear(sd, DEC + 'dec_time_embedder.mlp.0',
                           arch.time_freq_dim, dw),
      'time_mlp2': _linear(sd, DEC + 'dec_time_embedder.mlp.2', dw, dw),
      'decoder': {
          'blocks': _blocks(sd, DEC + 'dec_transformer', arch.decoder_depth,
                            dw, arch.decoder_num_heads, arch, dec_hidden,
                            6 * arch.adaln_groups),
          'ada': _linear(sd, DEC + 'dec_to_patches.adaLN_modulation.1', dw,
                         2 * dw)},
      'out': _linear(sd, DEC + 'dec_to_patches.proj', dw, pdim),
  }
  pos = sd.take(DEC + 'dec_registers_posemb_module.posembs', (1, 1, dw, r))
  params['dec_register_pos'] = (None if pos is None
                                else np.ascontiguousarray(pos[0, 0].T))
  if arch.null_cond == 'learned':
    params['null_token'] = sd.take(DEC + 'dec_latent_dropout.nullcond', (dw,))
  return params


def _abstract_params(config) -> dict:
  from tokenizers_jax.models import registry  # pylint: disable=g-import-not-at-top
  return common.abstract_variables(lambda: registry.build_model(config))[0][0]


def _place(ours: dict, abstract: dict) -> dict:
  """`ours` in the structure of the model's params (shapes checked)."""
  flat_ours, flat_want = common.flatten(ours), common.flatten(abstract)
  extra = sorted('/'.join(map(str, k)) for k in set(flat_ours) - set(flat_want))
  lacking = sorted('/'.join(map(str, k))
                   for k in set(flat_want) - set(flat_ours))
  if extra or lacking:
    raise common.ConversionError(f'internal: converted params {extra} have '
                                 f'no place; model params {lacking} no value')
  import jax  # pylint: disable=g-import-not-at-top

  def fill(path, leaf):
    value = np.asarray(flat_ours[common.path_key(path)], np.float32)
    if value.shape != tuple(leaf.shape):
      raise common.ConversionError(
          f'internal: {"/".join(map(str, common.path_key(path)))} has shape '
          f'{value.shape}, the model {tuple(leaf.shape)}')
    return value

  return jax.tree_util.tree_map_with_path(fill, abstract)


# -----------------------------------------------------------------------------
# Import.
# -----------------------------------------------------------------------------


def _strip_prefix(tensors: dict[str, Any]) -> dict[str, Any]:
  """Drops a wrapper prefix ('model.', '_orig_mod.') before 'encoder.'."""
  for name in tensors:
    i = name.find(ENC)
    if i > 0:
      prefix = name[:i]
      if all(n.startswith(prefix) for n in tensors):
        return {n[len(prefix):]: v for n, v in tensors.items()}
      break
  return tensors


def convert(checkpoint: str, workdir: str, *,
            reference_config: str | None = None,
            base_config: str | None = None, image_size: int | None = None,
            overrides: tuple[str, ...] = (), ignore: tuple[str, ...] = (),
            overwrite: bool = False, **unused) -> dict:
  """Converts a FlexTok release (encoder, FSQ, decoder) into a workdir.

  Args:
    checkpoint: the release's model.safetensors (or a torch state dict).
    workdir: the output workdir (must not hold checkpoints yet).
    reference_config: the release's config.json (hydra); without it the
      architecture is read off the shapes and the release classes' defaults.
    base_config: our config the workdir starts from (default
      configs/flextok.py:tiny).
    image_size: data.image_size in latent pixels (default: the posemb grid).
    overrides: 'key=value' config overrides, applied last.
    ignore: tensor-name prefixes to drop on purpose.
    overwrite: replace the checkpoints already in `workdir`.

  Returns:
    The conversion report (also written to workdir/conversion.json).
  """
  unused.pop('lpips_dir', None)
  if unused:
    raise common.ConversionError(f'--from=flextok does not take '
                                 f'{sorted(unused)}')
  sd = common.StateDict(_strip_prefix(common.read_tensors(checkpoint)),
                        f'FlexTok checkpoint {checkpoint!r}')
  vae = sd.names(VAE)
  for name in vae:
    sd.skip(name)
  sd.skip_prefixes(ignore)
  cfg = common.read_config_file(reference_config) if reference_config else None
  arch = infer_arch(sd, cfg)
  config = build_config(arch, base_config, image_size)
  common.apply_overrides(config, overrides)
  params = take_params(sd, arch, int(config.data.image_size))
  sd.check_complete()
  gen = _place(params, _abstract_params(config))

  notes = [
      f'the VAE is not converted ({len(vae)} vae.* tensors dropped): the '
      f'model works on VAE latents [B, h, w, {arch.channels}] computed by '
      "the release's own VAE (and its outputs are latents to decode with it)",
      f'decoding: {PIPELINE_STEPS} Euler steps, no guidance (the release\'s '
      'API defaults); --set=model.guidance_scale=7.5 gives its recommended '
      'APG decoding (model.guidance=apg; cfg for plain classifier-free '
      'guidance)',
  ]
  if arch.nested_dropout not in _NESTED:
    notes.append(f'dec_nested_dropout.size_sampling_mode='
                 f'{arch.nested_dropout!r} has no counterpart; fine-tuning '
                 "uses 'pow2'")
  if cfg is None:
    notes.append('no config.json: head_dim 64, patch 2, max_timestep 1000, '
                 'qk_norm, the causal register mask and FSQ levels '
                 f'{arch.levels} assumed (the release classes\' defaults)')
  if arch.channels != 3:
    notes.append('model.channels != 3: Tokenizer.encode/decode (RGB in '
                 '[-1, 1]) and the image data pipeline do not apply; call '
                 'tokenizer.model.encode / decode on latents')

  def fill(state):
    state['gen']['params'] = gen
    if common.flatten(state['ema']):
      state['ema'] = jax_copy(gen)
    return state

  report = common.conversion_report(
      'flextok', checkpoint, reference_config, arch, sd, notes,
      dropped_on_purpose=(sorted(set(sd.skipped) - set(vae))
                          + ([f'{VAE}* ({len(vae)} tensors)'] if vae
                             else [])))
  common.write_workdir(workdir, config, fill, overwrite=overwrite,
                       report=report)
  return report


def jax_copy(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.array, tree)
