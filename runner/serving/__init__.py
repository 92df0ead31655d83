"""Serving cells: each engine's own server under a concurrency sweep (runner/serving/session.py)."""
