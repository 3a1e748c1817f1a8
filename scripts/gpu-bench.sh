#!/usr/bin/env bash
# The GPU benchmark, run ON the GPU machine from the repo root (docs/gpu.md):
#
#   bash scripts/gpu-bench.sh [bench-gpu flags...]
#
# It needs no downloads and no build: the stripped CUDA binary made by scripts/build-cuda.sh
# travels xz-compressed in .tools/gpu-dist/ (about 13 MB; with the device tool: carry
# [".tools/gpu-dist"]), and the CUDA runtime libraries it links (libcudart.so.13,
# libcublas.so.13 + libcublasLt.so.13, libcurand.so.10) come from the machine: the NVIDIA wheels
# of its Python (nvidia/cu13/lib) or a CUDA toolkit. They cannot travel in 64 MiB (the cuBLAS
# wheel alone is 421 MB). The driver (libcuda.so.1) must be 580+ (CUDA 13.0).
#
# Prints the bench-gpu table last; writes bench-gpu.json and bench-gpu.log to $OUT (or
# ./bench-gpu-out). Stops itself after KONTEXT_BENCH_TIMEOUT seconds (default 470) so a device
# call of 8 minutes always returns the log.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/bench-gpu-out}
mkdir -p "$OUT"
LOG=$OUT/bench-gpu.log
say() { echo "[gpu-bench] $*" | tee -a "$LOG" >&2; }
: >"$LOG"

# --- the binary -----------------------------------------------------------------------------------
BIN=${KONTEXT_WORKER_BIN:-}
if [ -z "$BIN" ]; then
  for cand in .tools/gpu-dist/kontext-worker .tools/gpu-dist/kontext-worker.xz; do
    if [ -f "$cand" ]; then
      case "$cand" in
        *.xz) BIN=/tmp/kontext-worker-bench; xz -dc "$cand" >"$BIN" && chmod +x "$BIN" ;;
        *) BIN=$cand ;;
      esac
      break
    fi
  done
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  say "no CUDA binary: run scripts/build-cuda.sh here first (it fills .tools/gpu-dist/) and carry .tools/gpu-dist"
  exit 2
fi

# --- CUDA runtime libraries from the machine --------------------------------------------------------
need="libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10"
dirs=()
[ -n "${KONTEXT_CUDA_LIBS:-}" ] && dirs+=("$KONTEXT_CUDA_LIBS")
for py in python3 /opt/torch/.venv/bin/python3; do
  if command -v "$py" >/dev/null 2>&1; then
    site=$("$py" - <<'EOF' 2>/dev/null
import site, sys, sysconfig
paths = set(site.getsitepackages() + [sysconfig.get_paths()["purelib"]])
print("\n".join(sorted(paths)))
EOF
)
    while IFS= read -r s; do
      [ -n "$s" ] || continue
      for d in "$s"/nvidia/cu13/lib "$s"/nvidia/*/lib; do [ -d "$d" ] && dirs+=("$d"); done
    done <<<"$site"
  fi
done
dirs+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu)
libpath=
for lib in $need; do
  found=
  for d in "${dirs[@]}"; do
    if [ -e "$d/$lib" ]; then
      found=$d
      break
    fi
  done
  if [ -z "$found" ]; then
    say "missing $lib (looked in: ${dirs[*]}); set KONTEXT_CUDA_LIBS to a folder that has it"
    exit 2
  fi
  case ":$libpath:" in *":$found:"*) ;; *) libpath=$libpath${libpath:+:}$found ;; esac
done
export LD_LIBRARY_PATH=$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "binary $BIN; CUDA libraries from $libpath"
if ldd "$BIN" | grep -q "not found"; then
  ldd "$BIN" | tee -a "$LOG" >&2
  say "unresolved libraries (above)"
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv 2>&1 | tee -a "$LOG" >&2

# --- run ------------------------------------------------------------------------------------------
export RUST_LOG=${RUST_LOG:-warn}
timeout --signal=INT --kill-after=10 "${KONTEXT_BENCH_TIMEOUT:-470}" \
  "$BIN" bench-gpu --device "${KONTEXT_BENCH_DEVICE:-cuda}" --out-dir "$OUT" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && say "stopped after ${KONTEXT_BENCH_TIMEOUT:-470} s (KONTEXT_BENCH_TIMEOUT)"
say "exit $rc; details in $OUT/bench-gpu.json, log in $LOG"
exit "$rc"
