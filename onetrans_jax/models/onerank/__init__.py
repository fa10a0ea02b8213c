"""OneRank (SPEC part B): model.py (task tokens over a shared causal prefix, matching scores),
task_channels.py (situation discernment, controlled cross-task interaction), config.py (defaults,
validation, builder, FLOP counts)."""
