"""Evaluation: clinical metrics, figures, and the per-window and per-record scoring of a split."""
