r"""Audio codec (WavTokenizer design; EnCodec/DAC-style RVQ as a switch).

Variants:
  tiny    16 kHz, 0.5-s crops of the embedded eSpeak NG speech corpus,
          SEANet-lite (8 filters, strides 4,5,8: hop 160, 100 tokens/s),
          single VQ K=256 (0.8 kbps), Vocos-lite decoder (2 ConvNeXt blocks,
          width 64, 1 attention block, iSTFT n_fft 640), MPD (period 2, 3) +
          MRD (one resolution) from step 800 of 1200; trains on a 2-core
          CPU in about 10 minutes.
  paper   WavTokenizer-small: 24 kHz, SEANet 32 filters + 2-layer LSTM,
          dim 512, strides 8,5,4,2 (75 tokens/s; `paper,tps=40` gives
          6,5,5,4), VQ 4096 x 512 (EMA 0.99, k-means init 200 iterations,
          dead-code threshold 2), Vocos 12 ConvNeXt blocks width 768 / FFN
          2304, iSTFT n_fft 4 x hop, MPD periods 2-11 + MRD, hinge, 45 x mel,
          1000 x commitment, AdamW 2e-4, 3-s crops, batch 40 x 8.
  test    a micro model for tests (12 steps, GAN from step 4).
Modifiers: rvq (RVQ with quantizer dropout instead of one VQ: `levels` x
`codes` codes, default 3 x 16 for tiny = 12 bits as VQ 4096), vq_codes=K,
levels=Q, codes=K (RVQ), tps=40|75 (paper), bf16, steps=N, batch=N.

  python -m tokenizers_jax.train --config=configs/audio_codec.py:tiny \
      --workdir=/tmp/audio
  python -m tokenizers_jax.train --config=configs/audio_codec.py:tiny,rvq \
      --workdir=/tmp/audio_rvq
"""

import ml_collections

from tokenizers_jax import config_lib


def _vq(codes: int, kmeans_iters: int = 10) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name='vq', codebook_size=codes, ema_update=True, decay=0.99,
      kmeans_init=True, kmeans_iters=kmeans_iters,
      threshold_ema_dead_code=2.0, commitment_weight=1.0), type_safe=False)


