"""OneTrans's config: defaults, validation, builder, layout, analytic parameter and FLOP counts.

Everything a OneTrans run reads from ``config.model`` is defined here and only here. Experiment
files start from ``defaults()`` and override what they study; ``from_config`` fills any missing
field from the same defaults, so a builder can never disagree with an experiment file.

FLOPs are analytic matmul FLOPs (2 per multiply-add) of the reference per-candidate pass (SPEC
A.8, A.9); attention scores are counted over the full L' x L rectangle of each layer (no credit
for the causal triangle); elementwise work (norms, softmax, activations) is left out.
"""

from __future__ import annotations

import jax
import ml_collections
from ml_collections.config_dict import placeholder  # a typed None: still overridable by flag

from onetrans_jax.models import fields
from onetrans_jax.models.layers.activations import ACTIVATIONS
from onetrans_jax.models.layers.attention import IMPLEMENTATIONS
from onetrans_jax.models.layers.embeddings import check_row_multiple, table_params
from onetrans_jax.models.multitask import config as predictor_config
from onetrans_jax.models.onetrans import pyramid, tokenizer
from onetrans_jax.models.onetrans.model import REMAT_POLICIES, OneTrans
from onetrans_jax.schema import FeatureSchema

NAME = 'onetrans'
PARAM_SHARING = ('mixed', 'shared')
ATTENTION = ('causal', 'full')
NS_LAYOUTS = ('auto', 'token_last', 'token_first')   # config.model.ns_layout


def defaults(**overrides) -> ml_collections.ConfigDict:
  """OneTrans with every switch of the paper's ablation table (SPEC A.4, A.5, A.10), CPU-sized."""
  m = ml_collections.ConfigDict()
  m.name = NAME
  m.width = 64                    # d
  m.num_heads = 4
  m.num_layers = 3
  m.num_ns_tokens = 8             # L_NS
  m.embed_dim = 16                # feature embedding width before tokenization
  m.ffn_mult = 4
  m.activation = 'silu'           # or 'gelu', 'relu'
  m.ns_tokenizer = 'auto_split'   # or 'group_wise' (ablation)
  m.ns_groups = placeholder(tuple)  # group_wise: tuples of feature names; None: contiguous split
  m.ns_hidden = 0                 # auto_split MLP hidden width; 0: L_NS * d
  m.group_hidden = 0              # group_wise: each group MLP's hidden width; 0: d. Its own
                                  # field so the group-wise row is sized as the paper's (SPEC
                                  # A.10: 78M against Auto-Split's 91M), not at ns_hidden
  m.seq_merge = 'timestamp_aware'  # or 'timestamp_agnostic' (ablation)
  m.use_sep = placeholder(bool)  # agnostic: [SEP] between sequences (None: True); aware: unused
  m.agnostic_order = placeholder(tuple)  # agnostic: sequence order; None: schema order reversed
  m.time_gap_buckets = placeholder(int)  # log2 time-gap buckets added to S tokens; 0: off;
                                  # None: 16 when timestamp-aware, 0 when agnostic (the agnostic
                                  # rows carry no time signal; a positive value there is refused)
  m.s_position = 'from_recent'    # S slot position embedding counted from the most recent event,
                                  # or 'none'; 'none' + time_gap_buckets=0: appendable user cache
  m.param_sharing = 'mixed'       # or 'shared' (ablation: one weight set for all tokens)
  m.attention = 'causal'          # or 'full' (ablation)
  m.request_level = placeholder(bool)  # share the S side across a request's candidates (SPEC
                                       # A.6); None: on when causal. Exact either way
  m.pyramid = True                # False: no pyramid (ablation)
  m.pyramid_multiple = 32         # intermediate query counts rounded to this multiple
  m.pyramid_start = placeholder(int)  # layer 0's query count; None: the whole token list. The
                                  # paper's "1190 -> 12" read as 1190 layer-0 queries over a
                                  # longer input (~1670 tokens) gives its 3.06x saving (SPEC A.10)
  m.pyramid_schedule = placeholder(tuple)  # query counts per layer; None: linear schedule
  m.attention_impl = 'auto'       # 'blocked' on CPU, 'xla' elsewhere; or 'blocked' (cache-blocked,
                                  # skips masked blocks), 'xla', 'cudnn' (GPU flash, bf16)
  m.remat = 'none'                # or 'full', 'dots' (activation recomputation)
  m.ns_layout = 'auto'            # request-level candidate side: NS tokens held [R, C, N, d]
                                  # ('token_last'), or [N, R, C, d] ('token_first': the per-token
                                  # einsums need no transposes; 1.38x the mechanism-world step on
                                  # 2 CPU cores, benchmarks/ns_layout.py). 'auto': token_first on
                                  # CPU, token_last elsewhere (not measured on a GPU yet). The same
                                  # function either way (tests/test_request_level.py), so not part
                                  # of a run's fingerprint (records.NON_RESULT_FIELDS)
  m.dtype = 'float32'             # compute dtype; 'bfloat16' keeps float32 parameters
  m.embedding_row_multiple = 1    # embedding-table rows rounded up to a multiple of this, so the
                                  # row split over the mesh is even (e.g. 8 on 8 devices)
  # The multi-task predictor over the pooled NS tokens: 'towers' (one MLP per task, the default
  # head; head_hidden is its width, 0: d), or the OneRank paper's baselines 'shared_bottom',
  # 'mmoe', 'ple' with their sizes (models/multitask/config.py).
  m.update(predictor_config.defaults())
  m.update(overrides)
  return m


