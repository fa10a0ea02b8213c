r"""OneTrans_S (SPEC A.9): 6 layers, d=256, 4 heads, L_NS=12, pyramid 1190 -> 12.

  python launch.py --config experiments/onetrans_s.py:small     # CPU-sized (~10 min on 2 cores)
  python launch.py --config experiments/onetrans_s.py           # the paper's shapes (accelerator)

The paper shape merges click/cart/order sequences of 778 + 280 + 120 = 1178 events with the 12 NS
tokens into the 1190-token list of the paper's schedule (1190, 960, 704, 480, 256, 12).
``small`` keeps every mechanism at CPU size: d=64, 3 layers, L_NS=8, 100 S tokens, pyramid to 8.
"""

import ml_collections

from experiments import common
from onetrans_jax.models.onetrans import config as onetrans_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg == 'small':
    # The family's defaults are this CPU size (d=64, 4 heads, 3 layers, L_NS=8, e=16); the
    # pyramid's intermediate counts round to multiples of 8 at this length.
    model = onetrans_config.defaults(pyramid_multiple=8)
    data = common.synthetic_data()
    c = common.base_config(model, data, total_steps=1000)
    return common.cpu_sized(c)
  if arg not in (None, '', 'paper'):
    raise ValueError(f'experiments/onetrans_s.py: unknown variant {arg!r}; use :small or :paper')
  model = onetrans_config.defaults(width=256, num_layers=6, num_ns_tokens=12, embed_dim=64,
                                   ns_hidden=4096, pyramid_multiple=32, dtype='bfloat16')
  data = common.synthetic_data(click_len=778, cart_len=280, order_len=120, batch_size=128,
                               num_candidates=16)
  return common.base_config(model, data, total_steps=10_000)
