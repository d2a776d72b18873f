"""Front ends: modality-specific encoder/decoder pairs.

Each front end exposes `modality`, `encode(x, train=False)`,
`decode(z, train=False)`, `latent_shape(input_shape)` and
`downsample_factor`.
"""

from tokenizers_jax.frontends.image import (
    AttnBlock, ImageConfig, ImageDecoder, ImageEncoder, ImageFrontEnd,
    ResnetBlock, group_count)

__all__ = [
    'AttnBlock', 'ImageConfig', 'ImageDecoder', 'ImageEncoder',
    'ImageFrontEnd', 'ResnetBlock', 'group_count',
]
