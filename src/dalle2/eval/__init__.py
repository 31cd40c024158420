"""Evaluation: distribution and alignment metrics (``metrics.py``); see docs/specs evaluation.md."""
