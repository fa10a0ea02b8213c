"""Classical floor rows of a study table: a smoothed per-item positive rate, logistic regression
and LightGBM.

On small real logs (MovieLens-100K's chronological split) such models rank better than the neural
rows, so a table without them overstates what the neural models learned. Each floor is fitted on
the training period and scored on exactly the hold-out impressions a neural run with the same
config scores (same valid mask per task, same order), through the same metrics code, so the
paired statistics of study_report.py compare them with any neural row. ``config.py``: fields and
validation; ``features.py``: the leak-free history statistics; ``fit.py``: the run.
"""
