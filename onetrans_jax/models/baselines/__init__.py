"""The OneTrans paper's baselines (SPEC A.10, A.11): sequence_encoders.py (DIN, StackDIN, LONGER,
a sequence Transformer), feature_interaction.py (DCNv2, Wukong, HiFormer, RankMixer), model.py
(the encode-then-interact ranker), config.py (defaults, validation, builder, FLOP counts)."""
