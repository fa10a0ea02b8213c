"""Pieces shared by the experiment files: the synthetic data, the paper's optimizer, the loop.

Each experiment file composes these with a model family's defaults (``defaults()`` in
``onetrans_jax/models/<family>/config.py``, the one place a model's fields are defined) and
overrides what it studies, so that every model in a comparison sees the same data, steps,
optimizer and seeds unless the file says otherwise.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder  # a typed None: still overridable by flag

from onetrans_jax.data import cache


def synthetic_data(**overrides) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.name = 'synthetic'
  d.seed = 0                      # the synthetic world; independent of the training seed
  d.num_users = 2000
  d.num_items = 4000
  d.num_categories = 24
  d.num_brands = 60
  d.latent_dim = 8
  d.num_candidates = 16           # C: candidates per request (padded)
  d.min_candidates = 8
  d.click_len = 64
  d.cart_len = 24
  d.order_len = 12
  d.num_train_requests = 1_000_000  # generated on demand by index (too big for cache_mb to keep)
  d.num_eval_requests = 4096      # the requests right after the training range
  d.batch_size = 64               # requests per step (x up to C candidates each)
  d.shuffle = False               # False: stream chronologically, as the paper trains
  d.validate = True               # check every batch against the schema (ids in range, ...)
  d.num_threads = 2
  d.worker_count = 0              # >0: grain worker processes generate batches
  d.cache_mb = cache.DEFAULT_MB   # keep built requests up to this many MB (data/cache.py; 0: off)
  d.history_fraction = 1.0        # < 1: the model reads the latest fraction of every history
  d.update(overrides)
  return d


def mechanism_data(**overrides) -> ml_collections.ConfigDict:
  """The mechanism world: the synthetic world with all five planted mechanisms, each meant for
  one OneTrans component of the SPEC A.10 ablations (documented in onetrans_jax/data/synthetic.py).
  Sized for a 2-CPU ablation study; ``python -m onetrans_jax.data.mechanisms`` prints its oracle
  AUCs."""
  d = synthetic_data(click_len=32, cart_len=12, order_len=8, num_candidates=8, min_candidates=4,
                     num_train_requests=200_000, num_eval_requests=4096)
  d.mechanisms = ('interplay', 'heterogeneous', 'cross_group', 'deep_match', 'recent_tail')
  d.mechanism_strength = 1.0      # multiplies every planted term (0: none; the histories and
                                  # candidates stay those of the mechanism world)
  d.update(overrides)
  return d


def paper_optimizer() -> ml_collections.ConfigDict:
  """SPEC A.8: Adagrad for embeddings, RMSProp for dense weights, global-norm clipping."""
  o = ml_collections.ConfigDict()
  o.clip_global_norm = 1.0
  o.sparse = ml_collections.ConfigDict(
      dict(name='adagrad', learning_rate=0.1, initial_accumulator_value=1.0,
           weight_decay=0.0))   # > 0: coupled L2 on every embedding row (optimizers.py)
  o.dense = ml_collections.ConfigDict(
      dict(name='rmsprop', learning_rate=0.005, decay=0.99999, initial_scale=0.0,
           bias_correction=True, weight_decay=0.0))
  return o


def base_config(model: ml_collections.ConfigDict, data: ml_collections.ConfigDict,
                total_steps: int = 1000) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data
  if 'valid_fraction' not in c.data:  # every dataset: onetrans_jax/data/pipeline.split_validation
    c.data.valid_fraction = 0.0   # > 0: the latest fraction of the training requests is held
                                  # out of training as a validation split (0: none)
  if 'history_fraction' not in c.data:   # every dataset: pipeline.shorten_histories
    c.data.history_fraction = 1.0  # < 1: the model reads only the latest fraction of every
                                   # behaviour sequence (the world is unchanged; RQ3's length axis)
  c.model = model
  c.optimizer = paper_optimizer()
  c.loss = ml_collections.ConfigDict()
  c.loss.task_weights = placeholder(tuple)  # None: 1 per task; or one weight per task
  c.loss.mode = 'conditional'     # or 'esmm': conditional tasks trained as pCTR * pCVR on all;
                                  # 'joint': unconditional labels on all impressions (OneRank's
                                  # task definition); 'onerank': joint BCE + InfoNCE (OneRank)
  c.loss.bce_weight = 1.0         # 'onerank': weight of the per-task BCE
  c.loss.nce_weight = 1.0         # 'onerank': weight of the list-wise InfoNCE (paper: 1:1)
  c.loss.listwise_weight = 0.0    # 'joint', any model: + this weight x a list-wise softmax term
                                  # on the task logits over each request's candidates (a ranking
                                  # objective for per-user metrics such as UAUC); 0: BCE only
  c.train = ml_collections.ConfigDict()
  c.train.total_steps = total_steps
  c.train.log_every = 100
  c.train.checkpoint_every = 500  # 0: only at the end
  c.train.keep_checkpoints = 2
  c.train.diagnostics_every = 0   # N > 0: every N steps log the tasks' gradient cosine on the
                                  # shared encoder and each task's loss variance (SPEC C.6)
  c.train.diagnostics_window = 20  # diagnostic samples in the loss-variance window
  c.train.eval_every = 0          # N > 0: score the validation split every N steps and at the
                                  # end; the best step's state is kept (best_checkpoint/) and the
                                  # hold-out is scored with it. Needs data.valid_fraction > 0
  c.train.early_stopping = ml_collections.ConfigDict()
  c.train.early_stopping.metric = placeholder(str)  # e.g. 'valid/click/auc' (None: no early
                                  # stopping; the best step is then the first task's valid AUC)
  c.train.early_stopping.mode = placeholder(str)    # 'max' | 'min'; None: the metric's own
  c.train.early_stopping.patience = 3   # evaluations without improvement before stopping
  c.train.early_stopping.min_delta = 0.0  # an improvement beats the best by more than this
  c.train.plot_curves = False     # True: the run ends by drawing <workdir>/learning_curves.png
                                  # (train loss, and the periodic evaluations' AUC per task)
  c.train.cpu_fused_dots = True   # CPU: XLA's YNNPACK dot fusions (onetrans_jax/xla_options.py),
                                  # measured 1.5x on the CPU bench step; False: XLA's default
  c.eval = ml_collections.ConfigDict()
  c.eval.mode = 'holdout'         # or 'next_batch' (the paper's protocol)
  c.eval.every_steps = 0          # hold-out: also evaluate every N steps (0: only at the end)
  c.eval.num_batches = -1         # -1: the whole evaluation range
  c.eval.day_steps = 250          # next_batch: steps per "day" of metrics
  # Device mesh (onetrans_jax/sharding.py): data x fsdp x tensor = all devices of all processes;
  # one size may be -1 (inferred). rules=None: sharding.DEFAULT_RULES (batch over data x fsdp,
  # embedding rows over the whole mesh, weights' embed over fsdp, heads / FFN units over tensor);
  # otherwise a tuple of (logical axis, mesh axis | tuple of mesh axes | None) pairs.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = placeholder(tuple)
  return c


def cpu_sized(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Settings of the CPU-sized OneTrans variants (``:small``); the paper shapes keep the paper's.

  The paper's dense lr 0.005 is tuned for batch 2048 x 16 GPUs; at batch 64 it is too hot.
  Measured on the default synthetic world, 400 steps, hold-out click AUC of onetrans_s:small:
  lr 0.001 -> 0.769, 0.002 -> 0.743; of a d=32, 2-layer variant: 0.001 -> 0.750, 0.002 -> 0.726,
  0.005 -> 0.671.
  """
  c.optimizer.dense.learning_rate = 0.001
  return c


