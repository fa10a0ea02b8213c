r"""OneTrans_L (SPEC A.9): 8 layers, d=384, 6 heads [D], L_NS=16, pyramid 1500 -> 16.

  python launch.py --config experiments/onetrans_l.py:small     # CPU-sized
  python launch.py --config experiments/onetrans_l.py           # the paper's shapes (accelerator)

Sequences of 984 + 350 + 150 = 1484 events plus 16 NS tokens give the 1500-token list of the
schedule (1500, 1280, 1088, 864, 640, 448, 224, 16).
"""

import ml_collections

from experiments import common
from onetrans_jax.models.onetrans import config as onetrans_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg == 'small':
    model = onetrans_config.defaults(width=96, num_heads=6, num_layers=4, num_ns_tokens=12,
                                     pyramid_multiple=8)
    c = common.base_config(model, common.synthetic_data(), total_steps=1000)
    return common.cpu_sized(c)
  if arg not in (None, '', 'paper'):
    raise ValueError(f'experiments/onetrans_l.py: unknown variant {arg!r}; use :small or :paper')
  model = onetrans_config.defaults(width=384, num_heads=6, num_layers=8, num_ns_tokens=16,
                                   embed_dim=64, ns_hidden=6144, pyramid_multiple=32,
                                   dtype='bfloat16')
  data = common.synthetic_data(click_len=984, cart_len=350, order_len=150, batch_size=128,
                               num_candidates=16)
  return common.base_config(model, data, total_steps=10_000)
