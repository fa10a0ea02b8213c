r"""Parameter and FLOP accounting, as the paper counts (SPEC A.8, A.9).

"Params" = dense parameters (embedding tables excluded). FLOPs are analytic matmul FLOPs
(2 per multiply-add) of the reference per-candidate pass; training = 3 x forward (forward, plus
two matmuls of the same size per weight in the backward pass). Attention scores are counted over
the full L' x L rectangle of each layer (no credit for the causal triangle). Elementwise work
(norms, softmax, activations) is left out. The paper's own FLOP convention is unknown (SPEC A.9):
compare ratios and orderings, not absolute TFLOPs. ``xla_flops`` gives XLA's count of the compiled
computation beside it.

  python -m onetrans_jax.accounting --config experiments/onetrans_s.py
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from onetrans_jax.models import build_model, onetrans_layout, partitioning
from onetrans_jax.models.baselines import baseline_forward_flops
from onetrans_jax.models.multitask_heads import head_flops
from onetrans_jax.models.tokenizer import default_groups, merged_length, ns_feature_names
from onetrans_jax.optimizers import count_params
from onetrans_jax.schema import FeatureSchema

PAPER_BATCH = 2048  # "TFLOPs = training compute for a batch of 2048" (SPEC A.8)


def dense_params(model_cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, int]:
  """Dense and embedding parameter counts from shapes alone (no memory is allocated)."""
  from onetrans_jax.train import dummy_batch  # local: train imports this module's users
  model = build_model(model_cfg, schema)
  params = jax.eval_shape(lambda: partitioning.unbox(
      model.init(jax.random.key(0), dummy_batch(schema, 1))['params']))
  return count_params(params)


def _sequence_mlp_flops(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """The per-sequence 2-layer MLPs over every event (the S side of the tokenizer)."""
  d, e = cfg.width, cfg.embed_dim
  return sum(2.0 * seq.max_len * ((1 + len(seq.side_features)) * e * d + d * d)
             for seq in schema.sequences)


def onetrans_forward_flops(cfg: ml_collections.ConfigDict,
                           schema: FeatureSchema) -> dict[str, float]:
  """Analytic forward matmul FLOPs per candidate of a OneTrans config, by component."""
  d, e, m = cfg.width, cfg.embed_dim, cfg.ffn_mult
  l_s, l_ns, sched = onetrans_layout(cfg, schema)
  out = {'tokenizer': _sequence_mlp_flops(cfg, schema), 'attention_proj': 0.0,
         'attention_scores': 0.0, 'ffn': 0.0, 'head': 0.0}
  n_feat = len(ns_feature_names(schema))
  if cfg.ns_tokenizer == 'auto_split':
    hidden = cfg.get('ns_hidden', 0) or l_ns * d
    out['tokenizer'] += 2.0 * (n_feat * e * hidden + hidden * l_ns * d)
  else:
    groups = cfg.get('ns_groups', None) or default_groups(schema, l_ns)
    width = max(len(g) for g in groups) * e
    hidden = cfg.get('ns_hidden', 0) or d
    out['tokenizer'] += 2.0 * l_ns * (width * hidden + hidden * d)
  keys = l_s + l_ns
  for queries in sched:
    out['attention_proj'] += 2.0 * (keys * d * 2 * d + queries * d * d * 2)  # K,V all; Q,O tail
    out['attention_scores'] += 2.0 * 2 * queries * keys * d                  # QK^T and AV
    out['ffn'] += 2.0 * queries * 2 * d * m * d
    keys = queries
  out['head'] = head_flops(cfg, d, schema.num_tasks)
  out['total'] = sum(out.values())
  return out


def shared_forward_flops(cfg: ml_collections.ConfigDict,
                         schema: FeatureSchema) -> dict[str, float]:
  """Forward matmul FLOPs under request-level sharing (SPEC A.6), split by who pays them.

  'user': once per request (sequence MLPs; per layer the S keys/values, the kept S queries,
  their attention over S keys and their FFN; the request half of the auto-split layer);
  'candidate': per candidate (the rest of the NS tokenizer; per layer the NS projections, NS
  attention over the layer's S keys plus the NS keys, the NS FFN; the head). A request with C
  candidates costs user + C * candidate, against C * onetrans_forward_flops()['total'].
  """
  d, e, m = cfg.width, cfg.embed_dim, cfg.ffn_mult
  l_s, l_ns, sched = onetrans_layout(cfg, schema)
  user = _sequence_mlp_flops(cfg, schema)
  full = onetrans_forward_flops(cfg, schema)
  if cfg.ns_tokenizer == 'auto_split':
    hidden = cfg.get('ns_hidden', 0) or l_ns * d
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


def onerank_forward_flops(cfg: ml_collections.ConfigDict,
                          schema: FeatureSchema) -> dict[str, float]:
  """Forward matmul FLOPs of OneRank (SPEC B.3-B.6), split into 'request' and 'candidate' work.

  OneRank has no per-candidate pass to count: its candidates share the prefix by construction
  (the mask makes the prefix blind to them). 'request': the history MLPs, the contextual-token
  maps, every layer's prefix (projections, causal scores over the full P x P rectangle, FFN) and
  the task channels' per-request work; 'candidate': the candidate token MLP, every layer's group
  of 1 + K' tokens (projections, scores against P + G keys, FFN) and the scoring.
  """
  d, e, m, k = cfg.width, cfg.embed_dim, cfg.ffn_mult, schema.num_tasks
  merge = cfg.get('seq_merge', 'timestamp_aware')
  use_sep = cfg.get('use_sep', None)
  use_sep = merge == 'timestamp_agnostic' if use_sep is None else bool(use_sep)
  n_ctx = len(schema.request_categorical) + len(schema.request_numeric)
  p = n_ctx + merged_length(schema, merge, use_sep)
  g = 1 + (k if cfg.get('task_tokens', 'per_task') == 'per_task' else 1)
  request = _sequence_mlp_flops(cfg, schema) + 2.0 * len(schema.request_categorical) * e * d
  cand_in = (len(schema.candidate_categorical) + len(schema.candidate_numeric)) * e
  candidate = 2.0 * (cand_in * d + d * d)
  per_token = 2.0 * (4 * d * d + 2 * m * d * d)          # Q, K, V, O and the FFN
  request += cfg.num_layers * (p * per_token + 2.0 * 2 * p * p * d)
  candidate += cfg.num_layers * (g * per_token + 2.0 * 2 * g * (p + g) * d)
  if cfg.get('scoring', 'matching') == 'mlp':
    hid = cfg.get('head_hidden', 0) or d
    candidate += 2.0 * k * (d * hid + hid)
    return {'request': request, 'candidate': candidate}
  situation = cfg.get('situation', 'attention')
  if situation != 'mean':
    d_s = len(schema.request_categorical) * e + len(schema.request_numeric)
    request += 2.0 * k * (d_s * d if situation == 'attention' else 0) + 2.0 * 2 * k * d * d
    candidate += 2.0 * (2 * k * d * d + 2 * k * d)      # keys, values; scores and weighted sum
  if cfg.get('cross_task', True):
    kv = 4 if (cfg.get('detach', True) or cfg.get('detach_kv_weights', False)) else 2
    request += 2.0 * ((2 + kv) * k * d * d + 2 * k * k * d + 2 * k * m * d * d)
  candidate += 2.0 * k * d                                # z_k . r_k^i
  return {'request': request, 'candidate': candidate}


def training_flops_per_example(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """Training FLOPs per impression (3 x forward). OneRank's per-request work is spread over the
  schema's C candidates slots (its prefix is shared by construction); every other model counts
  its reference per-candidate pass (the OneTrans paper's convention)."""
  if cfg.name == 'onerank':
    f = onerank_forward_flops(cfg, schema)
    return 3.0 * (f['request'] / schema.num_candidates + f['candidate'])
  if cfg.name == 'baseline':
    return 3.0 * baseline_forward_flops(cfg, schema)['total']
  return 3.0 * onetrans_forward_flops(cfg, schema)['total']


def batch_tflops(model_cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """Training TFLOPs for a batch of PAPER_BATCH examples; NaN for models without a count."""
  if model_cfg.name not in ('onetrans', 'onerank', 'baseline'):
    return float('nan')
  return training_flops_per_example(model_cfg, schema) * PAPER_BATCH / 1e12


def xla_flops(fn: Callable[..., Any], *args: Any) -> float:
  """XLA's FLOP count of ``fn`` compiled for ``args`` (cost analysis of the optimised HLO)."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', float('nan')))


def report(config: ml_collections.ConfigDict) -> str:
  from onetrans_jax.data import pipeline
  schema = pipeline.build_dataset(config.data).schema
  counts = dense_params(config.model, schema)
  lines = [f'model {config.model.name}: dense params {counts["dense"] / 1e6:.2f}M, '
           f'embedding params {counts["sparse"] / 1e6:.2f}M']
  if config.model.name == 'onetrans':
    f = onetrans_forward_flops(config.model, schema)
    _, _, sched = onetrans_layout(config.model, schema)
    lines.append(f'pyramid schedule {sched}')
    lines.append('forward GFLOPs per example: ' + ', '.join(
        f'{k} {v / 1e9:.3f}' for k, v in f.items()))
    lines.append(f'training TFLOPs per batch of {PAPER_BATCH}: '
                 f'{batch_tflops(config.model, schema):.2f}')
    split = shared_forward_flops(config.model, schema)
    c = schema.num_candidates
    ratio = c * f['total'] / (split['user'] + c * split['candidate'])
    lines.append(f'request-level sharing: forward GFLOPs {split["user"] / 1e9:.3f} per request + '
                 f'{split["candidate"] / 1e9:.3f} per candidate; {ratio:.2f}x fewer than '
                 f'per-candidate passes at C={c}')
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  del argv
  print(report(_CONFIG.value))


if __name__ == '__main__':
  from absl import app
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment file.')
  app.run(main)
