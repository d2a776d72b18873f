r"""MAGVIT-v2 / Open-MAGVIT2 LFQ tokenizer on the shared training system.

The attention-free MAGVIT-v2 front end (adaptive GroupNorm in the decoder,
depth-to-space upsampling), GroupNorm without affine before a lookup-free
quantizer, entropy loss (weight 0.1, temperature 0.01) with MAGVIT-v2's
annealing, commitment 0.25, non-saturating generator loss at a fixed weight
0.1 against a hinge PatchGAN with LeCam regularisation.

Variants:
  tiny          32² crops of the embedded photos, f=4 (8x8 tokens), 10-bit LFQ
                (1024 implicit codes); trains on a 2-core CPU.
  imagenet_256  Open-MAGVIT2 256_L: ch 128, ch_mult (1,1,2,2,4), 4 res blocks,
                18 bits (2^18 codes), 16x16 tokens, LeCam 0.05.
  imagenet_128  the 128² model: ch_mult (1,2,2,4), LeCam 0.01.
  open_magvit2_256, open_magvit2_128
                the released Open-MAGVIT2 tokenizers' exact layout (what
                `python -m tokenizers_jax.convert --from=open_magvit2`
                writes): bias-free ResBlock convs, the decoder's adaptive
                norm at the start of each level, an affine GroupNorm before
                its output conv, unbiased latent variance, depth-column-row
                depth-to-space; no pre-quantizer norm, no entropy annealing
                (codebook_enlarge_ratio 0), EMA 0.999.
  test          a micro model for tests and smoke runs.
Modifiers: bf16, steps=N, batch=N.

  python -m tokenizers_jax.train --config=configs/lfq.py:tiny --workdir=/tmp/lfq
"""

import ml_collections

from tokenizers_jax import config_lib


# The frontend options that give Open-MAGVIT2's released layout
# (frontends/magvit2.py; each default-off).
OPEN_MAGVIT2_LAYOUT = dict(conv_bias=False, adaptive_norm='before',
                           decoder_norm_out='group', adaptive_norm_ddof=1,
                           depth_to_space_order='dcr', shortcut_kernel=1,
                           num_groups=32)


def open_magvit2_config(size: int) -> ml_collections.ConfigDict:
  """Open-MAGVIT2's imagenet_lfqgan_{256,128}_L (the release's YAML)."""
  c = lfq_config(f'imagenet_{size}')
  c.model.frontend.update(OPEN_MAGVIT2_LAYOUT)
  # LFQ reads the encoder output directly: no norm before it. (Our 1x1
  # quant_conv / post_quant_conv have no counterpart; the converter makes
  # them identities and freezes them.)
  c.model.pre_quant_norm = False
  c.model.entropy_anneal = (1.0, 0)
  c.loss.disc_weight = 0.1  # gen_loss_weight
  c.loss.adaptive_weight = False
  return c


def lfq_config(variant: str) -> ml_collections.ConfigDict:
  """The LFQ-GAN config (also the base of configs/wetok.py)."""
  if variant in ('open_magvit2_256', 'open_magvit2_128'):
    return open_magvit2_config(int(variant.rsplit('_', 1)[1]))
  c = config_lib.image_base_config()
  c.model_name = 'lfqgan'
  c.model.frontend_name = 'magvit2'
  c.model.frontend = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                          z_channels=32, num_groups=8)
  c.model.pre_quant_norm = True
  c.model.embed_dim = 10
  c.quantizer = ml_collections.ConfigDict(
      dict(name='lfq', codebook_size=2**10, entropy_loss_weight=0.1,
           commitment_loss_weight=0.25, entropy_temperature=0.01,
           diversity_gamma=1.0), type_safe=False)
  # Entropy weight x3 at step 0, decaying linearly to x1.
  c.model.entropy_anneal = (3.0, 1000)
  c.loss.g_loss = 'vanilla'  # non-saturating
  c.loss.gan_loss = 'hinge'
  c.loss.adaptive_weight = False
  c.loss.disc_weight = 0.1
  c.loss.lecam_weight = 0.05
  if variant == 'tiny':
    c.total_steps = 2000
    c.loss.recon = 'l2'
    c.loss.disc_start = 1000
    # At 32² with L2 and no LPIPS, the paper's fixed generator weight lost
    # held-out PSNR once the GAN joined (18.89 dB at step 1000 -> 17.89 at
    # 2000 with 0.1, 18.01 with 0.02); VQ-GAN's adaptive weight (x0.1) keeps
    # 18.58 (WeTok tiny: 18.14 fixed -> 19.21 adaptive).
    c.loss.adaptive_weight = True
  elif variant == 'test':
    config_lib.use_test_variant(c)
    c.model.frontend = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1,
                            z_channels=8, num_groups=4)
    c.model.embed_dim = 6
    c.quantizer.codebook_size = 2**6
    c.model.entropy_anneal = (3.0, 8)
  elif variant in ('imagenet_256', 'imagenet_128'):
    size = 256 if variant == 'imagenet_256' else 128
    config_lib.use_imagenet(c, size, 256)
    c.model.frontend = dict(
        ch=128, ch_mult=(1, 1, 2, 2, 4) if size == 256 else (1, 2, 2, 4),
        num_res_blocks=4, z_channels=18, num_groups=32)
    c.model.embed_dim = 18
    c.quantizer.codebook_size = 2**18
    c.model.entropy_anneal = (3.0, 10_000)
    c.loss.recon = 'l1'
    c.loss.disc_start = 0
    c.loss.lecam_weight = 0.05 if size == 256 else 0.01
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.optim.schedule = 'constant'
    c.disc_optim.lr = 1e-4
    c.ema_decay = 0.999
    c.total_steps = 1_350_000
  else:
    raise ValueError(f'unknown variant {variant!r}; known: tiny, test, '
                     'imagenet_256, imagenet_128, open_magvit2_256, '
                     'open_magvit2_128')
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', bf16=False, steps=0, batch=0)
  c = lfq_config(args.variant)
  return config_lib.apply_modifiers(c, args)
