"""Defaults shared by the token-generator configs (configs/maskgit.py,
configs/ar.py): config.task = 'tokens' (`training/tokens_task.py`).

Only ml_collections is imported, so config files stay light.
"""

from __future__ import annotations

import ml_collections


def base_config(model_name: str) -> ml_collections.ConfigDict:
  """A tiny generator on the tokens of `data.dir` (a pretokenize output)."""
  c = ml_collections.ConfigDict()
  c.task = 'tokens'
  c.model_name = model_name
  c.seed = 0
  c.total_steps = 2000
  c.mixed_precision = False
  # True: the train step's convolutions on XLA:CPU's own kernels
  # (training/core.py FAST_CPU_OPTIONS; faster, other last bits).
  c.xla_fast_cpu = False
  c.data = dict(
      # The output directory of `python -m tokenizers_jax.pretokenize`.
      dir=ml_collections.FieldReference(None, field_type=str),
      global_batch_size=32, eval_batch_size=80,
      # Audio (variable-length tokens): crop length in tokens; 0 for images.
      crop_tokens=0)
  c.model = dict(width=128, depth=4, num_heads=4, mlp_ratio=4.0,
                 depth_layers=1, label_dropout=0.1)
  # The generator's only loss term: token cross-entropy.
  c.loss = dict(weights=ml_collections.ConfigDict({'ce': 1.0},
                                                  type_safe=False))
  c.sample = dict(temperature=1.0, top_k=0, guidance_scale=1.0, num_steps=8,
                  choice_temperature=4.5)
  # elbo_samples: stratified mask sizes per example for MaskGIT's bound.
  # gFID/IS need the FID Inception weights as a local file.
  # split: the pretokenized split evaluate() reads.
  c.eval = dict(
      inception_path=ml_collections.FieldReference(None, field_type=str),
      num_fid_samples=1000, elbo_samples=4, split='validation')
  c.optim = dict(lr=1e-3, b1=0.9, b2=0.95, warmup_steps=100,
                 schedule='cosine', end_lr_factor=0.1, grad_clip=1.0,
                 weight_decay=0.01, frozen=())
  c.ema_decay = 0.99
  c.init_from = ml_collections.FieldReference(None, field_type=str)
  c.mesh = dict(shape=(-1, 1, 1), axes=('data', 'fsdp', 'model'))
  c.sharding_rules = (
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      ('mlp', 'model'),
      ('heads', 'model'),
      ('codebook', ('model', 'fsdp')),
  )
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 250
  c.keep_checkpoints = 3
  c.max_consecutive_nonfinite = 5
  c.num_eval_batches = -1
  c.num_grid_images = 16
  return c


def use_test_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A micro generator and schedule (tests, smoke runs)."""
  c.model = dict(width=32, depth=1, num_heads=2, mlp_ratio=2.0,
                 depth_layers=1, label_dropout=0.1)
  c.data.global_batch_size = 8
  c.data.eval_batch_size = 8
  c.total_steps = 6
  c.optim.warmup_steps = 0
  c.log_every = 2
  c.eval_every = 6
  c.checkpoint_every = 3
  c.num_eval_batches = 2
  c.num_grid_images = 4
  c.eval.elbo_samples = 2
  c.sample.num_steps = 4
  return c


def apply_modifiers(c, args):
  if args.get('dir'):
    c.data.dir = args.dir
  if args.get('steps'):
    c.total_steps = args.steps
  if args.get('batch'):
    c.data.global_batch_size = args.batch
  if args.get('bf16'):
    c.mixed_precision = True
  return c
