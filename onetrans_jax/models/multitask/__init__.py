"""Multi-task predictors over a pooled representation: towers.py (per-task towers),
predictors.py (shared-bottom, MMoE, PLE), config.py (their fields, builder, counts)."""
