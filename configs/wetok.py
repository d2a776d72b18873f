r"""WeTok: group-wise lookup-free quantization and the generative decoder.

The LFQ-GAN of configs/lfq.py with two changes: the B latent bits are split
into G groups of b bits, each its own 2^b-code index, with the entropy loss
computed per group over 2^b codes (memory O(G·2^b) per token instead of
O(2^B)); and the decoder concatenates Gaussian noise of the latent's shape to
the latent (its input conv takes 2·z channels) while its adaptive GroupNorm
is conditioned on the latent alone.

Variants:
  tiny          32², f=4, 16 bits as 4 groups x 4 bits (2^16 effective codes,
                16 codes per group), noise-concatenated decoder.
  imagenet_f16  ch 256, ch_mult (1,1,2,2,4), 4 res blocks, 32 bits as
                4 groups x 8 bits, 16x16 tokens.
  test          a micro model for tests and smoke runs.
Modifiers: bf16, steps=N, batch=N.

  python -m tokenizers_jax.train --config=configs/wetok.py:tiny --workdir=/tmp/wetok
"""

import os

import ml_collections

from tokenizers_jax import config_lib

_LFQ = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lfq.py')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', bf16=False, steps=0, batch=0)
  base_variant = {'imagenet_f16': 'imagenet_256'}.get(args.variant, args.variant)
  if base_variant not in ('tiny', 'test', 'imagenet_256'):
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test, '
                     'imagenet_f16')
  c = config_lib.load_config_file(f'{_LFQ}:{base_variant}')
  c.model_name = 'wetok'
  c.model.frontend.noise_concat = True
  if args.variant == 'tiny':
    bits, groups = 16, 4
  elif args.variant == 'test':
    bits, groups = 6, 2
  else:
    bits, groups = 32, 4
    c.model.frontend.ch = 256
    c.model.frontend.z_channels = 32
  c.model.embed_dim = bits
  c.quantizer.codebook_size = 2**bits
  c.quantizer.num_groups = groups
  return config_lib.apply_modifiers(c, args)
