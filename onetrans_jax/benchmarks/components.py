"""Which model component an XLA op or a jaxpr equation belongs to, from its source path.

Shared by profile_step.py (an op's HLO metadata ``op_name``) and dots.py (a jaxpr equation's name
stack): both carry the module path of the model code and ``jvp(...)`` / ``transpose(...)`` for
the forward and backward passes; what has neither is outside ``value_and_grad`` (the optimizer).
"""

from __future__ import annotations

import re

# First match wins; matched against the op's metadata op_name (the module path of the source).
COMPONENTS = (
    ('attention', re.compile(r'attention|_attention_fwd|_attention_bwd|softmax')),
    ('ffn', re.compile(r'_ffn|ffn_in|ffn_out')),
    ('norms', re.compile(r'attn_norm|ffn_norm|final_norm')),
    ('projections', re.compile(r'/kv/|/q/|/out/|/qkv/|\._kv|\._q|\._heads|s_kv')),
    ('tokenizer', re.compile(r'tokenizer')),
    ('head', re.compile(r'towers|_logits')),
    # the encode-then-interact baselines: their feature interaction (DCNv2, RankMixer, ...) and
    # sequence encoders (DIN, the Transformer, ...) outside the attention / FFN matched above
    ('interaction', re.compile(r'/interaction/|_rankmixer_tokens')),
    ('sequence', re.compile(r'/seq_\w+/')),
    ('embeddings', re.compile(r'embeddings')),
)


def component(op_name: str) -> str:
  """The component of a source path: 'optimizer' outside the gradient, else the first match
  of COMPONENTS, else 'other' (the loss, layout copies, unnamed ops)."""
  if op_name and 'jvp(' not in op_name and 'transpose(' not in op_name:
    return 'optimizer'  # outside value_and_grad: clipping and the update
  for name, pattern in COMPONENTS:
    if pattern.search(op_name):
      return name
  return 'other'
