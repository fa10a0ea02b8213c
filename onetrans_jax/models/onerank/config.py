"""OneRank's config: defaults, validation, builder, analytic parameter and FLOP counts (SPEC
B.3-B.6, C.6).

Everything a OneRank run reads from ``config.model`` is defined here and only here;
``from_config`` fills any missing field from ``defaults()``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder  # a typed None: still overridable by flag

from onetrans_jax.models import fields
from onetrans_jax.models.onerank.model import SCORINGS, TASK_TOKENS, OneRank
from onetrans_jax.models.onerank.task_channels import SITUATIONS, TASK_MASKS, task_mask_matrix
from onetrans_jax.models.onetrans import tokenizer
from onetrans_jax.models.layers.embeddings import table_params
from onetrans_jax.models.onetrans.config import history_params, sequence_mlp_flops
from onetrans_jax.schema import FeatureSchema

NAME = 'onerank'
BIAS_INITS = ('zero', 'base_rate')


def defaults(**overrides) -> ml_collections.ConfigDict:
  """OneRank with every switch of the paper's ablations (SPEC B.3-B.6, C.6)."""
  m = ml_collections.ConfigDict()
  m.name = NAME
  m.width = 128                   # d (SPEC B.7 [D]: d=128)
  m.num_heads = 4                 # heads of the encoder, situation and cross-task attention
  m.num_layers = 3                # encoder blocks (SPEC B.7 [D]: 2-4)
  m.ffn_mult = 4                  # FFN expansion (encoder and cross-task FFN)
  m.embed_dim = 16                # feature embedding width before the projections to d
  m.seq_merge = 'timestamp_aware'  # history merge (onetrans/tokenizer.py); or 'timestamp_agnostic'
  m.use_sep = placeholder(bool)   # agnostic: [SEP] between sequences (None: True); aware: unused
  m.agnostic_order = placeholder(tuple)  # agnostic: sequence order; None: schema order reversed
  m.time_gap_buckets = placeholder(int)  # [D] log2 time-gap buckets on history tokens, as
                                  # OneTrans's default so both read the same history tokens: None
                                  # is 16 when timestamp-aware, 0 when agnostic; 0: off
  m.s_position = 'from_recent'    # history position embedding counted from the most recent, or
                                  # 'none'
  m.task_tokens = 'per_task'      # K task tokens, or 'shared' (ablation: one token for all tasks)
  m.candidate_in_task_tokens = False  # deviation, off = the paper (B.3: a task token's content
                                  # is the same for every candidate, only the mask makes it
                                  # candidate-specific). True: t_k of group i starts as t_k + c_i,
                                  # so r_k^i carries the candidate from layer 0 on instead of
                                  # through one attention key among the prefix's (model.py)
  m.candidate_reads_context = False  # deviation, off = the paper (B.2: c_i from the candidate's
                                  # features only). True: c_i's Dense -> SiLU -> Dense also reads
                                  # the request's raw contextual features (the situation input
                                  # s), as OneTrans's non-sequential tokens mix user and item
  m.request_bias = False          # deviation, off = the paper (B.6: s = z_k . r_k^i / sqrt(d) +
                                  # b_k). True ('matching' only): + u_k . z_k, a learned
                                  # request-level offset per task (u_k zero at step 0)
  m.scoring = 'matching'          # z_k . r_k^i matching (the paper's inner product), or 'mlp'
                                  # (ablation: a per-task MLP on [z_k ; r_k^i])
  m.situation = 'attention'       # per-task MHCA over the candidates; ablations: 'mean' (uniform
                                  # weights, projections kept), 'constant_query' (learned query,
                                  # context unused), 'off' (a learned vector per task)
  m.cross_task = True             # False (ablation): no cross-task interaction, z_k = h_k
  m.task_mask = 'cascade'         # A[k][j] iff j <= k; or 'parallel', 'full', 'hybrid'
  m.task_edges = ()               # hybrid: ((reader, read), ...) task names added to the identity
  m.detach = True                 # cross-task gradient detachment (False: ablation)
  m.detach_kv_weights = False     # also no K/V weight gradient through off-diagonal reads
  m.head_hidden = 0               # scoring='mlp': tower width; 0: d
  # Chosen on the mechanism world's validation split (results/onerank_knob_probes: the
  # :mechanisms OneRank row, seed 0, 2000 steps; validation C / A / O-AUC at step 2000). From
  # zero biases, 1/tau = 1 and InfoNCE weight 1 (0.7596 / 0.8213 / 0.8298):
  #   1/tau 3 -> 0.7707 / 0.8347 / 0.8362 (the best of 1, 3, 6, 14.3; 6 -> 0.7343 / 0.8023 /
  #   0.8111; 14.3, i.e. tau 0.07 -> 0.6406 / 0.6992 / 0.7085);
  #   base-rate biases -> 0.7488 / 0.7914 / 0.8066 (worse at steps 1000 and 2000: kept at zero).
  m.task_bias_init = 'zero'       # b_k at step 0: 'zero', or 'base_rate': logit of task k's
                                  # positive rate over the training data's real candidates
  m.inv_temperature_init = 3.0    # InfoNCE 1/tau at step 0 ([D] the paper leaves tau open)
  m.learn_temperature = True      # False: 1/tau fixed at inv_temperature_init
  m.request_level = True          # False: explicit-mask reference layout (same numbers, slower)
  m.embedding_row_multiple = 1    # embedding-table rows rounded up to a multiple of this (1: as
                                  # the vocabulary), so the vocab axis splits evenly over a mesh
  m.dtype = 'float32'             # compute dtype; 'bfloat16' keeps float32 parameters
  m.update(overrides)
  return m


