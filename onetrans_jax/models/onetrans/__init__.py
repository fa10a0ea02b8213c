"""OneTrans (SPEC part A): tokenizer.py (unified S / NS tokenizer), block.py (mixed-parameter
causal block), pyramid.py (query schedules), model.py (the model, user cache), config.py
(defaults, validation, builder, layout, FLOP counts)."""
