"""Evaluation: generation into benchmark layouts and scoring."""
