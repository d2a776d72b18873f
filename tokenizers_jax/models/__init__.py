"""Tokenizer models and their auxiliary networks."""

from tokenizers_jax.models.discriminator import NLayerDiscriminator
from tokenizers_jax.models.tokenizer import Tokenizer
from tokenizers_jax.models.vqgan import VQGAN
