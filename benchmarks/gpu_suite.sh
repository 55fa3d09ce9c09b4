#!/usr/bin/env bash
# The prepared GPU suite: one command, one device session, partial results on any failure.
#
#   bash benchmarks/gpu_suite.sh OUTDIR
#
# Stages, each under `timeout` and a shared time budget (default 470 s, under 8 minutes):
#   env      nvidia-smi, versions
#   install  pip install --no-deps --no-build-isolation -e .  (no fallback: the repository's own
#            diffpir_rt/ shadows any PYTHONPATH shim; if diffpir_rt is not importable, the suite stops)
#   imports  every module of the GPU path imports with pypng absent (the GPU image has none:
#            --no-deps); a failure stops the suite before any stage spends time
#   fatbin   cmake build of kernels/*.cu into kernels/prebuilt/ (else CuPy compiles with NVRTC)
#   restore  diffpir restore --device DEVICE: the run record must name the CUDA-graph path
#   tests    pytest -m gpu (kernels == torch references, graph == eager, fp16 PSNR) -> pytest.xml;
#            figures the tests measure (fp16/bf16 PSNR) go to summary.json "measurements"
#   kernels  python -m diffpir_rt.benchmarks.kernel_micro -> kernels.json
#   latency  python -m diffpir_rt.benchmarks.latency (star sweep, torch.compile backends last,
#            its own budget) -> latency.{json,md,png}
#   summary  summary.md + summary.json (stage table, test counts, measurements, kernel table, targets)
# OUTDIR receives at most 8 files (the device tool returns no more): suite.log, summary.md,
# summary.json, pytest.xml, kernels.json, latency.json, latency.md, latency.png.
# Modules run as `python -m diffpir_rt.benchmarks.X`: a top-level `benchmarks` import fails by design.
# Exit status: 0 when the stages ran (each stage's status is in summary.md), 3 when the suite
# stopped early (diffpir_rt not importable, or the import check failed).
#
# Environment knobs: PYTHON (default python3), DIFFPIR_SUITE_BUDGET_S (470),
# DIFFPIR_SUITE_DEVICE (cuda), DIFFPIR_SUITE_QUICK=1 (tiny CPU-sized smoke configuration),
# DIFFPIR_SUITE_SKIP_INSTALL=1, DIFFPIR_SUITE_ARCHS (CMake archs, default all),
# DIFFPIR_SUITE_IMPORTS (modules the import check loads; default: the GPU path below),
# DIFFPIR_RT_KERNEL_DIR (fatbin folder, default kernels/prebuilt).
set -u -o pipefail

OUT=${1:?usage: bash benchmarks/gpu_suite.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
BUDGET=${DIFFPIR_SUITE_BUDGET_S:-470}
DEVICE=${DIFFPIR_SUITE_DEVICE:-cuda}
QUICK=${DIFFPIR_SUITE_QUICK:-0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/diffpir_suite.XXXXXX")
LOG="$OUT/suite.log"
STAGES="$WORK/stages.tsv"
START=$SECONDS
# Where CMake writes the fatbins and kernels/_loader.py looks for them.
export DIFFPIR_RT_KERNEL_DIR=${DIFFPIR_RT_KERNEL_DIR:-$ROOT/kernels/prebuilt}
# GPU tests append the figures they measure here (tests/gpu_support.py record_measurement).
export DIFFPIR_SUITE_MEASUREMENTS="$WORK/measurements.jsonl"
# Every module a GPU stage imports, and the restore CLI's (`diffpir restore --device cuda`);
# "pkg.*" is the package and every module under it (new modules are checked without a list).
DEFAULT_IMPORTS="diffpir_rt.engine.* diffpir_rt.kernels.* diffpir_rt.runtime.* diffpir_rt.cli \
diffpir_rt.benchmarks.latency diffpir_rt.benchmarks.kernel_micro diffpir_rt.benchmarks.suite_summary \
tests.kernels.test_cupy_kernels tests.engine.test_graph_runtime_gpu"
export DIFFPIR_SUITE_IMPORTS=${DIFFPIR_SUITE_IMPORTS:-$DEFAULT_IMPORTS}
export PYTHONUNBUFFERED=1 ROOT PY WORK DEVICE
: >"$LOG"
printf 'stage\tstatus\tseconds\tlimit\n' >"$STAGES"

log() { printf '[suite %4ds] %s\n' "$((SECONDS - START))" "$*" | tee -a "$LOG"; }

# stage NAME LIMIT_S CMD...: run CMD under timeout (capped by the budget left), log it, record status.
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 15)); then
    log "$name: SKIPPED (budget spent)"
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >>"$STAGES"
    return 99
  fi
  ((limit > left)) && limit=$left
  log "$name: start (limit ${limit}s): $*"
  local t0=$SECONDS rc
  if declare -F "$1" >/dev/null; then # a function of this script: run it in a child bash
    timeout -k 10 "$limit" bash -c "$(declare -f "$1"); $*" >>"$LOG" 2>&1
  else
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  fi
  rc=$?
  local status=ok
  ((rc == 124 || rc == 137)) && status=timeout
  ((rc != 0 && rc != 124 && rc != 137)) && status="failed(rc=$rc)"
  log "$name: $status after $((SECONDS - t0))s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$limit" >>"$STAGES"
  return "$rc"
}

