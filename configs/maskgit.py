r"""MaskGIT on pretokenized data (config.task = 'tokens').

Variants:
  tiny   4 layers, width 128, batch 32, 2000 steps: the tokens of the tiny
         VQ-GAN (8x8 of 256 codes) on a 2-core CPU.
  test   a micro model (tests, smoke runs).
Modifiers: dir=PRETOKENIZED_DIR, steps=N, batch=N, bf16.

  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/tok --flip
  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/tok \
      --split=validation
  python -m tokenizers_jax.train --config=configs/maskgit.py:tiny,dir=/tmp/tok \
      --workdir=/tmp/maskgit
  python -m tokenizers_jax.sample --workdir=/tmp/maskgit --num=16 \
      --output=/tmp/s
"""

import ml_collections

from tokenizers_jax import config_lib
from tokenizers_jax import generator_configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', dir='', steps=0, batch=0,
                              bf16=False)
  c = generator_configs.base_config('maskgit')
  # MaskGIT's decoding: T steps, Gumbel-noised confidences (4.5 as the paper).
  c.sample.num_steps = 8
  c.sample.choice_temperature = 4.5
  if args.variant == 'test':
    generator_configs.use_test_variant(c)
  elif args.variant != 'tiny':
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test')
  return generator_configs.apply_modifiers(c, args)
