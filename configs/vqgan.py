r"""VQ-GAN (taming-transformers design) on the shared training system.

Variants:
  tiny          32² crops of the embedded photos, f=4 (8x8 tokens), trains on
                a 2-core CPU in about 10 minutes.
  imagenet_f16  the paper-scale model: 256², ch 128, ch_mult (1,1,2,2,4),
                16x16 tokens, 1024 codes; for TPU/GPU users (prepared TFDS
                imagenet2012 in ArrayRecord format).
  test          a micro model for tests and smoke runs (16², f=2).
Modifiers (comma-separated): bf16 (mixed precision), fsq (FSQ levels
(8, 5, 5, 5), 1000 codes, instead of the VQ), steps=N, batch=N.

  python -m tokenizers_jax.train --config=configs/vqgan.py:tiny --workdir=/tmp/vqgan
  python -m tokenizers_jax.train --config=configs/vqgan.py:tiny,bf16 \
      --workdir=/tmp/vqgan --config.total_steps=200
  python -m tokenizers_jax.train --config=configs/vqgan.py:tiny,fsq \
      --workdir=/tmp/vqgan_fsq
"""

import ml_collections

from tokenizers_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', bf16=False, fsq=False,
                              steps=0, batch=0)
  c = config_lib.image_base_config()
  if args.variant == 'tiny':
    c.total_steps = 2000
    # At 32² and 2000 steps, L2 gives +1.4 dB held-out PSNR over L1 (and
    # higher codebook usage) in a 700-step A/B. The PatchGAN trades PSNR for
    # texture at this size (weight 0.8 from step 1000 cost 0.5 dB over steps
    # 1500-2000), so it joins at step 1000 with weight 0.1 (held-out PSNR
    # 19.91 dB at 2000 with 64 train crops per photo; starting it at 1500
    # instead gave 19.79 dB). With 512 crops per photo: 20.24 dB (README).
    c.loss.recon = 'l2'
    c.loss.disc_weight = 0.1
  elif args.variant == 'test':
    config_lib.use_test_variant(c)
    # The smallest model that exercises every mechanism (tests, smoke runs).
    c.model.embed_dim = 8
    c.model.frontend = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(8,), z_channels=8, num_groups=4)
    c.quantizer.codebook_size = 32
    c.quantizer.codebook_dim = 4
  elif args.variant == 'imagenet_f16':
    config_lib.use_imagenet(c, 256, 96)
    c.model.embed_dim = 256
    c.model.frontend = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                            attn_resolutions=(16,), z_channels=256,
                            num_groups=32)
    c.quantizer = ml_collections.ConfigDict(
        dict(name='vq', codebook_size=1024, commitment_weight=0.25),
        type_safe=False)
    c.loss.disc_start = 250001
    c.optim.lr = 4.5e-6 * 96
    c.optim.warmup_steps = 0
    c.optim.schedule = 'constant'
    c.disc_optim.lr = 4.5e-6 * 96
    c.ema_decay = 0.0
    c.total_steps = 1_000_000
  else:
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test, imagenet_f16')
  if args.fsq:
    c.quantizer = ml_collections.ConfigDict(
        dict(name='fsq', levels=(8, 5, 5, 5)), type_safe=False)
  # Exact fast forms for XLA:CPU (the same parameters and function, other
  # rounding; off so that recorded runs replay bitwise): 'subpixel',
  # 'channel_sums', 'space_to_depth'. README, "Train step (CPU)".
  c.model.frontend.upsample = 'repeat'
  c.model.frontend.group_norm = 'flax'
  c.disc.strided_conv = 'direct'
  return config_lib.apply_modifiers(c, args)
