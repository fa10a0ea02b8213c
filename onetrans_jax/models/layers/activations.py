"""The activation functions a config may name (FFNs, MLPs, towers), defined once."""

import flax.linen as nn

ACTIVATIONS = {'silu': nn.silu, 'gelu': nn.gelu, 'relu': nn.relu}
