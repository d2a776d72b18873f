"""The shared training system (jit + NamedSharding, orbax, grain)."""