def _request_level(cfg: ml_collections.ConfigDict, attention: str) -> bool:
  """Request-level sharing of the S side (SPEC A.6): on by default, exact only when causal."""
  return fields.switch(cfg, 'request_level', attention == 'causal',
                       "config.model.attention='causal': under full attention the S tokens read "
                       "each candidate's NS tokens, so there is no per-request S side to share")


def layout(cfg: ml_collections.ConfigDict, schema: FeatureSchema
           ) -> tuple[int, int, tuple[int, ...]]:
  """(L_S, L_NS, pyramid schedule) of a OneTrans config: static Python ints."""
  cfg = fields.with_defaults(cfg, defaults())
  merge = fields.check('seq_merge', cfg.seq_merge, tokenizer.SEQ_MERGES)
  l_s = tokenizer.merged_length(schema, merge, fields.use_sep(cfg, merge))
  l_ns = fields.check('num_ns_tokens', cfg.num_ns_tokens, 'int')
  total = l_s + l_ns
  layers = fields.check('num_layers', cfg.num_layers, 'int')
  for f in ('pyramid_schedule', 'pyramid_start'):
    if cfg[f] is not None and not cfg.pyramid:
      raise fields.ModelConfigError(
          f'config.model.{f} is set but config.model.pyramid is False; drop it or enable the '
          'pyramid')
  if cfg.pyramid_schedule is not None:
    if cfg.pyramid_start is not None:
      raise fields.ModelConfigError(
          'config.model.pyramid_start and config.model.pyramid_schedule are both set; the '
          "schedule's first entry is layer 0's query count: drop one")
    sched = pyramid.check_schedule(cfg.pyramid_schedule, total, l_ns, layers)
  elif cfg.pyramid:
    start = cfg.pyramid_start
    if start is not None:
      start = fields.check('pyramid_start', start, 'int')
    sched = pyramid.linear_schedule(total, l_ns, layers, int(cfg.pyramid_multiple), start)
  else:
    sched = (total,) * layers  # the paper's "no pyramid" row: every layer at full length
  return l_s, l_ns, sched