def from_config(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> OneRank:
  """``config.model`` -> OneRank; every bad field raises a ModelConfigError naming it."""
  cfg = fields.with_defaults(cfg, defaults())
  for f in ('width', 'num_heads', 'num_layers', 'embed_dim', 'ffn_mult',
            'embedding_row_multiple'):
    fields.check(f, cfg[f], 'int')
  fields.check('head_hidden', cfg.head_hidden, 'int0')
  if cfg.width % cfg.num_heads:
    raise fields.error('num_heads', cfg.num_heads, f'must divide config.model.width={cfg.width}')
  task_tokens = fields.check('task_tokens', cfg.task_tokens, TASK_TOKENS)
  scoring = fields.check('scoring', cfg.scoring, SCORINGS)
  situation = fields.check('situation', cfg.situation, SITUATIONS)
  mask = fields.check('task_mask', cfg.task_mask, TASK_MASKS)
  merge = fields.check('seq_merge', cfg.seq_merge, tokenizer.SEQ_MERGES)
  s_position = fields.check('s_position', cfg.s_position, tokenizer.S_POSITIONS)
  dtype = fields.check('dtype', cfg.dtype, 'dtype')
  flags = {f: fields.check(f, cfg[f], 'bool')
           for f in ('cross_task', 'detach', 'detach_kv_weights', 'request_level',
                     'learn_temperature', 'candidate_in_task_tokens',
                     'candidate_reads_context', 'request_bias')}
  fields.check('task_bias_init', cfg.task_bias_init, BIAS_INITS)
  if flags['candidate_reads_context'] and not (schema.request_categorical or
                                               schema.request_numeric):
    raise fields.error('candidate_reads_context', True, 'needs request features to read, and '
                       'this data set has none; set it False')
  if flags['request_bias'] and scoring != 'matching':
    raise fields.error('request_bias', True, f"needs config.model.scoring='matching' (got "
                       f"{scoring!r}: the 'mlp' towers read z_k themselves); set it False")
  inv_t = cfg.inv_temperature_init
  if isinstance(inv_t, bool) or not isinstance(inv_t, (int, float)) or not 0 < inv_t < 1e4:
    raise fields.error('inv_temperature_init', inv_t, 'must be a number in (0, 1e4): 1/tau at '
                       'step 0 (1: tau = 1; about 14: tau = 0.07)')
  edges = cfg.task_edges or ()
  try:
    edges = tuple(tuple(str(n) for n in e) for e in edges)
  except TypeError as err:
    raise fields.error('task_edges', edges, 'must be a tuple of (reader, read) task-name '
                       'pairs') from err
  try:
    task_mask_matrix(mask, schema.task_names, edges, 'config.model.')
  except ValueError as err:
    raise fields.ModelConfigError(str(err)) from err
  use_sep = fields.use_sep(cfg, merge)
  order = cfg.agnostic_order
  if order is not None:
    tokenizer.agnostic_order(schema, order)  # raises a ConfigError naming the field
    order = tuple(order)
  return OneRank(
      schema, width=cfg.width, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
      ffn_mult=cfg.ffn_mult, embed_dim=cfg.embed_dim, seq_merge=merge, use_sep=use_sep,
      seq_order=order, time_gap_buckets=fields.time_gap_buckets(cfg, merge),
      s_position=s_position, task_tokens=task_tokens, scoring=scoring, situation=situation,
      task_mask=mask, task_edges=edges, head_hidden=int(cfg.head_hidden),
      inv_temperature_init=float(inv_t),
      embedding_row_multiple=int(cfg.embedding_row_multiple), dtype=dtype, **flags)


def param_count(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, int]:
  """Analytic dense parameters and embedding-table parameters."""
  cfg = fields.with_defaults(cfg, defaults())
  d, e, m, k = cfg.width, cfg.embed_dim, cfg.ffn_mult, schema.num_tasks
  n_rc, n_rn = len(schema.request_categorical), len(schema.request_numeric)
  n_cc, n_cn = len(schema.candidate_categorical), len(schema.candidate_numeric)
  dense = history_params(cfg, schema) if schema.sequences else 0
  dense += n_rc * (e * d + d) + 2 * n_rn * d + 2 * n_cn * e   # contextual and numeric tokens
  cand_in = (n_cc + n_cn) * e + (n_rc * e + n_rn if cfg.candidate_reads_context else 0)
  dense += cand_in * d + d + d * d + d                         # candidate token MLP
  dense += (k if cfg.task_tokens == 'per_task' else 1) * d     # task tokens
  dense += cfg.num_layers * (2 * d + 4 * d * d + 2 * m * d * d) + d   # blocks, final norm
  if cfg.situation == 'off':
    dense += k * d                                             # the task vectors
  elif cfg.situation == 'mean':
    dense += 2 * k * d * d                                     # value and output projections
  elif cfg.situation == 'constant_query':
    dense += k * d + 4 * k * d * d
  else:
    d_s = n_rc * e + n_rn                                      # f_k's input, the raw context
    dense += k * d + k * d_s * d + 2 * k * d + 4 * k * d * d
  if cfg.cross_task:
    dense += 4 * d * d + 4 * k * d + 2 * k * m * d * d
  if cfg.scoring == 'mlp':
    hid = cfg.head_hidden or d
    dense += k * (2 * d * hid + 2 * hid + 1)
  else:
    dense += k                                                 # task biases
    dense += k * d if cfg.request_bias else 0                  # u_k of the request offset
  dense += 1 if cfg.learn_temperature else 0                   # the InfoNCE temperature
  return {'dense': dense, 'sparse': table_params(schema, e, cfg.embedding_row_multiple)}


def forward_flops(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, float]:
  """Forward matmul FLOPs of OneRank (SPEC B.3-B.6), split into 'request' and 'candidate' work.

  OneRank has no per-candidate pass to count: its candidates share the prefix by construction
  (the mask makes the prefix blind to them). 'request': the history MLPs, the contextual-token
  maps, every layer's prefix (projections, causal scores over the full P x P rectangle, FFN) and
  the task channels' per-request work; 'candidate': the candidate token MLP, every layer's group
  of 1 + K' tokens (projections, scores against P + G keys, FFN) and the scoring.
  """
  cfg = fields.with_defaults(cfg, defaults())
  d, e, m, k = cfg.width, cfg.embed_dim, cfg.ffn_mult, schema.num_tasks
  merge = cfg.seq_merge
  n_ctx = len(schema.request_categorical) + len(schema.request_numeric)
  p = n_ctx + tokenizer.merged_length(schema, merge, fields.use_sep(cfg, merge))
  g = 1 + (k if cfg.task_tokens == 'per_task' else 1)
  request = sequence_mlp_flops(cfg, schema) + 2.0 * len(schema.request_categorical) * e * d
  cand_in = (len(schema.candidate_categorical) + len(schema.candidate_numeric)) * e
  if cfg.candidate_reads_context:
    cand_in += len(schema.request_categorical) * e + len(schema.request_numeric)
  candidate = 2.0 * (cand_in * d + d * d)
  per_token = 2.0 * (4 * d * d + 2 * m * d * d)          # Q, K, V, O and the FFN
  request += cfg.num_layers * (p * per_token + 2.0 * 2 * p * p * d)
  candidate += cfg.num_layers * (g * per_token + 2.0 * 2 * g * (p + g) * d)
  if cfg.situation == 'mean':
    request += 2.0 * 2 * k * d * d                        # W_v, W_o on the mean
  elif cfg.situation != 'off':
    d_s = len(schema.request_categorical) * e + len(schema.request_numeric)
    request += 2.0 * k * (d_s * d if cfg.situation == 'attention' else 0) + 2.0 * 2 * k * d * d
    candidate += 2.0 * (2 * k * d * d + 2 * k * d)      # keys, values; scores and weighted sum
  if cfg.cross_task:
    kv = 4 if (cfg.detach or cfg.detach_kv_weights) else 2
    request += 2.0 * ((2 + kv) * k * d * d + 2 * k * k * d + 2 * k * m * d * d)
  if cfg.scoring == 'mlp':
    hid = cfg.head_hidden or d
    request += 2.0 * k * d * hid                          # the z half of the first layer
    candidate += 2.0 * k * (d * hid + hid)                # the r half, then the output
  else:
    candidate += 2.0 * k * d                              # z_k . r_k^i
    request += 2.0 * k * d if cfg.request_bias else 0.0   # u_k . z_k
  # candidate_in_task_tokens adds c_i to K' task tokens: additions, no matmul FLOPs.
  return {'request': request, 'candidate': candidate}


def training_flops_per_example(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """Training FLOPs per impression (3 x forward): the per-request work spread over the schema's
  C candidate slots (OneRank's prefix is shared by construction)."""
  f = forward_flops(cfg, schema)
  return 3.0 * (f['request'] / schema.num_candidates + f['candidate'])


def data_init(cfg: ml_collections.ConfigDict, params: dict, task_rates: Callable[[], np.ndarray]
              ) -> dict:
  """Initial parameters that depend on the training data: under ``task_bias_init='base_rate'``
  each task's output bias (``task_bias``, or the 'mlp' head's ``tower_b2``) is the logit of its
  positive rate, so step 0 predicts the base rate rather than 0.5 and the early gradient goes to
  ranking rather than to calibrating the intercept. ``task_rates()`` -> [K] unconditional rates
  over the real candidates (called only when needed). Any other setting returns ``params``."""
  cfg = fields.with_defaults(cfg, defaults())
  if cfg.task_bias_init != 'base_rate':
    return params
  rates = np.clip(np.asarray(task_rates(), np.float64), 1e-4, 1 - 1e-4)
  name = 'task_bias' if cfg.scoring == 'matching' else 'tower_b2'
  if params[name].shape != rates.shape:
    raise ValueError(f'{len(rates)} task rates for the {params[name].shape} {name}')
  out = dict(params)
  out[name] = jnp.asarray(np.log(rates / (1 - rates)), params[name].dtype)
  return out
