"""Building blocks shared by every model family, one concept a module.

attention.py (masks, tail-query and shared-prefix attention, implementation dispatch),
blocked_attention.py (the cache-blocked CPU kernel), mixed.py (token-specific linear layers),
norms.py (token- and task-specific norms), embeddings.py (feature tables, numeric tokens),
activations.py, initializers.py, partitioning.py (logical axis names and sharding hints).
"""
