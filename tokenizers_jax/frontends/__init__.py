"""Front ends: modality-specific encoder/decoder pairs.

Each front end exposes `modality`, `encode(x, train=False)`,
`decode(z, train=False)`, `latent_shape(input_shape)` and
`downsample_factor`.
"""

from tokenizers_jax.frontends.image import (
    AttnBlock, ImageConfig, ImageDecoder, ImageEncoder, ImageFrontEnd,
    ResnetBlock, group_count)
from tokenizers_jax.frontends.magvit2 import (
    AdaptiveGroupNorm, DepthToSpaceUpsample, Magvit2Config, Magvit2Decoder,
    Magvit2Encoder, Magvit2FrontEnd, Magvit2ResBlock, depth_to_space)

__all__ = [
    'AdaptiveGroupNorm', 'AttnBlock', 'DepthToSpaceUpsample', 'ImageConfig',
    'ImageDecoder', 'ImageEncoder', 'ImageFrontEnd', 'Magvit2Config',
    'Magvit2Decoder', 'Magvit2Encoder', 'Magvit2FrontEnd', 'Magvit2ResBlock',
    'ResnetBlock', 'depth_to_space', 'group_count',
]
