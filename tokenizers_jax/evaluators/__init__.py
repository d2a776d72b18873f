"""Evaluation metrics for reconstructions."""

from tokenizers_jax.evaluators.image import bicubic_at_bits, bicubic_baseline, psnr, ssim

__all__ = ['bicubic_at_bits', 'bicubic_baseline', 'psnr', 'ssim']
