"""The XLA flags the test suite compiles with, set before JAX starts (conftest, and the golden
recorder, so that a recording is what the suite computes).

Backend optimization level 0 and the older (non-fusion-emitter) CPU code generator: the suite's
models are tiny, so its time goes to compiling, not running; so compiled, a tiny ConvMixer's init
takes 1.0 s of CPU instead of 8.4 s. Results agree with the default flags to about 1e-7 relative
(a chaotic cell drifts further: the golden KFAC cell, at a loss of 17.6, by 3% over 12 evaluations),
so the golden recording is made with these flags. A value of XLA_FLAGS in the environment wins
(``XLA_FLAGS= pytest`` tests the default compilation).
"""

import os

FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
# The same settings as per-compile options (``.lower(...).compile(compiler_options=...)``), for
# tests that must compile fast whatever XLA_FLAGS holds; one codegen split, as each program runs once.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
                    "xla_cpu_parallel_codegen_split_count": 1}


def apply() -> None:
    os.environ.setdefault("XLA_FLAGS", FLAGS)