def from_config(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> OneTrans:
  """``config.model`` -> OneTrans; every bad field raises a ModelConfigError naming it."""
  cfg = fields.with_defaults(cfg, defaults())
  for f in ('width', 'num_heads', 'num_layers', 'num_ns_tokens', 'embed_dim', 'ffn_mult'):
    fields.check(f, cfg[f], 'int')
  for f in ('ns_hidden', 'group_hidden', 'pyramid_multiple'):
    fields.check(f, cfg[f], 'int0')
  if cfg.width % cfg.num_heads:
    raise fields.error('num_heads', cfg.num_heads,
                       f'must divide config.model.width={cfg.width}')
  fields.check('activation', cfg.activation, ACTIVATIONS)
  ns_tok = fields.check('ns_tokenizer', cfg.ns_tokenizer, tokenizer.NS_TOKENIZERS)
  sharing = fields.check('param_sharing', cfg.param_sharing, PARAM_SHARING)
  attention = fields.check('attention', cfg.attention, ATTENTION)
  impl = fields.check('attention_impl', cfg.attention_impl, IMPLEMENTATIONS)
  remat = fields.check('remat', cfg.remat, REMAT_POLICIES)
  ns_layout = fields.check('ns_layout', cfg.get('ns_layout', 'auto'), NS_LAYOUTS)
  if ns_layout == 'auto':
    ns_layout = 'token_first' if jax.default_backend() == 'cpu' else 'token_last'
  s_position = fields.check('s_position', cfg.s_position, tokenizer.S_POSITIONS)
  fields.check('pyramid', cfg.pyramid, 'bool')
  dtype = fields.check('dtype', cfg.dtype, 'dtype')
  groups = cfg.ns_groups
  if groups is not None:
    if ns_tok != 'group_wise':
      raise fields.ModelConfigError("config.model.ns_groups is set but config.model.ns_tokenizer "
                                    "is not 'group_wise'")
    groups = tuple(tuple(g) for g in groups)
    tokenizer.check_groups(schema, groups, cfg.num_ns_tokens)
  elif ns_tok == 'group_wise':
    tokenizer.default_groups(schema, cfg.num_ns_tokens)  # raises if too few features
  if impl == 'cudnn' and jax.default_backend() != 'gpu':
    raise fields.error('attention_impl', impl, 'needs a GPU (this backend is '
                       f"{jax.default_backend()!r}); use 'auto'")
  _, l_ns, sched = layout(cfg, schema)
  predictor_config.from_config(cfg, schema.num_tasks)  # validates the predictor fields
  predictor = tuple((f, cfg[f]) for f in predictor_config.PREDICTOR_FIELDS)
  order = cfg.agnostic_order
  if order is not None:
    tokenizer.agnostic_order(schema, order)
  return OneTrans(
      schema, width=cfg.width, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
      num_ns_tokens=l_ns, schedule=sched, embed_dim=cfg.embed_dim, ffn_mult=cfg.ffn_mult,
      activation=cfg.activation, ns_tokenizer=ns_tok, ns_groups=groups,
      ns_hidden=int(cfg.ns_hidden), group_hidden=int(cfg.group_hidden), seq_merge=cfg.seq_merge,
      use_sep=fields.use_sep(cfg, cfg.seq_merge),
      seq_order=None if order is None else tuple(order),
      time_gap_buckets=fields.time_gap_buckets(cfg, cfg.seq_merge), s_position=s_position,
      shared_params=sharing == 'shared',
      causal=attention == 'causal', request_level=_request_level(cfg, attention),
      attention_impl=impl, remat=remat, ns_token_first=ns_layout == 'token_first',
      head_hidden=int(cfg.head_hidden), predictor=predictor, dtype=dtype,
      embedding_row_multiple=check_row_multiple(cfg.embedding_row_multiple))


# ---------------------------------------------------------------------------------- counts
def history_params(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> int:
  """Dense parameters of the tokenizer's S side (per-sequence MLPs, sequence-type or [SEP]
  tokens, slot positions, time-gap buckets); OneRank's history tokens have the same."""
  d, e, n_seq = cfg.width, cfg.embed_dim, len(schema.sequences)
  use_sep = fields.use_sep(cfg, cfg.seq_merge)
  out = sum((1 + len(seq.side_features)) * e * d + d + d * d + d for seq in schema.sequences)
  if cfg.seq_merge == 'timestamp_aware':
    out += n_seq * d                                     # sequence-type embeddings
  elif use_sep:
    out += (n_seq - 1) * d                               # [SEP] tokens
  if cfg.s_position == 'from_recent':
    out += tokenizer.merged_length(schema, cfg.seq_merge, use_sep) * d
  buckets = fields.time_gap_buckets(cfg, cfg.seq_merge)
  if buckets:
    out += (buckets + 1) * d
  return out


def param_count(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, int]:
  """Analytic dense parameters (the paper's "Params") and embedding-table parameters.

  A block keeps S weights only where its S side runs: every block's K/V projection and first
  norm read S tokens, the rest only if the block keeps S queries (the last pyramid layer keeps
  none); the "shared params" ablation has the S weight set alone.
  """
  cfg = fields.with_defaults(cfg, defaults())
  d, e, m, t = cfg.width, cfg.embed_dim, cfg.ffn_mult, schema.num_tasks
  _, l_ns, sched = layout(cfg, schema)
  dense = history_params(cfg, schema)
  n_req = len(schema.request_categorical) + len(schema.request_numeric)
  n_cand = len(schema.candidate_categorical) + len(schema.candidate_numeric)
  dense += 2 * (len(schema.request_numeric) + len(schema.candidate_numeric)) * e
  if cfg.ns_tokenizer == 'auto_split':
    hidden = cfg.ns_hidden or l_ns * d
    dense += n_req * e * hidden + hidden + n_cand * e * hidden + hidden * l_ns * d + l_ns * d
  else:
    groups = cfg.ns_groups or tokenizer.default_groups(schema, l_ns)
    width, hidden = max(len(g) for g in groups) * e, cfg.group_hidden or d
    dense += l_ns * (width * hidden + hidden + hidden * d + d)
  attention_side = d + 2 * d * d                         # first norm, K/V projection
  query_side = 2 * d * d + d + 2 * m * d * d             # Q, O, second norm, FFN
  for queries in sched:
    if cfg.param_sharing == 'shared':
      dense += attention_side + query_side
    else:
      dense += attention_side + (query_side if queries > l_ns else 0)
      dense += l_ns * (attention_side + query_side)
  dense += d + predictor_config.param_count(cfg, d, t)  # final norm, task head
  return {'dense': dense, 'sparse': table_params(schema, e, cfg.embedding_row_multiple)}


# ---------------------------------------------------------------------------------- FLOPs
def sequence_mlp_flops(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """The per-sequence 2-layer MLPs over every event (the S side of the tokenizer; OneRank's
  history tokens run the same MLPs)."""
  d, e = cfg.width, cfg.embed_dim
  return sum(2.0 * seq.max_len * ((1 + len(seq.side_features)) * e * d + d * d)
             for seq in schema.sequences)


def forward_flops(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, float]:
  """Analytic forward matmul FLOPs per candidate of a OneTrans config, by component."""
  cfg = fields.with_defaults(cfg, defaults())
  d, e, m = cfg.width, cfg.embed_dim, cfg.ffn_mult
  l_s, l_ns, sched = layout(cfg, schema)
  out = {'tokenizer': sequence_mlp_flops(cfg, schema), 'attention_proj': 0.0,
         'attention_scores': 0.0, 'ffn': 0.0, 'head': 0.0}
  n_feat = len(tokenizer.ns_feature_names(schema))
  if cfg.ns_tokenizer == 'auto_split':
    hidden = cfg.ns_hidden or l_ns * d
    out['tokenizer'] += 2.0 * (n_feat * e * hidden + hidden * l_ns * d)
  else:
    groups = cfg.ns_groups or tokenizer.default_groups(schema, l_ns)
    width = max(len(g) for g in groups) * e
    hidden = cfg.group_hidden or d
    out['tokenizer'] += 2.0 * l_ns * (width * hidden + hidden * d)
  keys = l_s + l_ns
  for queries in sched:
    out['attention_proj'] += 2.0 * (keys * d * 2 * d + queries * d * d * 2)  # K,V all; Q,O tail
    out['attention_scores'] += 2.0 * 2 * queries * keys * d                  # QK^T and AV
    out['ffn'] += 2.0 * queries * 2 * d * m * d
    keys = queries
  out['head'] = predictor_config.forward_flops(cfg, d, schema.num_tasks)
  out['total'] = sum(out.values())
  return out


def shared_forward_flops(cfg: ml_collections.ConfigDict,
                         schema: FeatureSchema) -> dict[str, float]:
  """Forward matmul FLOPs under request-level sharing (SPEC A.6), split by who pays them.

  'user': once per request (sequence MLPs; per layer the S keys/values, the kept S queries,
  their attention over S keys and their FFN; the request half of the auto-split layer);
  'candidate': per candidate (the rest of the NS tokenizer; per layer the NS projections, NS
  attention over the layer's S keys plus the NS keys, the NS FFN; the head). A request with C
  candidates costs user + C * candidate, against C * forward_flops()['total'].
  """
  cfg = fields.with_defaults(cfg, defaults())
  d, e, m = cfg.width, cfg.embed_dim, cfg.ffn_mult
  l_s, l_ns, sched = layout(cfg, schema)
  user = sequence_mlp_flops(cfg, schema)
  full = forward_flops(cfg, schema)
  if cfg.ns_tokenizer == 'auto_split':
    hidden = cfg.ns_hidden or l_ns * d
    n_req = len(schema.request_categorical) + len(schema.request_numeric)
    user += 2.0 * n_req * e * hidden
  cand = full['tokenizer'] - user + full['head']
  keys_s = l_s
  for queries in sched:
    q_s = queries - l_ns
    user += 2.0 * (keys_s * d * 2 * d + q_s * d * d * 2 + 2 * q_s * keys_s * d +
                   q_s * 2 * d * m * d)
    cand += 2.0 * (l_ns * d * 2 * d + l_ns * d * d * 2 + 2 * l_ns * (keys_s + l_ns) * d +
                   l_ns * 2 * d * m * d)
    keys_s = q_s
  return {'user': user, 'candidate': cand}


def training_flops_per_example(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """Training FLOPs per impression (3 x forward) of the reference per-candidate pass (the
  OneTrans paper's convention, whatever ``request_level`` is)."""
  return 3.0 * forward_flops(cfg, schema)['total']


def training_flops_per_request(cfg: ml_collections.ConfigDict, schema: FeatureSchema,
                               candidates: int, request_level: bool | None = None) -> float:
  """Training FLOPs (3 x forward) of one request of ``candidates`` candidates as the model runs
  it: under request-level sharing the S side once (``shared_forward_flops``), else the
  per-candidate pass ``candidates`` times. Sizing a run's time needs this, not the paper's
  per-impression convention, which overstates a shared request C-fold on its S side.
  ``request_level`` None: as ``cfg`` resolves it (what ``from_config`` builds); the speed
  suite passes its built model's."""
  if request_level is None:
    full = fields.with_defaults(cfg, defaults())
    request_level = _request_level(full, fields.check('attention', full.attention, ATTENTION))
  if request_level:
    f = shared_forward_flops(cfg, schema)
    return 3.0 * (f['user'] + candidates * f['candidate'])
  return candidates * training_flops_per_example(cfg, schema)
