"""Test setup: 8 simulated CPU devices for the sharding tests.

The device count must be fixed before the JAX backend starts, so it is set
here, before any test module imports jax.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
