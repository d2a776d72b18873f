r"""One-D-Piece: TiTok trained with tail-token drop (a 1D tokenizer whose
first k tokens decode to a coarse image for every k).

The TiTok of configs/titok.py with `model.tail_drop='batch'`: in training
the decoder sees only the first k quantized tokens, k ~ U{1..K} drawn once
per batch ('example' draws one per image). The paper's quantizer: an
l2-normalised VQ with 4096 codes x 12.

Variants:
  tiny   32², patch 4, 32 tokens, width 128, 2 + 2 layers, 4096 codes x 12.
  s256   One-D-Piece-S-256: TiTok-S with 256 tokens (paper scale).
  test   a micro model for tests and smoke runs.
Modifiers: bf16, steps=N, batch=N, teacher=WORKDIR (proxy-code stage 1),
teacher=WORKDIR,stage2=STAGE1_WORKDIR (stage 2: decoder + teacher pixel
decoder fine-tuned on pixels, encoder side frozen; configs/titok.py). The
tail drop stays active in stage 2, as in One-D-Piece.

  python -m tokenizers_jax.train --config=configs/one_d_piece.py:tiny \
      --workdir=/tmp/one_d_piece
"""

import os

import ml_collections

from tokenizers_jax import config_lib

_TITOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'titok.py')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='tiny', bf16=False, steps=0,
                              batch=0, teacher='', stage2='')
  base = {'s256': 's128'}.get(args.variant, args.variant)
  if base not in ('tiny', 'test', 's128'):
    raise ValueError(f'unknown variant {args.variant!r}; known: tiny, test, '
                     's256')
  extra = f',teacher={args.teacher}' if args.teacher else ''
  extra += f',stage2={args.stage2}' if args.stage2 else ''
  c = config_lib.load_config_file(f'{_TITOK}:{base}{extra}')
  c.model_name = 'one_d_piece'
  c.model.tail_drop = 'batch'
  if args.variant == 'tiny':
    c.model.num_tokens = 32
    c.model.embed_dim = 12
    c.quantizer.codebook_size = 4096
    c.quantizer.codebook_dim = 12
  elif args.variant == 's256':
    c.model.num_tokens = 256
  return config_lib.apply_modifiers(c, args)