def sweep(study: str, reference: str, variants: tuple, seeds: tuple[int, ...],
          tasks: tuple[tuple[str, str], ...], commit: bool = True,
          **options) -> ml_collections.ConfigDict:
  """A ``config.sweep`` section with every field (onetrans_jax/sweep.py), so each is overridable
  by flag (``--config.sweep.dry_run=True``, ``--config.sweep.seeds='(0,1)'``). ``commit``: write
  each finished run's record into ``results/<study>/runs/`` (relative to where launch.py runs),
  the folder a study's committed results live in; a record found there with the run's exact
  fingerprint is reused instead of training again."""
  s = ml_collections.ConfigDict()
  s.study = study
  s.reference = reference
  s.variants = variants
  s.seeds = seeds
  s.tasks = tasks
  s.relative = True               # False: every row absolute (the OneRank paper's layout)
  s.metric_labels = ('AUC', 'UAUC')
  s.results_dir = f'results/{study}/runs' if commit else ''
  s.dry_run = False               # True: print the plan and its time estimate, train nothing
  s.measure_steps = 0             # > 0: the plan times that many steps of each variant without
                                  # a finished run here, instead of estimating from FLOPs
  s.select = ''                   # tuning sweep: 'valid/<task>/<metric>' each family is chosen on
  s.only = ()                     # variant names: run only these, write records, no report
  s.shard = ''                    # 'i/n': only every n-th run from the i-th (one of n lanes);
                                  # records, no report
  s.claim = False                 # True: share the runs with the other processes on this
                                  # workdir, each taken as one comes free (--lanes); records,
                                  # no report
  s.bootstrap = 200               # one seed: resamples of the paired bootstrap over users (0: off)
  s.stability_check = ()          # (row, task): the report judges 'row trains task less stably'
  s.claims = ()                   # the papers' claims the report judges (onetrans_jax/claims.py)
  s.scaling = ()                  # RQ3: (variant, model, history fraction, depth, width) per
                                  # row; non-empty: the report adds scaling.py's slopes and plot
  s.scaling_base = ()             # the base point's (history fraction, depth, width)
  s.update(options)
  # A claim naming a row this variant of the study lacks (the :quick subsets, the tuning rows)
  # is left out rather than judged on nothing.
  names = {n for n, _ in variants}
  s.claims = tuple(c for c in s.claims if c[1] in names and all(o in names for o in c[3]))
  return s


