"""Training the bundled prior: a small guided-diffusion UNet, resumable on CPU or GPU.

Reached as `diffpir train` (and `diffpir train export`); writes into the installed
package only when told to (`--weights-dir`).
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "training")
