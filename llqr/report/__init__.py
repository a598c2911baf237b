"""Aggregation of trained cells into each surface's tables and figure.

Pure pandas/matplotlib (no JAX), so it imports fast and runs anywhere, including on a
partial run: ``render_surface`` is the one entry point the workflow needs.
"""

from .render import OUTPUTS, render_surface

__all__ = ["OUTPUTS", "render_surface"]
