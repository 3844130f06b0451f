"""Executors run a run's program somewhere; all share the interface in `base.py`."""
