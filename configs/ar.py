r"""An autoregressive transformer on pretokenized data (config.task =
'tokens'): causal, raster order (1D tokens: the tokenizer's order),
class-conditional with a null label (label dropout 0.1) for
classifier-free guidance; residual tokens through a depth transformer.

Variants:
  tiny   4 layers, width 128, batch 32, 2000 steps (the tiny VQ-GAN's
         8x8 tokens on a 2-core CPU).
  test   a micro model (tests, smoke runs).
Modifiers: dir=PRETOKENIZED_DIR, steps=N, batch=N, bf16.

  python -m tokenizers_jax.train --config=configs/ar.py:tiny,dir=/tmp/tok \
      --workdir=/tmp/ar
  python -m tokenizers_jax.sample --workdir=/tmp/ar --num=16 --output=/tmp/s \
      --guidance_scale=2
"""

import ml_collections

from tokenizers_jax import config_lib
from tokenizers_jax import generator_configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', dir='', steps=0, batch=0,
                              bf16=False)
  c = generator_configs.base_config('ar')
  if args.variant == 'test':
    generator_configs.use_test_variant(c)
  elif args.variant != 'tiny':
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test')
  return generator_configs.apply_modifiers(c, args)
