"""Measuring models: zero-shot, few-shot, rank-level and intrinsic measures, benchmark tasks, the suite and its reports."""
