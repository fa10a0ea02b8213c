r"""OneTrans_L (SPEC A.9): 8 layers, d=384, 6 heads [D], L_NS=16, pyramid 1500 -> 16.

  python launch.py --config onetrans_jax/experiments/onetrans_l.py:small  # CPU-sized
  python launch.py --config onetrans_jax/experiments/onetrans_l.py        # paper shapes, GPU / TPU

The paper's shapes take OneTrans_S's readings (onetrans_jax/experiments/onetrans_s.py): the same
1658-event input as OneTrans_S (the two models are trained on the same data), of which layer 0 keeps
the latest 1500 queries (``pyramid_start``), schedule (1500, 1280, 1088, 864, 640, 448, 224, 16);
FFN expansion 5; the auto-split width set so the model has the paper's 330M dense parameters. Its
training FLOPs are then 3.27x OneTrans_S's, the paper's 8.62 / 2.64 = 3.27x (the SPEC's [D]
readings, 1484 events at full length and FFN 4, give 3.43x).
"""

import ml_collections

from onetrans_jax.experiments import common
from onetrans_jax.models.onetrans import config as onetrans_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg == 'small':
    model = onetrans_config.defaults(width=96, num_heads=6, num_layers=4, num_ns_tokens=12,
                                     pyramid_multiple=8)
    c = common.base_config(model, common.synthetic_data(), total_steps=1000)
    return common.cpu_sized(c)
  if arg not in (None, '', 'paper'):
    raise ValueError(f'onetrans_jax/experiments/onetrans_l.py: unknown variant {arg!r}; '
                     'use :small or :paper')
  model = onetrans_config.defaults(width=384, num_heads=6, num_layers=8, num_ns_tokens=16,
                                   embed_dim=64, ffn_mult=5, ns_hidden=6784, pyramid_start=1500,
                                   pyramid_multiple=32, dtype='bfloat16')
  data = common.synthetic_data(click_len=1095, cart_len=394, order_len=169, batch_size=128,
                               num_candidates=16)
  return common.base_config(model, data, total_steps=10_000)
