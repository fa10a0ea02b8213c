r"""Default experiment: the plain encode-then-interact baseline on the embedded synthetic data.

Run (about 1-2 minutes on 2 CPU cores, no download):

  python launch.py                                   # this file is the default --config
  python launch.py --config experiments/default.py --workdir /tmp/otj_default
  python launch.py --config.train.total_steps=2000 --config.eval.mode=next_batch

Expected: hold-out click AUC around 0.78 against an oracle (Bayes-limit) AUC around 0.85, cart and
order AUC above 0.6, each logloss below the constant predictor's ("const logloss").

The synthetic world (onetrans_jax/data/synthetic.py) has 2000 users, 4000 items, 3 behaviour
sequences (click 64, cart 24, order 12 events), 17 non-sequential features, 8-16 candidates per
request and a click -> cart -> order funnel.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'
  c.data.seed = 0                      # the synthetic world; independent of the training seed
  c.data.num_users = 2000
  c.data.num_items = 4000
  c.data.num_categories = 24
  c.data.num_brands = 60
  c.data.latent_dim = 8
  c.data.num_candidates = 16           # C: candidates per request (padded)
  c.data.min_candidates = 8
  c.data.click_len = 64
  c.data.cart_len = 24
  c.data.order_len = 12
  c.data.num_train_requests = 1_000_000  # generated on demand by index, never held in memory
  c.data.num_eval_requests = 4096        # the requests right after the training range
  c.data.batch_size = 64               # requests per step (x up to C candidates each)
  c.data.shuffle = False               # False: stream chronologically, as the paper trains
  c.data.validate = True               # check every batch against the schema (ids in range, ...)
  c.data.num_threads = 2
  c.data.worker_count = 0              # >0: grain worker processes generate batches

  c.model = ml_collections.ConfigDict()
  c.model.name = 'pooled_mlp'
  c.model.embed_dim = 16
  c.model.hidden = (256, 128)
  c.model.activation = 'relu'
  c.model.dtype = 'float32'

  # SPEC A.8: Adagrad for embeddings, RMSProp for dense weights, global-norm clipping.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.clip_global_norm = 1.0
  c.optimizer.sparse = ml_collections.ConfigDict(
      dict(name='adagrad', learning_rate=0.1, initial_accumulator_value=1.0))
  c.optimizer.dense = ml_collections.ConfigDict(
      dict(name='rmsprop', learning_rate=0.005, decay=0.99999, initial_scale=0.0,
           bias_correction=True))

  c.loss = ml_collections.ConfigDict()
  c.loss.task_weights = None           # None: 1 per task; or a tuple, one weight per task

  c.train = ml_collections.ConfigDict()
  c.train.total_steps = 1000
  c.train.log_every = 100
  c.train.checkpoint_every = 500       # 0: only at the end
  c.train.keep_checkpoints = 2

  c.eval = ml_collections.ConfigDict()
  c.eval.mode = 'holdout'              # or 'next_batch' (the paper's protocol)
  c.eval.every_steps = 0               # hold-out: also evaluate every N steps (0: only at the end)
  c.eval.num_batches = -1              # -1: the whole evaluation range
  c.eval.day_steps = 250               # next_batch: steps per "day" of metrics

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                     # devices on the data axis; -1: all
  return c
