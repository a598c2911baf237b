"""Aggregation of trained cells into each surface's tables and figure.

Pure pandas/matplotlib (no JAX), so it imports fast and runs anywhere, including on a
partial run: ``render_surface`` is the one entry point the workflow needs.
"""

from .render import OUTPUTS, completeness_error, failed_cells, render_surface

__all__ = ["OUTPUTS", "completeness_error", "failed_cells", "render_surface"]