def _rvq(levels: int, codes: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name='rvq', num_quantizers=levels, codebook_size=codes,
      quantize_dropout=True, quantize_dropout_prob=0.5, ema_update=True,
      decay=0.99, kmeans_init=True, kmeans_iters=10,
      threshold_ema_dead_code=2.0, commitment_weight=1.0), type_safe=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', rvq=False, vq_codes=0,
                              levels=3, codes=16, tps=75, bf16=False, steps=0,
                              batch=0)
  c = ml_collections.ConfigDict()
  c.task = 'audio'
  c.model_name = 'audio_codec'
  c.seed = 0
  c.total_steps = 1200
  c.mixed_precision = False
  # True: the train step's convolutions on XLA:CPU's own kernels
  # (training/core.py FAST_CPU_OPTIONS; faster, other last bits).
  c.xla_fast_cpu = False
  c.data = dict(source='espeak_speech', sample_rate=16000, crop_seconds=0.5,
                global_batch_size=16, eval_batch_size=16,
                num_sentences=600,
                # Evaluation pads whole utterances to this many samples;
                # -1: the validation split's longest (rounded to the hop).
                eval_length=-1,
                data_dir=ml_collections.FieldReference(None, field_type=str))
  c.model = dict(frontend=dict(
      n_filters=8, strides=(4, 5, 8), dim=64, residual_layers=1,
      lstm_layers=0, dec_dim=64, dec_ffn=192, num_convnext=2, attn_blocks=1,
      n_fft=0))  # n_fft 0: 4 x hop.
  c.quantizer = _vq(256)
  c.disc = dict(periods=(2, 3), resolutions=((512, 128),),
                mpd_channels=(8, 16, 32), mrd_channels=8, mrd_layers=2,
                mrd_first_stride=2)
  c.loss = dict(
      mel_weight=45.0,
      # (n_fft, n_mels) of the multi-scale mel L1 (hop n_fft / 4).
      mel_scales=((256, 40), (512, 64), (1024, 80)),
      stft_weight=0.0, stft_resolutions=((512, 128), (1024, 256)),
      quantizer_weight=10.0,
      gan_loss='hinge',
      g_loss=ml_collections.FieldReference(None, field_type=str),
      disc_weight=1.0, fm_weight=1.0, disc_start=800,
      weights=ml_collections.ConfigDict({}, type_safe=False))
  c.eval = dict(pesq=True, stoi=True)
  c.optim = dict(lr=1e-3, b1=0.8, b2=0.99, warmup_steps=50,
                 schedule='cosine', end_lr_factor=0.1, grad_clip=1.0,
                 weight_decay=0.0)
  c.disc_optim = dict(lr=5e-4, b1=0.8, b2=0.99, warmup_steps=0,
                      schedule='constant', end_lr_factor=1.0, grad_clip=1.0,
                      weight_decay=0.0)
  c.ema_decay = 0.0
  c.mesh = dict(shape=(-1, 1, 1), axes=('data', 'fsdp', 'model'))
  # FSDP shards the widths ('embed', 'mlp') and the codebooks (with their
  # EMA buffers) over 'fsdp'; experiments/scale_check.py reports what is left.
  c.sharding_rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'),
                      ('mlp', 'fsdp'), ('codebook', ('model', 'fsdp')))
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.max_consecutive_nonfinite = 5
  c.num_eval_batches = -1

  if args.variant == 'tiny':
    pass
  elif args.variant == 'test':
    c.data.num_sentences = 20
    c.data.crop_seconds = 0.2
    c.data.global_batch_size = 8
    c.data.eval_batch_size = 8
    c.model.frontend = dict(n_filters=4, strides=(4, 5, 4), dim=16,
                            residual_layers=1, lstm_layers=0, dec_dim=16,
                            dec_ffn=32, num_convnext=1, attn_blocks=1,
                            n_fft=0)
    c.quantizer = _vq(32)
    c.disc = dict(periods=(2,), resolutions=((256, 64),),
                  mpd_channels=(4, 8), mrd_channels=4, mrd_layers=1,
                  mrd_first_stride=2)
    c.loss.mel_scales = ((256, 32), (512, 40))
    c.loss.disc_start = 4
    c.total_steps = 12
    c.log_every = 2
    c.eval_every = 12
    c.checkpoint_every = 4
    c.num_eval_batches = 1
  elif args.variant == 'paper':
    c.data.sample_rate = 24000
    c.data.crop_seconds = 3.0
    c.data.global_batch_size = 320
    c.data.eval_batch_size = 32
    strides = {75: (8, 5, 4, 2), 40: (6, 5, 5, 4)}
    if args.tps not in strides:
      raise ValueError(f'paper: tps must be 40 or 75; got {args.tps}')
    c.model.frontend = dict(n_filters=32, strides=strides[args.tps], dim=512,
                            residual_layers=1, lstm_layers=2, dec_dim=768,
                            dec_ffn=2304, num_convnext=12, attn_blocks=1,
                            n_fft=0)
    c.quantizer = _vq(4096, kmeans_iters=200)
    c.disc = dict(periods=(2, 3, 5, 7, 11),
                  resolutions=((512, 128), (1024, 256), (2048, 512)),
                  mpd_channels=(32, 128, 512, 1024, 1024), mrd_channels=32,
                  mrd_layers=3, mrd_first_stride=1)
    c.loss.mel_scales = ((1024, 100),)
    c.loss.quantizer_weight = 1000.0
    c.loss.disc_start = 0
    c.optim = dict(lr=2e-4, b1=0.8, b2=0.9, warmup_steps=0, schedule='cosine',
                   end_lr_factor=0.0, grad_clip=0.0, weight_decay=0.01)
    c.disc_optim = dict(lr=2e-4, b1=0.8, b2=0.9, warmup_steps=0,
                        schedule='cosine', end_lr_factor=0.0, grad_clip=0.0,
                        weight_decay=0.01)
    c.total_steps = 1_000_000
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 5_000
    c.num_eval_batches = 20
  else:
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test, '
                     'paper')
  if args.rvq:
    c.quantizer = _rvq(args.levels, args.codes)
  elif args.vq_codes:
    c.quantizer.codebook_size = args.vq_codes
  return config_lib.apply_modifiers(c, args)
