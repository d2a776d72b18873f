"""Test setup: 8 simulated CPU devices for the sharding tests.

The device count must be fixed before the JAX backend starts, so it is set
here, before any test module imports jax.
"""

import os

# LLVM at -O0: the suite is dominated by compilation (tests/quantizers and
# tests/models: 280 s -> 204 s). XLA's HLO passes are the same, but the last
# bits of a result may differ from -O3 (e.g. FMA contraction), so tests that
# start subprocesses append their device count to these same flags (the last
# occurrence of a flag wins) and both sides compile alike.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                      '--xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# Compiled programs are shared across test processes (the training tests start
# subprocesses that compile the same train step).
import tempfile  # pylint: disable=g-import-not-at-top

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'tokenizers_jax_jit_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
