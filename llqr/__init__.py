"""llqr: Layerwise-LQR preconditioning, training runner and paper matrix.

Importing the package is cheap (no JAX); submodules that need JAX import it themselves,
so the Snakefile can expand the paper matrix quickly.
"""

__version__ = "0.1.0"
