"""`.source`: operation-level access inside a module's forward (see envoy.py)."""
