"""Pieces shared by the experiment files: the synthetic data, the paper's optimizer, the loop.

Each experiment file composes these and overrides what it studies, so that every model in a
comparison sees the same data, steps, optimizer and seeds unless the file says otherwise.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder  # a typed None: still overridable by flag

from onetrans_jax.models import multitask_heads
from onetrans_jax.models.baselines import baseline_model  # noqa: F401  (every baseline field)
from onetrans_jax.models.onerank import onerank_model  # noqa: F401  (every OneRank field)


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
  d.num_train_requests = 1_000_000  # generated on demand by index, never held in memory
  d.num_eval_requests = 4096      # the requests right after the training range
  d.batch_size = 64               # requests per step (x up to C candidates each)
  d.shuffle = False               # False: stream chronologically, as the paper trains
  d.validate = True               # check every batch against the schema (ids in range, ...)
  d.num_threads = 2
  d.worker_count = 0              # >0: grain worker processes generate batches
  d.update(overrides)
  return d


def paper_optimizer() -> ml_collections.ConfigDict:
  """SPEC A.8: Adagrad for embeddings, RMSProp for dense weights, global-norm clipping."""
  o = ml_collections.ConfigDict()
  o.clip_global_norm = 1.0
  o.sparse = ml_collections.ConfigDict(
      dict(name='adagrad', learning_rate=0.1, initial_accumulator_value=1.0))
  o.dense = ml_collections.ConfigDict(
      dict(name='rmsprop', learning_rate=0.005, decay=0.99999, initial_scale=0.0,
           bias_correction=True))
  return o


def base_config(model: ml_collections.ConfigDict, data: ml_collections.ConfigDict,
                total_steps: int = 1000) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data
  c.model = model
  c.optimizer = paper_optimizer()
  c.loss = ml_collections.ConfigDict()
  c.loss.task_weights = placeholder(tuple)  # None: 1 per task; or one weight per task
  c.loss.mode = 'conditional'     # or 'esmm': conditional tasks trained as pCTR * pCVR on all;
                                  # 'joint': unconditional labels on all impressions (OneRank's
                                  # task definition); 'onerank': joint BCE + InfoNCE (OneRank)
  c.loss.bce_weight = 1.0         # 'onerank': weight of the per-task BCE
  c.loss.nce_weight = 1.0         # 'onerank': weight of the list-wise InfoNCE (paper: 1:1)
  c.train = ml_collections.ConfigDict()
  c.train.total_steps = total_steps
  c.train.log_every = 100
  c.train.checkpoint_every = 500  # 0: only at the end
  c.train.keep_checkpoints = 2
  c.train.diagnostics_every = 0   # N > 0: every N steps log the tasks' gradient cosine on the
                                  # shared encoder and each task's loss variance (SPEC C.6)
  c.train.diagnostics_window = 20  # diagnostic samples in the loss-variance window
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


def onetrans_model(**overrides) -> ml_collections.ConfigDict:
  """OneTrans with every switch of the paper's ablation table (SPEC A.4, A.5, A.10)."""
  m = ml_collections.ConfigDict()
  m.name = 'onetrans'
  m.width = 64                    # d
  m.num_heads = 4
  m.num_layers = 3
  m.num_ns_tokens = 8             # L_NS
  m.embed_dim = 16                # feature embedding width before tokenization
  m.ffn_mult = 4
  m.activation = 'silu'           # or 'gelu', 'relu'
  m.ns_tokenizer = 'auto_split'   # or 'group_wise' (ablation)
  m.ns_groups = placeholder(tuple)  # group_wise: tuples of feature names; None: contiguous split
  m.ns_hidden = 0                 # auto_split MLP hidden width / group MLP width; 0: default
  m.seq_merge = 'timestamp_aware'  # or 'timestamp_agnostic' (ablation)
  m.use_sep = placeholder(bool)  # agnostic: [SEP] between sequences (None: True); aware: unused
  m.agnostic_order = placeholder(tuple)  # agnostic: sequence order; None: schema order reversed
  m.time_gap_buckets = 16         # log2 time-gap buckets added to S tokens; 0: off
  m.s_position = 'from_recent'    # S slot position embedding counted from the most recent event,
                                  # or 'none'; 'none' + time_gap_buckets=0: appendable user cache
  m.param_sharing = 'mixed'       # or 'shared' (ablation: one weight set for all tokens)
  m.attention = 'causal'          # or 'full' (ablation)
  m.request_level = placeholder(bool)  # share the S side across a request's candidates (SPEC
                                       # A.6); None: on when causal. Exact either way
  m.pyramid = True                # False: no pyramid (ablation)
  m.pyramid_multiple = 32         # intermediate query counts rounded to this multiple
  m.pyramid_schedule = placeholder(tuple)  # query counts per layer; None: linear schedule
  m.attention_impl = 'auto'       # 'blocked' on CPU, 'xla' elsewhere; or 'blocked' (cache-blocked,
                                  # skips masked blocks), 'xla', 'cudnn' (GPU flash, bf16)
  m.remat = 'none'                # or 'full', 'dots' (activation recomputation)
  m.head_hidden = 0               # task tower width; 0: d
  m.dtype = 'float32'             # compute dtype; 'bfloat16' keeps float32 parameters
  m.embedding_row_multiple = 1    # embedding-table rows rounded up to a multiple of this, so the
                                  # row split over the mesh is even (e.g. 8 on 8 devices)
  # The multi-task predictor over the pooled NS tokens: 'towers' (one MLP per task, the default
  # head), or the OneRank paper's baselines 'shared_bottom', 'mmoe', 'ple' with their sizes.
  m.update({k: v for k, v in multitask_heads.predictor_defaults().items() if k != 'head_hidden'})
  m.update(overrides)
  return m


def cpu_sized(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Settings of the CPU-sized OneTrans variants (``:small``); the paper shapes keep the paper's.

  The paper's dense lr 0.005 is tuned for batch 2048 x 16 GPUs; at batch 64 it is too hot.
  Measured on the default synthetic world, 400 steps, hold-out click AUC of onetrans_s:small:
  lr 0.001 -> 0.769, 0.002 -> 0.743; of a d=32, 2-layer variant: 0.001 -> 0.750, 0.002 -> 0.726,
  0.005 -> 0.671.
  """
  c.optimizer.dense.learning_rate = 0.001
  return c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``:quick`` variant of a sweep: 100 steps of 16 requests, a 512-request hold-out; it checks
  every row end to end, too short-trained to compare models."""
  c.train.total_steps = 100
  c.train.log_every = 50
  c.data.batch_size = 16
  c.data.num_eval_requests = 512
  return c
