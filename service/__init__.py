"""The service room: DiffPIR-RT in production on Ray.

`diffpir serve` runs a Ray Serve application (an HTTP ingress and restorer replicas
that batch requests dynamically with `@serve.batch`); `diffpir batch` restores folders
with Ray Data over Restorer actors; `diffpir request` calls a server. Every restoration
goes through the runtime (`Restorer`, `RestoreRequest`, `run_requests`), so a result and
its run record are the ones `diffpir restore` gives. Ray is an optional extra
(`pip install "diffpir-rt[serve]"`): it is imported only where it is used.
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "service")
