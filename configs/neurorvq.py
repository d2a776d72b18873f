r"""NeuroRVQ (multi-scale EEG tokenizer, per-branch RVQ) on the EEG task.

Variants:
  tiny    4 channels (Fp1, C3, C4, O1) of the embedded synthetic EEG, windows
          of 4 one-second patches; NeuroRVQ's four conv branches with 4
          channels each (100-d), encoder depth 2 (dim 100, 4 heads), decoder
          depth 1, codes of 16 dims, RVQ 3 levels x 64 codes per branch (12
          tokens per patch); trains on a 2-core CPU.
  paper   the released EEG tokenizer v1: the 19 10-20 channels, up to 256
          patches, conv 8 channels (200-d), encoder 12 x 200 (10 heads),
          decoder 3, code dim 128, RVQ 8 x 8192 per branch (32 tokens/patch).
  test    a micro model for tests and smoke runs.
Modifiers (comma-separated): single_scale (one branch, kernels 21/9, with 4x
the RVQ levels, so the same tokens per patch), mse (a head predicting the
per-example standardised signal, trained with plain MSE, instead of the
Fourier heads and the amplitude/phase/time loss), baseline (=
single_scale,mse), bf16, steps=N, batch=N.

  python -m tokenizers_jax.train --config=configs/neurorvq.py:tiny \
      --workdir=/tmp/neurorvq
  python -m tokenizers_jax.train --config=configs/neurorvq.py:tiny,baseline \
      --workdir=/tmp/neurorvq_baseline
  # Your own recordings (a folder of .edf/.bdf files, e.g. EEGMMI):
  python -m tokenizers_jax.train --config=configs/neurorvq.py:tiny \
      --config.data.source=folder:/data/eegmmidb --workdir=/tmp/eegmmi
"""

import ml_collections

from tokenizers_jax import config_lib

BRANCHES = ((21, 9), (15, 7), (9, 5), (5, 3))
CHANNELS_1020 = ('Fp1', 'Fp2', 'F7', 'F3', 'Fz', 'F4', 'F8', 'T7', 'C3', 'Cz',
                 'C4', 'T8', 'P7', 'P3', 'Pz', 'P4', 'P8', 'O1', 'O2')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = 'eeg'
  c.seed = 0
  c.model_name = 'neurorvq'
  c.total_steps = 1500
  c.mixed_precision = False
  # True: the train step's convolutions on XLA:CPU's own kernels
  # (training/core.py FAST_CPU_OPTIONS; faster, other last bits).
  c.xla_fast_cpu = False
  c.data = dict(
      source='synthetic',  # or 'folder:/path/to/recordings'
      channels=('Fp1', 'C3', 'C4', 'O1'),
      num_patches=4, global_batch_size=16, eval_batch_size=32,
      data_dir=ml_collections.FieldReference(None, field_type=str),
      # EegConfig fields of the TFDS build (preprocessing, segments,
      # synthetic recordings).
      dataset=dict(segment_patches=8, num_recordings=16, seconds=60,
                   val_fraction=0.2, l_freq=0.1, h_freq=75.0, notch=50.0,
                   reference='average', patch_size=200))
  c.model = dict(patch_size=200, max_patches=16, branches=BRANCHES,
                 conv_channels=4, embed_dim=100, depth=2, num_heads=4,
                 decoder_depth=1, mlp_ratio=4.0, code_dim=16,
                 loss='neurorvq',
                 # A converted release's options (convert/neurorvq.py sets
                 # NeuroRVQ's: its electrode list, 'right', 1e-5, 1e-5,
                 # 'example'); these defaults are this codebase's model.
                 electrodes=None, temporal_align='left', norm_eps=1e-6,
                 group_norm_eps=1e-6, group_norm_scope='patch')
  c.quantizer = ml_collections.ConfigDict(
      dict(name='rvq', num_quantizers=3, codebook_size=64, quantizer='vq',
           use_cosine_sim=True, ema_update=True, kmeans_init=True, decay=0.99,
           commitment_weight=1.0), type_safe=False)
  # The model's loss terms: 'eeg' (reconstruction loss of model.loss) and
  # 'quantizer' (L_code).
  c.loss = dict(quantizer_weight=1.0,
                weights=ml_collections.ConfigDict(dict(eeg=1.0),
                                                  type_safe=False))
  c.optim = dict(lr=1e-3, b1=0.9, b2=0.99, warmup_steps=100,
                 schedule='cosine', end_lr_factor=0.1, grad_clip=1.0,
                 weight_decay=0.01)
  c.ema_decay = 0.99
  c.mesh = dict(shape=(-1, 1, 1), axes=('data', 'fsdp', 'model'))
  # FSDP shards the width ('embed') and the codebooks (with their EMA
  # buffers) over 'fsdp'; experiments/scale_check.py reports what is left.
  c.sharding_rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'),
                      ('codebook', ('model', 'fsdp')))
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.max_consecutive_nonfinite = 5
  c.num_eval_batches = -1
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', single_scale=False,
                              mse=False, baseline=False, bf16=False, steps=0,
                              batch=0)
  c = base_config()
  if args.variant == 'tiny':
    pass
  elif args.variant == 'test':
    c.data.channels = ('Fp1', 'O1')
    c.data.num_patches = 2
    c.data.global_batch_size = 8
    c.data.eval_batch_size = 8
    c.data.dataset.update(segment_patches=4, num_recordings=3, seconds=8)
    c.model.update(max_patches=4, conv_channels=4, embed_dim=16, depth=1,
                   num_heads=2, decoder_depth=1, code_dim=8, mlp_ratio=2.0)
    c.quantizer.update(num_quantizers=2, codebook_size=16)
    c.optim.warmup_steps = 0
    c.total_steps = 6
    c.log_every = 2
    c.eval_every = 6
    c.checkpoint_every = 3
    c.num_eval_batches = 2
  elif args.variant == 'paper':
    c.data.channels = CHANNELS_1020
    c.data.num_patches = 16
    c.data.global_batch_size = 64
    c.data.eval_batch_size = 64
    c.data.dataset.update(segment_patches=16)
    c.model.update(max_patches=256, conv_channels=8, embed_dim=200, depth=12,
                   num_heads=10, decoder_depth=3, code_dim=128)
    c.quantizer.update(num_quantizers=8, codebook_size=8192)
    c.optim.update(lr=5e-4, warmup_steps=2000, weight_decay=0.05)
    c.total_steps = 100_000
    c.log_every = 100
    c.eval_every = 5000
    c.checkpoint_every = 2500
    c.num_eval_batches = 50
  else:
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test, '
                     'paper')
  if args.single_scale or args.baseline:
    c.model.branches = (BRANCHES[0],)
    c.quantizer.num_quantizers *= len(BRANCHES)
  if args.mse or args.baseline:
    c.model.loss = 'mse'
  return config_lib.apply_modifiers(c, args)
