"""The plain encode-then-interact baseline ``pooled_mlp``: model.py (the module), config.py
(defaults, validation, builder, parameter and FLOP counts)."""