def study_protocol(c: ml_collections.ConfigDict, *, valid_fraction: float, max_steps: int,
                   eval_every: int, patience: int = 4,
                   metric: str = 'valid/click/auc') -> ml_collections.ConfigDict:
  """Train to convergence, the same way for every row of a study: the latest ``valid_fraction`` of
  the training period is a validation split scored every ``eval_every`` steps, training stops
  after ``patience`` evaluations without a better ``metric`` (or at ``max_steps``), and the
  hold-out is scored with the best step's weights (onetrans_jax/train.py). The hold-out is never
  used to choose anything."""
  c.data.valid_fraction = valid_fraction
  c.train.total_steps = max_steps
  c.train.eval_every = eval_every
  c.train.log_every = eval_every
  # Every other evaluation: a study run lasts up to hours, and a session that is killed (no
  # SIGTERM, so no save on the way out) must lose at most two evaluations of it, not the run.
  # The evaluation state (best so far, patience) is in the checkpoint; not in fingerprints.
  c.train.checkpoint_every = 2 * eval_every
  c.train.early_stopping.metric = metric
  c.train.early_stopping.mode = 'max'
  c.train.early_stopping.patience = patience
  return c


def mechanism_study(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The mechanism world's study protocol (RQ1 and RQ2 on it): the world of ``mechanism_data``,
  a 4096-request validation split (2% of the 200K training requests) scored every 500 steps of
  64 requests, early stopping on validation click AUC with patience 4, at most 12000 steps (3.9
  epochs of the training range).

  Why 12000: OneTrans_S (seed 0, the paper's rates, sparse 0.1 / dense 0.001) is still learning
  at the first protocol's 3000-step cap. Its validation click AUC was 0.786 / 0.793 / 0.795 /
  0.805 / 0.813 / 0.813 / 0.818 at steps 2000 / 3000 / 4000 / 6000 / 8000 / 10000 / 12000
  (oracle 0.930 on the hold-out), never 4 evaluations without a better one. Other rates did not
  get there sooner (validation click AUC at step 1000, against 0.751): sparse 0.4 -> 0.598
  (dense 0.005) and 0.563 (dense 0.02); sparse 0.02 -> 0.716; dense 0.002 -> 0.619, 0.005 ->
  0.588 (sparse 0.02), 0.02 -> 0.578. So the rates stay the paper's and training runs longer."""
  c.data = mechanism_data(batch_size=c.data.batch_size)
  return study_protocol(c, valid_fraction=0.02048, max_steps=12000, eval_every=500, patience=4)


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``:quick`` variant of a sweep: 100 steps of 16 requests, a 512-request hold-out; it checks
  every row end to end, too short-trained to compare models."""
  c.train.total_steps = 100
  c.train.log_every = 50
  c.data.batch_size = 16
  c.data.num_eval_requests = 512
  return c
