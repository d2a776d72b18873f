r"""FlexTok: register tokens with nested dropout, FSQ, and a rectified-flow
decoder, on the shared training system.

The flow-matching loss (and the optional REPA loss) come from the model as
extra losses; the pixel loss and the GAN are off (`loss.recon_weight = 0`,
`loss.disc_weight = 0`), as in FlexTok. Evaluation decodes with the Euler
sampler from fixed-seed noise and all registers.

Variants:
  tiny     32² pixels (no VAE), patch 4, encoder and decoder width 128,
           2 + 2 layers, 32 registers with the causal mask, FSQ
           [8, 8, 8, 5, 5, 5] (64 000 codes, ~16 bits per token), nested
           dropout over powers of two, 8 Euler steps, no guidance, REPA off.
  d12_d12  the paper's smallest size (width 768, 12 + 12 layers, 256
           registers) on 256² images with patch 16 (FlexTok applies its
           trunks to 2x2-patchified f8 VAE latents, which this pixel-space
           version replaces by pixels); REPA on with the random-conv teacher
           unless --config.model.repa.teacher points at local ViT weights.
  test     a micro model for tests and smoke runs (16², 8 registers).
Modifiers: bf16, steps=N, batch=N, repa (REPA with the offline random conv
teacher, weight 0.5, after decoder block 1).

  python -m tokenizers_jax.train --config=configs/flextok.py:tiny --workdir=/tmp/flextok
"""

import ml_collections

from tokenizers_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', bf16=False, steps=0,
                              batch=0, repa=False)
  c = config_lib.image_base_config()
  c.model_name = 'flextok'
  c.model = dict(
      patch_size=4, num_registers=32, width=128, encoder_depth=2,
      decoder_depth=2, num_heads=4, mlp_ratio=4.0, embed_dim=6,
      causal_registers=True,
      nested_dropout='pow2',  # 'pow2', 'uniform' or None
      cond_dropout=0.1,       # all registers dropped: unconditional (CFG)
      time_sampler='logit_normal', time_loc=0.0, time_scale=1.0,
      num_sample_steps=8, guidance_scale=1.0,
      sample_seed=0,
      # REPA is on when loss.weights.repa > 0. teacher: a
      # models.teachers.make_teacher spec.
      repa=dict(layer=1, proj_dim=256,
                teacher=dict(name='random_conv', out_dim=256, width=32)))
  c.quantizer = ml_collections.ConfigDict(
      dict(name='fsq', levels=(8, 8, 8, 5, 5, 5)), type_safe=False)
  c.loss.recon = 'l2'
  c.loss.weights.flow = 1.0
  c.loss.weights.repa = 0.0  # > 0 turns REPA on.
  c.loss.recon_weight = 0.0  # logged only: the flow loss trains the decoder
  c.loss.disc_weight = 0.0
  c.loss.adaptive_weight = False
  c.loss.disc_start = 10 ** 9
  c.optim.lr = 1e-3
  c.optim.b1, c.optim.b2 = 0.9, 0.99
  c.optim.weight_decay = 1e-4
  # Perturbed-latent metrics need O(K²) code tables: not for 64 000 codes.
  c.eval.pfid_perturb = None
  if args.variant == 'tiny':
    c.total_steps = 2000
  elif args.variant == 'test':
    config_lib.use_test_variant(c)
    c.model.update(num_registers=8, width=32, encoder_depth=1,
                   decoder_depth=1, num_heads=2, num_sample_steps=2)
    c.model.repa.update(proj_dim=16, teacher=dict(name='random_conv',
                                                  out_dim=8, width=4))
    c.quantizer.levels = (5, 5, 5)
    c.model.embed_dim = 3
  elif args.variant == 'd12_d12':
    config_lib.use_imagenet(c, 256, 256)
    c.loss.perceptual_weight = 0.0
    c.model.update(patch_size=16, num_registers=256, width=768,
                   encoder_depth=12, decoder_depth=12, num_heads=12,
                   num_sample_steps=20, guidance_scale=7.5)
    c.loss.weights.repa = 0.5
    c.model.repa.update(layer=1)
    c.optim.update(lr=1e-4, warmup_steps=5_000)
    c.total_steps = 500_000
  else:
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test, '
                     'd12_d12')
  if args.repa:
    c.loss.weights.repa = 0.5
  return config_lib.apply_modifiers(c, args)
