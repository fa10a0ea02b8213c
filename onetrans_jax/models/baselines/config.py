"""The baselines' config: defaults, validation, builder, analytic parameter and FLOP counts
(SPEC A.10, A.11).

``model.name='baseline'`` with ``model.sequence`` and ``model.interaction``; each module's
hyperparameters sit in a sub-config of the same name (``model.din.hidden``,
``model.rankmixer.num_tokens`` ...). ``defaults(sequence, interaction)`` writes every field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from onetrans_jax.models import fields
from onetrans_jax.models.baselines import sequence_encoders as se
from onetrans_jax.models.baselines.model import (BaselineRanker, interaction_module,
                                                 num_feature_tokens, sequence_columns)
from onetrans_jax.models.layers.embeddings import table_params
from onetrans_jax.schema import FeatureSchema

NAME = 'baseline'
SEQUENCE_MODULES = ('din', 'stack_din', 'longer', 'transformer')
INTERACTIONS = ('dcnv2', 'wukong', 'hiformer', 'rankmixer')
# Each module's hyperparameters: (field, kind) with a kind of ``fields.check``.
SEQUENCE_FIELDS: dict[str, dict[str, Any]] = {
    'din': {'hidden': 'ints'},
    'stack_din': {'num_layers': 'int', 'hidden': 'ints'},
    'longer': {'width': 'int', 'num_heads': 'int', 'num_layers': 'int', 'merge': 'int',
               'num_recent': 'int0', 'ffn_mult': 'int'},
    'transformer': {'width': 'int', 'num_heads': 'int', 'num_layers': 'int', 'ffn_mult': 'int'},
}
INTERACTION_FIELDS: dict[str, dict[str, Any]] = {
    'dcnv2': {'num_cross_layers': 'int', 'structure': ('stacked', 'parallel'),
              'mlp_hidden': 'ints', 'rank': 'rank'},
    'wukong': {'num_layers': 'int', 'num_fm_tokens': 'int', 'num_lcb_tokens': 'int0',
               'fm_rank': 'rank', 'mlp_hidden': 'ints'},
    'hiformer': {'num_layers': 'int', 'num_heads': 'int', 'head_dim': 'int', 'rank': 'rank',
                 'ffn_mult': 'int'},
    'rankmixer': {'num_tokens': 'int', 'width': 'int', 'num_layers': 'int', 'ffn_mult': 'int'},
}



# [D] sizes, set so that the RankMixer rows land near OneTrans_S:small's dense parameters and
# DCNv2 + DIN well below, as in the paper's table.
_MODULE_DEFAULTS = {
    'din': dict(hidden=(64, 32)),
    'stack_din': dict(num_layers=2, hidden=(64, 32)),
    'longer': dict(width=64, num_heads=4, num_layers=2, merge=4, num_recent=8, ffn_mult=4),
    'transformer': dict(width=64, num_heads=4, num_layers=2, ffn_mult=4),
    'dcnv2': dict(num_cross_layers=3, structure='stacked', mlp_hidden=(256, 128),
                  rank=ml_collections.config_dict.placeholder(int)),
    'wukong': dict(num_layers=3, num_fm_tokens=16, num_lcb_tokens=16, fm_rank=8,
                   mlp_hidden=(512,)),
    'hiformer': dict(num_layers=2, num_heads=4, head_dim=16, rank=64, ffn_mult=4),
    'rankmixer': dict(num_tokens=8, width=128, num_layers=2, ffn_mult=4),
}


def defaults(sequence: str = 'din', interaction: str = 'dcnv2',
             **overrides) -> ml_collections.ConfigDict:
  """A CPU-sized baseline config with the two chosen modules' sub-configs."""
  m = ml_collections.ConfigDict()
  m.name = NAME
  m.sequence = sequence           # 'din', 'stack_din', 'longer', 'transformer'
  m.interaction = interaction     # 'dcnv2', 'wukong', 'hiformer', 'rankmixer'
  m.embed_dim = 16                # feature token width e
  m.head_hidden = 64              # task tower width
  m.dtype = 'float32'
  m.embedding_row_multiple = 1    # embedding-table rows rounded up to a multiple of this (1: as
                                  # the vocabulary), so the vocab axis splits evenly over a mesh
  m[sequence] = ml_collections.ConfigDict(_MODULE_DEFAULTS[sequence])
  m[interaction] = ml_collections.ConfigDict(_MODULE_DEFAULTS[interaction])
  m.update(overrides)
  return m