env_info() {
  nvidia-smi || true
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
try:
    import cupy; print("cupy", cupy.__version__)
except Exception as exc:
    print("cupy unavailable:", exc)
EOF
  command -v nvcc && nvcc --version | tail -1
  command -v cmake && cmake --version | head -1
  git -C "$ROOT" rev-parse HEAD 2>/dev/null || true
  git -C "$ROOT" status --short 2>/dev/null | head -20 || true
}

# Whether the installed package resolves (run from the root, as every stage is).
importable() { "$PY" -c "import diffpir_rt.engine, diffpir_rt.kernels, diffpir_rt.benchmarks" >>"$LOG" 2>&1; }

# Import every module of $DIFFPIR_SUITE_IMPORTS with pypng made unimportable, as on the GPU
# image; one line per module, and a last line that says what to fix.
import_check() {
  "$PY" - <<'EOF'
import importlib, os, pkgutil, sys, traceback
sys.modules["png"] = None  # `import png` now raises ImportError, as on an image without pypng
failed = []

def check(name):
    try:
        module = importlib.import_module(name)
        print(f"imports: ok      {name}")
        return module
    except BaseException as exc:  # report every failure, then stop the suite
        failed.append(name)
        print(f"imports: FAILED  {name}: {type(exc).__name__}: {exc}")
        traceback.print_exc(limit=-3)

for name in os.environ["DIFFPIR_SUITE_IMPORTS"].split():
    walk = name.endswith(".*")
    package = check(name[:-2] if walk else name)
    if walk and package is not None:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=lambda name: None):
            check(info.name)
if failed:
    print(f"imports: {len(failed)} module(s) of the GPU path fail to import without pypng: {' '.join(failed)}")
    sys.exit(1)
print("imports: every module of the GPU path imports without pypng")
EOF
}

# The product path: `diffpir restore` with the bundled prior on the suite's device, and the run
# record must name the path that ran (on CUDA the graph runtime, the runtime's default there).
restore_check() {
  "$PY" -m diffpir_rt restore --task deblur --device "$DEVICE" --input "$ROOT/examples/butterfly_gaussian_blur.png" \
    --kernel "$ROOT/examples/gaussian_k61_idx0.npy" --output "$WORK/restored.png" --steps 5 || return 1
  "$PY" - "$WORK/restored.png.json" "$DEVICE" <<'EOF'
import json, sys
record = json.load(open(sys.argv[1]))["runtime"]["path"]
print("restore: path", record["name"], "kernels", record["kernels"], "| reason:", record["reason"], "| fallbacks:", record["fallbacks"])
if sys.argv[2].startswith("cuda") and record["name"] != "cuda-graph":
    sys.exit("restore: --device cuda did not run the CUDA-graph path")
EOF
}

# Write the summary (the Python one, else the stage table alone).
summarise() {
  "$PY" -m diffpir_rt.benchmarks.suite_summary --stages "$STAGES" --out-dir "$OUT" --kernels-markdown "$WORK/kernels.md" \
    --measurements "$DIFFPIR_SUITE_MEASUREMENTS" >>"$LOG" 2>&1 || {
    log "summary: python summary failed; writing the stage table only"
    { echo "# DiffPIR GPU suite (fallback summary)"; echo; column -t -s $'\t' "$STAGES" 2>/dev/null || cat "$STAGES"; } >"$OUT/summary.md"
  }
}

