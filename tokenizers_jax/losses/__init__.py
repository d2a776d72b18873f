"""Training losses: adversarial (GAN, LeCam, adaptive weight) and perceptual."""

from tokenizers_jax.losses.adversarial import (
    D_LOSSES, G_LOSSES, adaptive_generator_weight, disc_start_gate,
    get_d_loss, get_g_loss, hinge_d_loss, hinge_g_loss, least_squares_d_loss,
    least_squares_g_loss, lecam_ema_update, lecam_regularizer, vanilla_d_loss,
    vanilla_g_loss)
from tokenizers_jax.losses.perceptual import (
    LPIPS, PretrainedWeight, VGG16Features, load_lpips_linear_state_dict,
    load_vgg16_state_dict, read_state_dict)

__all__ = [
    'D_LOSSES', 'G_LOSSES', 'LPIPS', 'PretrainedWeight', 'VGG16Features',
    'adaptive_generator_weight', 'disc_start_gate', 'get_d_loss', 'get_g_loss',
    'hinge_d_loss', 'hinge_g_loss', 'least_squares_d_loss',
    'least_squares_g_loss', 'lecam_ema_update', 'lecam_regularizer',
    'load_lpips_linear_state_dict', 'load_vgg16_state_dict', 'read_state_dict',
    'vanilla_d_loss', 'vanilla_g_loss',
]
