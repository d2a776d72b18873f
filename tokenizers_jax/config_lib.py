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


def apply_modifiers(c: ml_collections.ConfigDict, args) -> ml_collections.ConfigDict:
  """The common variant modifiers: bf16, steps=N, batch=N."""
  if args.get('bf16'):
    c.mixed_precision = True
  if args.get('steps'):
    c.total_steps = args.steps
  if args.get('batch'):
    c.data.global_batch_size = args.batch
  return c


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


def perturb_config() -> dict:
  """Latent perturbation (Robust Latent Matters), off (alpha = 0) by default.

  Paper: --config.model.perturb.alpha=1.0 (beta 0.1, delta 100) with
  anneal_start/anneal_end in steps (end <= start: no annealing).
  """
  return dict(alpha=0.0, beta=0.1, delta=100, anneal_start=0, anneal_end=0)


def image_base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every 2D image tokenizer config (configs/vqgan.py,
  lfq.py, wetok.py, fqgan.py): the tiny VQ-GAN on the embedded photos."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model_name = 'vqgan'
  c.total_steps = 1000
  c.mixed_precision = False
  # True: the train step's convolutions on XLA:CPU's own kernels
  # (training/core.py FAST_CPU_OPTIONS; faster, other last bits).
  c.xla_fast_cpu = False
  c.data = dict(source='skimage_photos', image_size=32, global_batch_size=16,
                data_dir=ml_collections.FieldReference(None, field_type=str),
                random_flip=True, eval_batch_size=32)
  c.model = dict(
      embed_dim=32,
      frontend_name='taming',  # or 'magvit2' (configs/lfq.py, wetok.py)
      frontend=dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                    attn_resolutions=(8,), z_channels=32, num_groups=8),
      pre_quant_norm=False,
  )
  # (factor, steps): entropy-loss weight annealing (MAGVIT-v2); (1.0, 0) is off.
  c.model.entropy_anneal = (1.0, 0)
  c.model.perturb = perturb_config()
  c.quantizer = ml_collections.ConfigDict(
      dict(name='vq', codebook_size=256, codebook_dim=8, use_cosine_sim=True,
           kmeans_init=True, commitment_weight=0.25,
           threshold_ema_dead_code=1.0), type_safe=False)
  c.loss = dict(
      recon='l1', recon_weight=1.0, quantizer_weight=1.0,
      perceptual_weight=0.0,
      lpips_vgg_path=ml_collections.FieldReference(None, field_type=str),
      lpips_lin_path=ml_collections.FieldReference(None, field_type=str),
      gan_loss='hinge', disc_weight=0.8, disc_start=1000, adaptive_weight=True,
      # Generator loss when it differs from the discriminator's (MAGVIT-v2:
      # 'vanilla' = non-saturating against a hinge discriminator).
      g_loss=ml_collections.FieldReference(None, field_type=str),
      lecam_weight=0.0, lecam_decay=0.999,
      # Weights of the model's named loss terms (models/base.py), besides
      # 'quantizer' (quantizer_weight), e.g. proxy_ce, flow, semantic.
      weights=ml_collections.ConfigDict({}, type_safe=False),
  )
  # Evaluation: rFID/pFID need the FID Inception weights as a local file
  # (pt_inception-2015-12-05 layout); without it they are not computed.
  # pFID decodes latents perturbed with (alpha, beta, delta).
  c.eval = dict(
      inception_path=ml_collections.FieldReference(None, field_type=str),
      pfid_perturb=dict(alpha=0.1, beta=1.0, delta=8),
  )
  c.disc = dict(ndf=16, n_layers=2, norm='batch')
  # frozen: parameter path prefixes ('encoder', 'quantizer/codebook') whose
  # updates are zero.
  c.optim = dict(lr=2e-3, b1=0.5, b2=0.9, warmup_steps=100, schedule='cosine',
                 end_lr_factor=0.1, grad_clip=1.0, weight_decay=0.0,
                 frozen=())
  c.disc_optim = dict(lr=2e-3, b1=0.5, b2=0.9, warmup_steps=0,
                      schedule='constant', end_lr_factor=1.0, grad_clip=1.0,
                      weight_decay=0.0)
  c.ema_decay = 0.99
  # A training workdir: a fresh run starts from its latest checkpoint's
  # generator weights (EMA if kept) wherever path and shape match.
  c.init_from = ml_collections.FieldReference(None, field_type=str)
  c.mesh = dict(shape=(-1, 1, 1), axes=('data', 'fsdp', 'model'))
  c.sharding_rules = (
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      # Codebooks over 'model' and 'fsdp', so that under FSDP a large
      # codebook, its Adam moments or EMA buffers are not on every device.
      ('codebook', ('model', 'fsdp')),
  )
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 250
  c.keep_checkpoints = 3
  c.max_consecutive_nonfinite = 5
  c.num_eval_batches = -1  # -1: the whole validation split.
  c.num_grid_images = 8
  return c


