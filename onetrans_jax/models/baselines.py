"""The OneTrans paper's baselines (SPEC A.10, A.11): encode-then-interact rankers, one template.

Every baseline of the paper's comparison table is a sequence module + a feature-interaction
backbone + per-task towers over the shared feature schema and batch contract:

  1. Feature tokens, all of width e (``embed_dim``), [R, C, N, e]: every request and candidate
     categorical embedding and every numeric feature (x * w + b) is a token, and each behaviour
     sequence adds the tokens of its summary (below). The request tokens are computed once per
     request and broadcast over its candidates.
  2. Sequence summaries (sequence_encoders.py), one module per behaviour sequence [D]:
       'din', 'stack_din'  target attention: the target e_t is the candidate's embeddings in the
                           sequence's own columns (its item id, then each side feature, matched by
                           vocabulary; a side column the candidate lacks is a zero slot [D]); the
                           summary [(1+S) e] is split back into its 1+S column tokens;
       'longer'            LONGER with the target (candidate tokens) and user (request tokens)
                           global tokens; its [width] output is width / e tokens;
       'transformer'       a target-agnostic encoder whose P pooled states [P, width] are
                           P * width / e extra tokens ("RankMixer + Transformer").
  3. Feature interaction (feature_interaction.py) over the tokens: 'dcnv2' and 'wukong' and
     'hiformer' read the N e-wide tokens as they are; 'rankmixer' first re-tokenizes them the
     RankMixer way (Zhu et al. 2025, Sec. 3.2: the feature vector concatenated, split into T
     equal chunks, each chunk projected to width d by its own weights, one einsum).
  4. ``TaskTowers`` (one MLP per task) on the backbone's output -> logits [R, C, T].

``model.name='baseline'`` with ``model.sequence`` and ``model.interaction``; each module's
hyperparameters sit in a sub-config of the same name (``model.din.hidden``, ``model.rankmixer.
num_tokens`` ...; experiments/common.baseline_model has every field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from onetrans_jax.errors import ConfigError
from onetrans_jax.models import feature_interaction as fi
from onetrans_jax.models import partitioning as lp
from onetrans_jax.models import sequence_encoders as se
from onetrans_jax.models.embeddings import EMBEDDINGS, FeatureEmbeddings, NumericEmbedding
from onetrans_jax.models.heads import TaskTowers
from onetrans_jax.schema import FeatureSchema, SequenceFeature

SEQUENCE_MODULES = ('din', 'stack_din', 'longer', 'transformer')
INTERACTIONS = ('dcnv2', 'wukong', 'hiformer', 'rankmixer')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# Each module's hyperparameters: (field, kind) with kind 'int' (>= 1), 'int0' (>= 0), 'ints'
# (a tuple of positive widths), 'rank' (None or >= 1), or a tuple of allowed values.
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


def sequence_columns(schema: FeatureSchema, seq: SequenceFeature) -> list[int | None]:
  """For each column of ``seq`` (item id, then side features) the index of the candidate
  categorical feature in the same vocabulary (the first one), or None when the candidate has none.
  """
  cand = [f.vocab for f in schema.candidate_categorical]
  vocabs = [seq.item_vocab] + [v for _, v in seq.side_features]
  return [cand.index(v) if v in cand else None for v in vocabs]


def _options(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
  return dict(pairs)


def interaction_module(kind: str, options: Mapping[str, Any], dtype: Any = jnp.float32,
                       name: str | None = None) -> nn.Module:
  """The backbone ``kind`` from its hyperparameters (also unbound, for its output width and
  FLOPs)."""
  o = options
  if kind == 'dcnv2':
    return fi.DCNv2(num_cross_layers=o['num_cross_layers'], structure=o['structure'],
                    mlp_hidden=tuple(o['mlp_hidden']), rank=o['rank'], dtype=dtype, name=name)
  if kind == 'wukong':
    return fi.Wukong(num_layers=o['num_layers'], num_fm_tokens=o['num_fm_tokens'],
                     num_lcb_tokens=o['num_lcb_tokens'], fm_rank=o['fm_rank'],
                     mlp_hidden=tuple(o['mlp_hidden']), dtype=dtype, name=name)
  if kind == 'hiformer':
    return fi.HiFormer(num_layers=o['num_layers'], num_heads=o['num_heads'],
                       head_dim=o['head_dim'], rank=o['rank'], ffn_mult=o['ffn_mult'],
                       dtype=dtype, name=name)
  return fi.RankMixer(num_layers=o['num_layers'], ffn_mult=o['ffn_mult'], dtype=dtype, name=name)


class BaselineRanker(nn.Module):
  """Sequence module + feature interaction + task towers (module docstring)."""
  schema: FeatureSchema
  sequence: str = 'din'
  interaction: str = 'dcnv2'
  embed_dim: int = 16
  sequence_options: tuple[tuple[str, Any], ...] = ()     # the sequence module's hyperparameters
  interaction_options: tuple[tuple[str, Any], ...] = ()  # the backbone's hyperparameters
  head_hidden: int = 64
  dtype: Any = jnp.float32
  embedding_row_multiple: int = 1  # embedding-table rows rounded up to a multiple (even splits)

  # ------------------------------------------------------------------ pieces
  def _sequence_module(self, seq: SequenceFeature) -> nn.Module:
    o, dt, name = _options(self.sequence_options), self.dtype, f'seq_{seq.name}'
    if self.sequence == 'din':
      return se.DINAttention(hidden=tuple(o['hidden']), dtype=dt, name=name)
    if self.sequence == 'stack_din':
      return se.StackDIN(num_layers=o['num_layers'], hidden=tuple(o['hidden']), dtype=dt,
                         name=name)
    if self.sequence == 'longer':
      # [D] num_recent is capped at the sequence's merged length: one setting serves sequences of
      # different lengths (the synthetic order history has only 3 merged tokens).
      return se.Longer(width=o['width'], num_heads=o['num_heads'], num_layers=o['num_layers'],
                       merge=o['merge'], num_recent=min(o['num_recent'],
                                                        -(-seq.max_len // o['merge'])),
                       ffn_mult=o['ffn_mult'], dtype=dt, name=name)
    return se.SequenceTransformer(width=o['width'], num_heads=o['num_heads'],
                                  num_layers=o['num_layers'], ffn_mult=o['ffn_mult'], dtype=dt,
                                  name=name)

  def _rankmixer_tokens(self, x: jnp.ndarray) -> jnp.ndarray:
    """[R, C, N, e] -> T tokens [R, C, T, d]: the flattened features split into T equal chunks
    (zero-padded at the end), chunk t through its own linear map (stacked [T, chunk, d])."""
    o = _options(self.interaction_options)
    t, d = o['num_tokens'], o['width']
    flat = x.reshape(x.shape[:-2] + (-1,))
    chunk = -(-flat.shape[-1] // t)
    flat = jnp.pad(flat, [(0, 0)] * (flat.ndim - 1) + [(0, t * chunk - flat.shape[-1])])
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=-2,
                                            out_axis=-1, batch_axis=(0,))
    w = lp.param(self, 'token_kernel', init, (t, chunk, d), (lp.TOKENS, lp.EMBED, lp.MLP))
    b = lp.param(self, 'token_bias', nn.initializers.zeros, (t, d), (lp.TOKENS, lp.MLP))
    chunks = flat.reshape(flat.shape[:-1] + (t, chunk)).astype(self.dtype)
    return jnp.einsum('...tc,tcd->...td', chunks, w.astype(self.dtype)) + b.astype(self.dtype)

  # ------------------------------------------------------------------ forward
  @nn.compact
  def __call__(self, batch: Mapping[str, Any], train: bool = False) -> jnp.ndarray:
    """-> logits [R, C, T] float32 (task t's conditional logit for every candidate)."""
    del train  # no dropout or batch statistics [D]
    s, e, dt = self.schema, self.embed_dim, self.dtype
    r, c = batch['cand']['mask'].shape
    emb = FeatureEmbeddings(s, e, dt, row_multiple=self.embedding_row_multiple, name=EMBEDDINGS)
    user = [emb.request(batch)]                                              # [R, F_u, e]
    if s.request_numeric:
      user.append(NumericEmbedding(len(s.request_numeric), e, dt, name='request_numeric')(
          batch['request']['num']))
    user = jnp.concatenate(user, axis=1)
    cand_cat = emb.candidates(batch)                                         # [R, C, F_c, e]
    cand = [cand_cat]
    if s.candidate_numeric:
      cand.append(NumericEmbedding(len(s.candidate_numeric), e, dt, name='candidate_numeric')(
          batch['cand']['num']))
    cand = jnp.concatenate(cand, axis=2)
    tokens = [jnp.broadcast_to(user[:, None], (r, c) + user.shape[1:]), cand]
    for seq in s.sequences:
      events = emb.sequence(batch, seq.name)                                 # [R, L, 1+S, e]
      mask = batch['seq'][seq.name]['mask']
      flat_events = events.reshape(r, seq.max_len, -1)
      module = self._sequence_module(seq)
      if self.sequence in ('din', 'stack_din'):
        cols = [jnp.zeros((r, c, e), dt) if j is None else cand_cat[:, :, j]
                for j in sequence_columns(s, seq)]
        out = module(flat_events, mask, jnp.concatenate(cols, axis=-1))     # [R, C, (1+S) e]
      elif self.sequence == 'longer':
        out = module(flat_events, mask, cand.reshape(r, c, -1), user.reshape(r, -1))
      else:
        pooled = module(flat_events, mask).reshape(r, -1)                    # [R, P * width]
        out = jnp.broadcast_to(pooled[:, None], (r, c, pooled.shape[-1]))
      tokens.append(out.reshape(r, c, -1, e).astype(dt))
    x = jnp.concatenate(tokens, axis=2)                                      # [R, C, N, e]
    if self.interaction == 'rankmixer':
      x = self._rankmixer_tokens(x)
    x = lp.constrain(x, (lp.BATCH, None, lp.LENGTH, lp.ACT_EMBED))
    y = interaction_module(self.interaction, _options(self.interaction_options), dt,
                           'interaction')(x)
    return TaskTowers(s.num_tasks, self.head_hidden, dt, name='towers')(y)


# ---------------------------------------------------------------------- layout and accounting
def num_feature_tokens(schema: FeatureSchema, sequence: str, options: Mapping[str, Any],
                       embed_dim: int) -> int:
  """N: the e-wide feature tokens the interaction reads (before RankMixer's re-tokenization)."""
  n = (len(schema.request_categorical) + len(schema.request_numeric) +
       len(schema.candidate_categorical) + len(schema.candidate_numeric))
  for seq in schema.sequences:
    if sequence in ('din', 'stack_din'):
      n += 1 + len(seq.side_features)
    elif sequence == 'longer':
      n += options['width'] // embed_dim
    else:
      n += se.SequenceTransformer.NUM_POOLED * options['width'] // embed_dim
  return n


def baseline_forward_flops(cfg: ml_collections.ConfigDict, schema: FeatureSchema
                           ) -> dict[str, float]:
  """Analytic forward matmul FLOPs by component: 'sequence' split into 'sequence_request' and
  'sequence_candidate', 'tokens' (RankMixer's re-tokenization), 'interaction', 'head'; 'total' is
  the reference per-candidate pass (request work counted whole for every candidate, the OneTrans
  paper's convention, as accounting.onetrans_forward_flops)."""
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


# ---------------------------------------------------------------------- config
def _check_field(where: str, value: Any, kind: Any) -> Any:
  def fail(what: str) -> ConfigError:
    return ConfigError(f'config.model.{where}={value!r}: {what}')
  is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
  if kind == 'int' and not (is_int(value) and value >= 1):
    raise fail('must be a positive integer')
  if kind == 'int0' and not (is_int(value) and value >= 0):
    raise fail('must be an integer >= 0')
  if kind == 'rank' and not (value is None or (is_int(value) and value >= 1)):
    raise fail('must be None (full rank) or a positive integer')
  if kind == 'ints':
    if not isinstance(value, (tuple, list)) or not value or not all(
        is_int(v) and v >= 1 for v in value):
      raise fail('must be a non-empty tuple of positive widths, e.g. (64, 32)')
    return tuple(int(v) for v in value)
  if isinstance(kind, tuple) and value not in kind:
    raise fail(f'choose one of {list(kind)}')
  return int(value) if is_int(value) else value


def _module_options(cfg: ml_collections.ConfigDict, kind: str, fields: Mapping[str, Any]
                    ) -> tuple[tuple[str, Any], ...]:
  sub = cfg.get(kind, None)
  if sub is None:
    raise ConfigError(f'config.model.{kind} is missing: the {kind!r} module needs its '
                      f'hyperparameters {sorted(fields)} (experiments/common.baseline_model '
                      'writes them all)')
  unknown = sorted(set(sub.keys()) - set(fields))
  if unknown:
    raise ConfigError(f'config.model.{kind} has unknown fields {unknown}; known: {sorted(fields)}')
  out = []
  for f, kind_f in fields.items():
    if f not in sub:
      raise ConfigError(f'config.model.{kind}.{f} is missing')
    out.append((f, _check_field(f'{kind}.{f}', sub[f], kind_f)))
  return tuple(out)


def baseline_from_config(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> BaselineRanker:
  """``config.model`` -> BaselineRanker; every bad field raises a ConfigError naming it."""
  for field, choices in (('sequence', SEQUENCE_MODULES), ('interaction', INTERACTIONS),
                         ('dtype', tuple(DTYPES))):
    if cfg.get(field) not in choices:
      raise ConfigError(f'config.model.{field}={cfg.get(field)!r}: choose one of {list(choices)}')
  e = _check_field('embed_dim', cfg.get('embed_dim'), 'int')
  hid = _check_field('head_hidden', cfg.get('head_hidden'), 'int')
  rows = _check_field('embedding_row_multiple', cfg.get('embedding_row_multiple', 1), 'int')
  seq_opts = _module_options(cfg, cfg.sequence, SEQUENCE_FIELDS[cfg.sequence])
  int_opts = _module_options(cfg, cfg.interaction, INTERACTION_FIELDS[cfg.interaction])
  so, io = dict(seq_opts), dict(int_opts)
  if not schema.sequences:
    raise ConfigError(f'config.model.sequence={cfg.sequence!r}: the dataset has no behaviour '
                      'sequence to summarise')
  if cfg.sequence in ('din', 'stack_din'):
    for seq in schema.sequences:
      if sequence_columns(schema, seq)[0] is None:
        raise ConfigError(
            f'config.model.sequence={cfg.sequence!r}: target attention needs the candidate\'s '
            f'item id, but no candidate categorical feature uses the vocabulary '
            f'{seq.item_vocab!r} of sequence {seq.name!r}; use a target-agnostic '
            "config.model.sequence='transformer' or add the feature")
  if cfg.sequence in ('longer', 'transformer'):
    w, kind = so['width'], cfg.sequence
    if w % e:
      raise ConfigError(f'config.model.{kind}.width={w} must be a multiple of '
                        f'config.model.embed_dim={e}: its output is split into e-wide tokens')
    if w % so['num_heads']:
      raise ConfigError(f'config.model.{kind}.num_heads={so["num_heads"]} must divide '
                        f'config.model.{kind}.width={w}')
  if cfg.interaction == 'rankmixer' and io['width'] % io['num_tokens']:
    raise ConfigError(f'config.model.rankmixer.num_tokens={io["num_tokens"]} must divide '
                      f'config.model.rankmixer.width={io["width"]} (token mixing splits each '
                      'token into T heads)')
  return BaselineRanker(schema, cfg.sequence, cfg.interaction, e, seq_opts, int_opts, hid,
                        DTYPES[cfg.dtype], embedding_row_multiple=rows)


def baseline_model(sequence: str = 'din', interaction: str = 'dcnv2',
                   **overrides) -> ml_collections.ConfigDict:
  """A CPU-sized baseline config with every module's sub-config ([D] sizes, set so that the
  RankMixer rows land near OneTrans_S:small's dense parameters and DCNv2 + DIN well below, as
  in the paper's table)."""
  m = ml_collections.ConfigDict()
  m.name = 'baseline'
  m.sequence = sequence           # 'din', 'stack_din', 'longer', 'transformer'
  m.interaction = interaction     # 'dcnv2', 'wukong', 'hiformer', 'rankmixer'
  m.embed_dim = 16                # feature token width e
  m.head_hidden = 64              # task tower width
  m.dtype = 'float32'
  m.embedding_row_multiple = 1    # embedding-table rows rounded up to a multiple of this (1: as
                                  # the vocabulary), so the vocab axis splits evenly over a mesh
  subs = {
      'din': dict(hidden=(64, 32)),
      'stack_din': dict(num_layers=2, hidden=(64, 32)),
      'longer': dict(width=64, num_heads=4, num_layers=2, merge=4, num_recent=8, ffn_mult=4),
      'transformer': dict(width=64, num_heads=4, num_layers=2, ffn_mult=4),
      'dcnv2': dict(num_cross_layers=3, structure='stacked', mlp_hidden=(256, 128),
                    rank=ml_collections.config_dict.placeholder(int)),
      'wukong': dict(num_layers=3, num_fm_tokens=16, num_lcb_tokens=16,
                     fm_rank=8, mlp_hidden=(512,)),
      'hiformer': dict(num_layers=2, num_heads=4, head_dim=16, rank=64, ffn_mult=4),
      'rankmixer': dict(num_tokens=8, width=128, num_layers=2, ffn_mult=4),
  }
  m[sequence] = ml_collections.ConfigDict(subs[sequence])
  m[interaction] = ml_collections.ConfigDict(subs[interaction])
  m.update(overrides)
  return m
