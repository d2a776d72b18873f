r"""FQGAN: factorized quantization with sub-codebooks, disentanglement and
semantic (representation) alignment, on the shared training system.

A shared VQ-GAN encoder trunk splits into F heads (F=2 Dual, 3 Triple); each
head is a transformer adapter, a conv to z_channels and a 1x1 conv to an 8-d
l2-normalised sub-codebook. The heads' codes are concatenated for the decoder.
Losses: per-sub-codebook VQ (+ entropy 0.03 at temperature 0.01),
disentanglement 0.1·mean((l2n(q_i)·l2n(q_j))²), and 0.5·InfoNCE between each
semantic head's FeatPredHead CLS output and a frozen teacher's image feature.

Teachers: the embedded default is a frozen random conv net (no download). For
the paper's CLIP/DINO teachers pass a local timm-layout ViT state dict:
  --config.model.teachers='({"name": "vit", "path": "/data/clip_b16.pth"},)'

Variants:
  tiny              32², f=4 (8x8 positions x 2 sub-tokens), 2 x K=128 (14 bits
                    per position), adapters depth 1 width 64; CPU.
  imagenet_dual_f16 the paper's Dual VQ-16: ch 128, ch_mult (1,1,2,2,4),
                    2 x 16384 x 8-d, adapters 6 x 512, FeatPredHead depth 3.
  test              a micro model for tests and smoke runs.
Modifiers: bf16, steps=N, batch=N, triple (3 heads, two teachers).

  python -m tokenizers_jax.train --config=configs/fqgan.py:tiny --workdir=/tmp/fqgan
"""

import ml_collections

from tokenizers_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', bf16=False, steps=0,
                              batch=0, triple=False)
  c = config_lib.image_base_config()
  c.model_name = 'fqgan'
  frontend = c.model.frontend
  c.model = ml_collections.ConfigDict(dict(
      frontend=frontend,
      num_factors=3 if args.triple else 2,
      codebook_size=128,
      codebook_dim=8,
      vq=dict(use_cosine_sim=True, commitment_weight=0.25, codebook_weight=1.0,
              entropy_loss_weight=0.03, entropy_temperature=0.01,
              kmeans_init=True, threshold_ema_dead_code=1.0),
      adapter=dict(depth=1, width=64, num_heads=4),
      feat_pred=dict(depth=1, num_heads=4),
      disentangle_weight=0.1,
      infonce_temperature=1.0,
  ), type_safe=False)
  # One frozen teacher per semantic head (heads 1..F-1): the embedded default
  # is a fixed random conv net; see the module docstring for a local ViT.
  c.model.teachers = tuple(
      dict(name='random_conv', out_dim=256, width=32, seed=i)
      for i in range(1, 3 if args.triple else 2))
  c.model.perturb = config_lib.perturb_config()
  c.quantizer = ml_collections.ConfigDict(dict(name='fq'), type_safe=False)
  # InfoNCE of each semantic head against its teacher (paper: 0.5).
  c.loss.weights.semantic = 0.5
  # FQGAN: no adaptive weight, a fixed GAN weight.
  c.loss.adaptive_weight = False
  c.loss.disc_weight = 0.1
  if args.variant == 'tiny':
    c.total_steps = 2000
    c.loss.recon = 'l2'
    # The fixed GAN weight 0.1 cost 1.6 dB held-out PSNR over steps 1000-2000
    # at this size (no LPIPS); the tiny variant uses the adaptive weight.
    c.loss.adaptive_weight = True
  elif args.variant == 'test':
    config_lib.use_test_variant(c)
    c.model.frontend = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(8,), z_channels=8, num_groups=4)
    c.model.codebook_size = 32
    c.model.codebook_dim = 4
    c.model.adapter = dict(depth=1, width=16, num_heads=2)
    c.model.feat_pred = dict(depth=1, num_heads=2)
    c.model.teachers = tuple(dict(name='random_conv', out_dim=16, width=8,
                                  seed=i) for i in range(1, 3 if args.triple else 2))
  elif args.variant == 'imagenet_dual_f16':
    config_lib.use_imagenet(c, 256, 256)
    c.model.frontend = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                            attn_resolutions=(16,), z_channels=256,
                            num_groups=32)
    c.model.codebook_size = 16384
    c.model.adapter = dict(depth=6, width=512, num_heads=8)
    c.model.feat_pred = dict(depth=3, num_heads=8)
    c.model.vq.kmeans_init = False
    c.model.vq.threshold_ema_dead_code = 0.0
    c.loss.recon = 'l2'
    c.loss.disc_weight = 0.5
    c.loss.disc_start = 20_000
    c.optim = dict(lr=2e-4, b1=0.9, b2=0.95, warmup_steps=0,
                   schedule='constant', end_lr_factor=1.0, grad_clip=1.0,
                   weight_decay=0.0)
    c.disc_optim = dict(c.optim)
    c.mixed_precision = True
    c.ema_decay = 0.0
    c.total_steps = 200_000  # 40 epochs of ImageNet at batch 256
  else:
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test, '
                     'imagenet_dual_f16')
  return config_lib.apply_modifiers(c, args)
