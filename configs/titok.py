r"""TiTok: a 1D tokenizer (K latent tokens read out from a ViT) on the shared
training system.

Variants:
  tiny   32² crops of the embedded photos, patch 4 (64 patches), ViT width
         128, 2 + 2 layers, 4 heads, 16 latent tokens, l2-normalised VQ with
         256 codes x 8; single-stage L2 (+ a late, light PatchGAN).
  s128   the paper's TiTok-S-128: 256², patch 16, width 512, 8 + 8 layers,
         8 heads, 128 tokens, 4096 codes x 12; for TPU/GPU users (prepared
         TFDS imagenet2012).
  test   a micro model for tests and smoke runs (16², patch 4, 8 tokens).
Modifiers: bf16, steps=N, batch=N, and TiTok's two-stage training:
  teacher=WORKDIR  stage 1 ("proxy codes"): the decoder predicts, per patch,
         the code of a trained VQ-GAN of this project (its workdir; its token
         grid must equal the patch grid, i.e. patch_size = the VQ-GAN's
         downsampling factor) with a cross-entropy; no pixel or GAN loss.
  teacher=WORKDIR,stage2=STAGE1_WORKDIR  stage 2: starts from the stage-1
         run's weights (`init_from`), freezes TiTok's encoder, latent tokens
         and quantizer (`optim.frozen`), and fine-tunes the decoder with the
         teacher's pixel decoder (softmax(logits) mixes the teacher's codes;
         models/titok.py) on L2 (+ LPIPS when its weights are given) + GAN.
         s128 follows TiTok's stage 2 (GAN 0.01 from 20k, LeCam 0.001,
         lr 1e-4, 500k steps); tiny/test keep their GAN and lower the lr.

  python -m tokenizers_jax.train --config=configs/titok.py:tiny --workdir=/tmp/titok
  python -m tokenizers_jax.train --config=configs/titok.py:tiny,teacher=/tmp/vqgan \
      --workdir=/tmp/titok_s1
  python -m tokenizers_jax.train \
      --config=configs/titok.py:tiny,teacher=/tmp/vqgan,stage2=/tmp/titok_s1 \
      --workdir=/tmp/titok_s2
"""

import ml_collections

from tokenizers_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', bf16=False, steps=0,
                              batch=0, teacher='', stage2='')
  c = config_lib.image_base_config()
  c.model_name = 'titok'
  c.model = dict(
      patch_size=4, num_tokens=16, width=128, encoder_depth=2,
      decoder_depth=2, num_heads=4, mlp_ratio=4.0, embed_dim=8,
      # None (TiTok), 'batch' or 'example' (One-D-Piece's tail drop).
      tail_drop=ml_collections.FieldReference(None, field_type=str),
      # A VQ-GAN workdir: stage-1 proxy-code training.
      proxy_teacher=ml_collections.FieldReference(None, field_type=str),
      # Stage 2: frozen encoder/quantizer, trainable teacher pixel decoder.
      finetune_decoder=False)
  c.quantizer = ml_collections.ConfigDict(
      dict(name='vq', codebook_size=256, codebook_dim=8, use_cosine_sim=True,
           kmeans_init=True, commitment_weight=0.25,
           threshold_ema_dead_code=1.0), type_safe=False)
  c.loss.recon = 'l2'
  # Stage 1 with a proxy teacher: the proxy-code cross-entropy.
  c.loss.weights.proxy_ce = 1.0
  c.loss.disc_weight = 0.1
  c.optim.lr = 1e-3
  c.optim.b1, c.optim.b2 = 0.9, 0.99
  c.optim.weight_decay = 1e-4
  if args.variant == 'tiny':
    c.total_steps = 2000
  elif args.variant == 'test':
    config_lib.use_test_variant(c)
    c.model.update(num_tokens=8, width=32, encoder_depth=1, decoder_depth=1,
                   num_heads=2)
    c.quantizer.codebook_size = 32
    c.quantizer.codebook_dim = 4
  elif args.variant == 's128':
    config_lib.use_imagenet(c, 256, 256)
    c.model.update(patch_size=16, num_tokens=128, width=512, encoder_depth=8,
                   decoder_depth=8, num_heads=8, embed_dim=12)
    c.quantizer = ml_collections.ConfigDict(
        dict(name='vq', codebook_size=4096, use_cosine_sim=True,
             commitment_weight=0.25), type_safe=False)
    c.loss.disc_weight = 0.1
    c.loss.disc_start = 200_000
    c.loss.lecam_weight = 0.001
    c.optim.update(lr=1e-4, warmup_steps=10_000, end_lr_factor=0.1)
    c.total_steps = 650_000
  else:
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test, '
                     's128')
  if args.stage2:
    if not args.teacher:
      raise ValueError('stage2=WORKDIR (the stage-1 run) needs '
                       'teacher=WORKDIR (the VQ-GAN of stage 1)')
    use_decoder_finetuning(c, args.teacher, args.stage2, args.variant)
  elif args.teacher:
    use_proxy_codes(c, args.teacher)
  return config_lib.apply_modifiers(c, args)


# TiTok's encoder side (TiTok.ENCODER_PARAMS in models/titok.py), frozen in
# stage 2.
ENCODER_PARAMS = ('patch_embed', 'patch_pos', 'latent_tokens', 'latent_pos',
                  'encoder', 'to_code', 'quantizer')


def use_proxy_codes(c: ml_collections.ConfigDict,
                    teacher: str) -> ml_collections.ConfigDict:
  """Stage 1 of TiTok's two-stage recipe: cross-entropy against a frozen
  VQ-GAN's codes (plus the quantizer loss); pixels and GAN off."""
  c.model.proxy_teacher = teacher
  c.loss.recon_weight = 0.0
  c.loss.disc_weight = 0.0
  c.loss.adaptive_weight = False
  c.loss.disc_start = 10 ** 9
  c.eval.pfid_perturb = None
  return c


def use_decoder_finetuning(c: ml_collections.ConfigDict, teacher: str,
                           stage1: str,
                           variant: str) -> ml_collections.ConfigDict:
  """Stage 2 of TiTok's two-stage recipe: from the stage-1 weights, train the
  decoder and the teacher's pixel decoder on pixels; encoder side frozen."""
  c.model.proxy_teacher = teacher
  c.model.finetune_decoder = True
  c.init_from = stage1
  frozen = ENCODER_PARAMS
  # The released-checkpoint options (convert/titok.py) add encoder weights.
  if c.model.get('class_token'):
    frozen += ('class_token',)
  if c.model.get('pre_norm'):
    frozen += ('ln_pre',)
  c.optim.frozen = frozen
  c.loss.recon = 'l2'
  c.loss.recon_weight = 1.0
  if variant == 's128':  # TiTok stage 2 (the perceptual term stays LPIPS).
    c.loss.disc_weight = 0.01
    c.loss.adaptive_weight = False
    c.loss.disc_start = 20_000
    c.loss.lecam_weight = 0.001
    c.optim.update(lr=1e-4, warmup_steps=5_000)
    c.total_steps = 500_000
  else:  # Fine-tuning a trained pixel decoder: a gentler lr.
    c.optim.lr = 3e-4
  return c
