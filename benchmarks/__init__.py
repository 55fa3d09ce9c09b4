"""Benchmarks: latency and throughput, restoration quality, method comparison, the GPU suite.

They use the public API of the engine and the runtime only, as a user would.
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "benchmarks")
