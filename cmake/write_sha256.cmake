# Write the SHA-256 of SOURCE into OUTPUT: the sidecar that tells kernels/_loader.py a
# fatbin was built from the current source (a stale fatbin is recompiled, never trusted).
# Usage: cmake -DSOURCE=<file.cu> -DOUTPUT=<file.fatbin.sha256> -P write_sha256.cmake
file(SHA256 "${SOURCE}" digest)
file(WRITE "${OUTPUT}" "${digest}\n")