def use_test_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The micro schedule every config's `test` variant shares (tests, smoke
  runs): 16² crops, batch 8, 12 steps, the GAN from step 4, 2 eval batches."""
  c.data.image_size = 16
  c.data.global_batch_size = 8
  c.data.eval_batch_size = 16
  c.disc = dict(ndf=8, n_layers=1, norm='batch')
  c.loss.disc_start = 4
  c.total_steps = 12
  c.log_every = 2
  c.eval_every = 12
  c.checkpoint_every = 4
  c.num_eval_batches = 2
  c.num_grid_images = 4
  return c


def use_imagenet(c: ml_collections.ConfigDict, image_size: int,
                 global_batch_size: int) -> ml_collections.ConfigDict:
  """Paper-scale data and bookkeeping: prepared TFDS imagenet2012, LPIPS on
  (local weights needed), the PatchGAN of the papers (ndf 64, 3 layers)."""
  c.data.source = 'imagenet2012'
  c.data.image_size = image_size
  c.data.global_batch_size = global_batch_size
  c.loss.perceptual_weight = 1.0
  c.disc = dict(ndf=64, n_layers=3, norm='batch')
  c.log_every = 100
  c.eval_every = 10_000
  c.checkpoint_every = 5_000
  c.num_eval_batches = 50
  return c


# -----------------------------------------------------------------------------
# Workdir configs (config.json), and configs written by earlier versions.
# -----------------------------------------------------------------------------

# Loss-term weights that models used to apply themselves, now the task's
# `loss.weights[term]`: (path of the old key, term name).
_LEGACY_WEIGHTS = ((('model', 'proxy_weight'), 'proxy_ce'),
                   (('model', 'flow_weight'), 'flow'),
                   (('model', 'semantic_weight'), 'semantic'),
                   (('model', 'repa', 'weight'), 'repa'))


def upgrade(c: ml_collections.ConfigDict) -> list[str]:
  """Rewrites, in place, a config written before the model contract
  (models/base.py): per-model loss weights move to `loss.weights`, an EEG
  config gets its `loss` block. Returns what was changed (empty if none)."""
  notes = []
  with c.unlocked():
    if 'loss' not in c:
      if c.get('task') == 'eeg':
        c.loss = dict(quantizer_weight=1.0, weights=dict(eeg=1.0))
        notes.append('added loss (eeg=1, quantizer=1)')
    if 'loss' in c and 'weights' not in c.loss:
      c.loss.weights = ml_collections.ConfigDict({}, type_safe=False)
    if c.get('model_name') == 'flextok' and 'flow' not in c.loss.weights:
      c.loss.weights.flow = 1.0
    for path, term in _LEGACY_WEIGHTS:
      parent = c
      for key in path[:-1]:
        parent = parent.get(key) if hasattr(parent, 'get') else None
        if parent is None:
          break
      if parent is None or path[-1] not in parent:
        continue
      value = parent[path[-1]]
      del parent[path[-1]]
      c.loss.weights[term] = float(value or 0.0)
      notes.append(f'{".".join(path)} -> loss.weights.{term}')
  return notes


def _tuplify(x):
  if isinstance(x, dict):
    return {k: _tuplify(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuplify(v) for v in x)
  return x


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """`workdir/config.json` as a ConfigDict (lists as tuples), upgraded from
  earlier versions' layout (`upgrade`)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: is {workdir} a training workdir?')
  with open(path) as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON ({e}); the workdir config '
                       'is damaged') from None
  c = ml_collections.ConfigDict(_tuplify(raw))
  upgrade(c)
  return c
