"""DiffPIR-RT: plug-and-play diffusion image restoration engine.

The code lives in sibling folders mapped into this namespace by pyproject.toml:
``diffpir_rt.engine`` (engine/), ``diffpir_rt.export`` (export/),
``diffpir_rt.kernels`` (kernels/), ``diffpir_rt.benchmarks`` (benchmarks/).
"""

__version__ = "0.1.0"
