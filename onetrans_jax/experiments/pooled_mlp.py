r"""The plain encode-then-interact baseline (``pooled_mlp``) on the embedded synthetic data: the
default experiment before OneTrans became it, kept as the fast model of the tests and as a floor
for the synthetic world.

Run (about 1-2 minutes on 2 CPU cores, no download):

  python launch.py --config onetrans_jax/experiments/pooled_mlp.py --workdir /tmp/otj_pooled
  python launch.py --config onetrans_jax/experiments/pooled_mlp.py --config.eval.mode=next_batch

Expected (measured on 2 CPU cores, jax 0.10.2): hold-out click AUC 0.763 against an oracle
(Bayes-limit) AUC of 0.861, cart 0.731 (oracle 0.782), order 0.698 (oracle 0.740), each logloss
below the constant predictor's ("const logloss").

The synthetic world (onetrans_jax/data/synthetic.py) has 2000 users, 4000 items, 3 behaviour
sequences (click 64, cart 24, order 12 events), 17 non-sequential features, 8-16 candidates per
request and a click -> cart -> order funnel.
"""

import ml_collections

from onetrans_jax.experiments import common
from onetrans_jax.models.pooled_mlp import config as pooled_mlp_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return common.base_config(pooled_mlp_config.defaults(), common.synthetic_data(),
                            total_steps=1000)
