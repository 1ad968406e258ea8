"""Tracers: capture of a `with` body, invokes, and running the model with mediators."""