def _with_defaults(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Missing top-level fields from ``defaults()``; the modules' sub-configs are never filled in
  (a missing one is an error naming it, in ``from_config``)."""
  top = defaults(SEQUENCE_MODULES[0], INTERACTIONS[0])
  for kind in SEQUENCE_MODULES[:1] + INTERACTIONS[:1]:
    del top[kind]
  for kind in SEQUENCE_MODULES + INTERACTIONS:  # every module's sub-config is a known field
    if kind in cfg:
      top[kind] = ml_collections.ConfigDict()
  return fields.with_defaults(cfg, top)


def _module_options(cfg: ml_collections.ConfigDict, kind: str, kinds: Mapping[str, Any]
                    ) -> tuple[tuple[str, Any], ...]:
  sub = cfg.get(kind, None)
  if sub is None:
    raise fields.ModelConfigError(
        f'config.model.{kind} is missing: the {kind!r} module needs its hyperparameters '
        f'{sorted(kinds)} (models/baselines/config.defaults writes them all)')
  unknown = sorted(set(sub.keys()) - set(kinds))
  if unknown:
    raise fields.ModelConfigError(f'config.model.{kind} has unknown fields {unknown}; known: '
                                  f'{sorted(kinds)}')
  out = []
  for f, kind_f in kinds.items():
    if f not in sub:
      raise fields.ModelConfigError(f'config.model.{kind}.{f} is missing')
    out.append((f, fields.check(f'{kind}.{f}', sub[f], kind_f)))
  return tuple(out)


def from_config(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> BaselineRanker:
  """``config.model`` -> BaselineRanker; every bad field raises a ModelConfigError naming it."""
  cfg = _with_defaults(cfg)
  fields.check('sequence', cfg.sequence, SEQUENCE_MODULES)
  fields.check('interaction', cfg.interaction, INTERACTIONS)
  dtype = fields.check('dtype', cfg.dtype, 'dtype')
  e = fields.check('embed_dim', cfg.embed_dim, 'int')
  hid = fields.check('head_hidden', cfg.head_hidden, 'int')
  rows = fields.check('embedding_row_multiple', cfg.embedding_row_multiple, 'int')
  seq_opts = _module_options(cfg, cfg.sequence, SEQUENCE_FIELDS[cfg.sequence])
  int_opts = _module_options(cfg, cfg.interaction, INTERACTION_FIELDS[cfg.interaction])
  so, io = dict(seq_opts), dict(int_opts)
  if not schema.sequences:
    raise fields.error('sequence', cfg.sequence, 'the dataset has no behaviour sequence to '
                       'summarise')
  if cfg.sequence in ('din', 'stack_din'):
    for seq in schema.sequences:
      if sequence_columns(schema, seq)[0] is None:
        raise fields.error(
            'sequence', cfg.sequence,
            "target attention needs the candidate's item id, but no candidate categorical "
            f'feature uses the vocabulary {seq.item_vocab!r} of sequence {seq.name!r}; use a '
            "target-agnostic config.model.sequence='transformer' or add the feature")
  if cfg.sequence in ('longer', 'transformer'):
    w, kind = so['width'], cfg.sequence
    if w % e:
      raise fields.error(f'{kind}.width', w, f'must be a multiple of config.model.embed_dim={e}:'
                         ' its output is split into e-wide tokens')
    if w % so['num_heads']:
      raise fields.error(f'{kind}.num_heads', so['num_heads'],
                         f'must divide config.model.{kind}.width={w}')
  if cfg.interaction == 'rankmixer' and io['width'] % io['num_tokens']:
    raise fields.error('rankmixer.num_tokens', io['num_tokens'],
                       f'must divide config.model.rankmixer.width={io["width"]} (token mixing '
                       'splits each token into T heads)')
  return BaselineRanker(schema, cfg.sequence, cfg.interaction, e, seq_opts, int_opts, hid,
                        dtype, embedding_row_multiple=rows)


# ---------------------------------------------------------------------- parameters
def _mlp_params(widths: tuple[int, ...]) -> int:
  """A biased MLP through ``widths`` (input first)."""
  return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def _block_params(w: int, m: int) -> int:
  """A pre-norm Transformer block with biases and LayerNorms (Q, KV, O, two norms, FFN)."""
  return (4 + 2 * m) * w * w + (9 + m) * w


def _din_params(d: int, hidden: tuple[int, ...]) -> int:
  """DIN's activation unit: the MLP over [e, t, e - t, e * t] with PReLU slopes, a scalar out."""
  sizes = (4 * d,) + tuple(hidden)
  return sum(a * b + 2 * b for a, b in zip(sizes[:-1], sizes[1:])) + sizes[-1] + 1


def _sequence_params(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> int:
  """Every behaviour sequence's own module (its summary feeds the interaction as tokens)."""
  e, so = cfg.embed_dim, dict(cfg[cfg.sequence])
  u_width = (len(schema.request_categorical) + len(schema.request_numeric)) * e
  c_width = (len(schema.candidate_categorical) + len(schema.candidate_numeric)) * e
  total = 0
  for seq in schema.sequences:
    d_e = (1 + len(seq.side_features)) * e
    if cfg.sequence == 'din':
      total += _din_params(d_e, so['hidden'])
    elif cfg.sequence == 'stack_din':
      total += so['num_layers'] * _din_params(d_e, so['hidden']) + (so['num_layers'] - 1) * 2 * d_e
    elif cfg.sequence == 'longer':
      w, k, m = so['width'], so['merge'], so['ffn_mult']
      merged = -(-seq.max_len // k)
      total += (merged * k * d_e + _block_params(d_e, m)       # positions, InnerTrans
                + (k * d_e + 1) * w + (u_width + 1) * w + (c_width + 1) * w   # projections
                + so['num_layers'] * _block_params(w, m) + 2 * w)
    else:
      w = so['width']
      total += ((d_e + 1) * w + seq.max_len * w + 2 * w            # input, positions, norm
                + so['num_layers'] * _block_params(w, so['ffn_mult']))
  return total


def _interaction_params(kind: str, o: Mapping[str, Any], n: int, d: int) -> int:
  """The backbone over n tokens of width d (RankMixer: its T tokens of its own width)."""
  if kind == 'dcnv2':
    d0 = n * d
    cross = d0 * d0 + d0 if o['rank'] is None else 2 * d0 * o['rank'] + d0
    return o['num_cross_layers'] * cross + _mlp_params((d0,) + tuple(o['mlp_hidden']))
  if kind == 'wukong':
    total, n_out = 0, o['num_fm_tokens'] + o['num_lcb_tokens']
    for _ in range(o['num_layers']):
      low_rank = o['fm_rank'] is not None and o['fm_rank'] < n
      fm_width = n * (o['fm_rank'] if low_rank else n)
      total += (n * o['fm_rank'] if low_rank else 0) + 2 * fm_width     # projection, norm
      total += _mlp_params((fm_width,) + tuple(o['mlp_hidden']) + (o['num_fm_tokens'] * d,))
      total += o['num_lcb_tokens'] * n + (n_out * n if n_out != n else 0) + 2 * d
      n = n_out
    return total
  if kind == 'hiformer':
    t = 1                                    # interaction_module's one task token
    n, e, f = n + t, o['num_heads'] * o['head_dim'], o['ffn_mult'] * d
    total = t * d
    for i in range(o['num_layers']):
      rows = t if i == o['num_layers'] - 1 else n
      proj = (lambda r: n * d * r * e) if o['rank'] is None else (
          lambda r: n * d * o['rank'] + r * o['rank'] * e)
      total += proj(rows) + 2 * proj(n) + rows * e * d + 4 * d + rows * (2 * d * f + f + d)
    return total
  f = o['ffn_mult'] * d
  return o['num_layers'] * (4 * d + n * (2 * d * f + f + d))


def param_count(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, int]:
  """Analytic dense parameters and embedding-table parameters."""
  cfg = _with_defaults(cfg)
  e, io = cfg.embed_dim, dict(cfg[cfg.interaction])
  dense = 2 * (len(schema.request_numeric) + len(schema.candidate_numeric)) * e
  dense += _sequence_params(cfg, schema)
  n, width = num_feature_tokens(schema, cfg.sequence, dict(cfg[cfg.sequence]), e), e
  if cfg.interaction == 'rankmixer':
    t, width = io['num_tokens'], io['width']
    dense += t * (-(-n * e // t)) * width + t * width      # RankMixer's re-tokenization
    n = t
  dense += _interaction_params(cfg.interaction, io, n, width)
  d_out = interaction_module(cfg.interaction, io).output_width(n, width)
  hid = cfg.head_hidden
  dense += schema.num_tasks * (d_out * hid + 2 * hid + 1)   # towers
  return {'dense': dense, 'sparse': table_params(schema, e, cfg.embedding_row_multiple)}


# ---------------------------------------------------------------------- FLOPs
def forward_flops(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, float]:
  """Analytic forward matmul FLOPs by component: 'sequence' split into 'sequence_request' and
  'sequence_candidate', 'tokens' (RankMixer's re-tokenization), 'interaction', 'head'; 'total' is
  the reference per-candidate pass (request work counted whole for every candidate, the OneTrans
  paper's convention, as onetrans.config.forward_flops)."""
  cfg = _with_defaults(cfg)
  e = cfg.embed_dim
  so, io = dict(cfg[cfg.sequence]), dict(cfg[cfg.interaction])
  u_width = (len(schema.request_categorical) + len(schema.request_numeric)) * e
  c_width = (len(schema.candidate_categorical) + len(schema.candidate_numeric)) * e
  req = cand = 0.0
  for seq in schema.sequences:
    length, d_e = seq.max_len, (1 + len(seq.side_features)) * e
    if cfg.sequence == 'din':
      f = se.din_flops(length, d_e, tuple(so['hidden']))
    elif cfg.sequence == 'stack_din':
      f = se.stack_din_flops(so['num_layers'], length, d_e, tuple(so['hidden']))
    elif cfg.sequence == 'longer':
      f = se.longer_flops(length, d_e, c_width, u_width, so['width'], so['num_layers'],
                          so['merge'], min(so['num_recent'], -(-length // so['merge'])),
                          so['ffn_mult'])
    else:
      f = se.sequence_transformer_flops(length, d_e, so['width'], so['num_layers'],
                                        so['ffn_mult'])
    req += f['request']
    cand += f['candidate']
  n = num_feature_tokens(schema, cfg.sequence, so, e)
  out = {'sequence_request': req, 'sequence_candidate': cand, 'tokens': 0.0}
  if cfg.interaction == 'rankmixer':
    t, d = io['num_tokens'], io['width']
    out['tokens'] = 2.0 * t * (-(-n * e // t)) * d
    n, width = t, d
  else:
    width = e
  backbone = interaction_module(cfg.interaction, io)
  out['interaction'] = backbone.flops(n, width)
  d_out = backbone.output_width(n, width)
  hid = cfg.head_hidden
  out['head'] = 2.0 * schema.num_tasks * (d_out * hid + hid)
  out['total'] = sum(out.values())
  return out


def training_flops_per_example(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """Training FLOPs per impression (3 x forward) of the reference per-candidate pass."""
  return 3.0 * forward_flops(cfg, schema)['total']


def training_flops_per_request(cfg: ml_collections.ConfigDict, schema: FeatureSchema,
                               candidates: int) -> float:
  """Training FLOPs (3 x forward) of one request of ``candidates`` candidates as the model runs
  it: each sequence encoder's request part once (its output is broadcast over the candidates),
  the rest once per candidate. The benchmarks' MFU uses it; the studies' FLOP axes keep the
  per-impression convention (``training_flops_per_example``)."""
  f = forward_flops(cfg, schema)
  return 3.0 * (f['sequence_request'] + candidates * (f['total'] - f['sequence_request']))