# Stop early: say why, summarise what ran, exit 3.
stop() {
  log "STOPPED: $*"
  printf 'stopped\t%s\t0\t0\n' "$*" >>"$STAGES"
  summarise
  ls -la "$OUT" | tee -a "$LOG"
  rm -rf "$WORK"
  exit 3
}

build_fatbins() {
  local archs=${DIFFPIR_SUITE_ARCHS:-"80;86;87;89;90"}
  cmake -S "$ROOT" -B "$WORK/build" "-DDIFFPIR_CUDA_ARCHS=$archs" "-DDIFFPIR_KERNEL_DIR=$DIFFPIR_RT_KERNEL_DIR" &&
    cmake --build "$WORK/build" -j "$(nproc)" && ls -la "$DIFFPIR_RT_KERNEL_DIR"
}

if [[ $QUICK == 1 ]]; then
  PYTEST_ARGS=(-m gpu tests/kernels tests/engine/test_graph_runtime_gpu.py)
  MICRO_ARGS=(--device "$DEVICE" --batches 1 --size 32 --calls 2 --repeats 2)
  LATENCY_ARGS=(--device "$DEVICE" --random-weights --arch tiny --sizes 32 --steps 3 --batches 1 --tasks deblur --warmup 1 --repeats 2)
else
  # This issue's GPU tests only: other rooms' GPU tests have their own suites and budgets.
  PYTEST_ARGS=(-m gpu tests/kernels tests/engine/test_graph_runtime_gpu.py)
  MICRO_ARGS=(--device "$DEVICE" --batches 1 32 --size 256)
  LATENCY_ARGS=(--device "$DEVICE" --random-weights --arch ffhq_10m --sweep star --tasks deblur sr inpaint --sizes 256 64 512
    --batches 1 32 16 4 --steps 20 5 10 100 --star-order batch steps task size)
fi

log "DiffPIR GPU suite: root $ROOT, out $OUT, budget ${BUDGET}s, device $DEVICE, quick $QUICK"
stage env 60 env_info

if [[ ${DIFFPIR_SUITE_SKIP_INSTALL:-0} == 1 ]]; then
  log "install: skipped (DIFFPIR_SUITE_SKIP_INSTALL=1)"
else
  stage install 150 "$PY" -m pip install --no-deps --no-build-isolation -e "$ROOT" ||
    stop "install: pip install --no-deps --no-build-isolation -e . failed (its output is above)"
fi
importable || stop "diffpir_rt is not importable from $ROOT (see the install stage above):" \
  "pip install --no-deps --no-build-isolation -e . must succeed"
stage imports 120 import_check || stop "a module of the GPU path does not import (see the 'imports:' lines above)"

if command -v cmake >/dev/null && command -v nvcc >/dev/null; then
  stage fatbin 150 build_fatbins || log "fatbin: build failed; CuPy compiles the sources with NVRTC instead"
else
  log "fatbin: cmake or nvcc missing; CuPy compiles the sources with NVRTC"
  printf 'fatbin\tskipped(no cmake/nvcc)\t0\t0\n' >>"$STAGES"
fi

stage restore 120 restore_check || log "restore: the product path failed or did not run the graph (see above)"

stage tests 200 "$PY" -m pytest -q -rA -p no:cacheprovider --continue-on-collection-errors \
  --junitxml="$OUT/pytest.xml" "${PYTEST_ARGS[@]}"
stage kernels 90 "$PY" -m diffpir_rt.benchmarks.kernel_micro "${MICRO_ARGS[@]}" --json "$OUT/kernels.json" --markdown "$WORK/kernels.md"

# The latency tool stops starting configurations at its own budget and rewrites latency.json
# after every one, so a timeout still leaves the finished rows.
left=$((BUDGET - (SECONDS - START)))
stage latency "$left" "$PY" -m diffpir_rt.benchmarks.latency "${LATENCY_ARGS[@]}" --time-budget "$((left > 60 ? left - 45 : left / 2))" \
  --out-dir "$OUT" --history none

summarise
log "done in $((SECONDS - START))s; files in $OUT:"
ls -la "$OUT" | tee -a "$LOG"
rm -rf "$WORK"
exit 0
