#!/usr/bin/env bash
# Builds the CUDA `kontext-worker` on a machine WITHOUT a GPU (docs/gpu.md §1): pinned CUDA 13.0
# compiler wheels from PyPI in a project-local venv, the FlashAttention-2 headers from the pinned
# candle-flash-attn crate on crates.io (SHA-256 checked, unpacked in $CARGO_TARGET_DIR/third-party),
# link stubs generated from cudarc's own bindings, CUDA_COMPUTE_CAP=90 (H100/H200 only), then a
# stripped binary and a smoke check against a generated fake libcuda that must fail cleanly at
# device creation. Idempotent: the wheels, headers and stubs are redone only when their pins change,
# and cargo caches the CUDA kernels (a rebuild after a Rust-only change recompiles only Rust crates).
#
# Usage: scripts/build-cuda.sh [--flash-attn] [--fused] [--fp8] [--features LIST] [--no-smoke] [--out DIR]
#   --flash-attn     also build the trimmed flash-attention kernel (feature `flash-attn`)
#   --flash-attn-v3  also build FlashAttention-3 for Hopper (sm_90a; feature `flash-attn-v3`,
#                    implies --flash-attn, which stays the kernel of other GPUs)
#   --fused          also build the fused bf16 elementwise kernels (feature `fused-kernels`)
#   --fp8            also build the cuBLASLt FP8 GEMM and its quantization kernel (feature `fp8-gemm`)
#   --features LIST  worker features (default: cuda, plus what the two flags above add)
#   --out DIR        where the stripped binary goes (default: $CARGO_TARGET_DIR/cuda-dist)
#   --tools-only     install the toolchain, headers and stubs, print the environment, build nothing
# Environment: CARGO_TARGET_DIR (default <repo>/target), KONTEXT_CUDA_TOOLS (default
# <repo>/.tools/cuda), CUDAFORGE_THREADS / KONTEXT_NVCC_THREADS (default: number of CPUs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${KONTEXT_CUDA_TOOLS:-$ROOT/.tools/cuda}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FEATURES=cuda
OUT=
SMOKE=1
TOOLS_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --flash-attn) FEATURES="$FEATURES,flash-attn" ;;
    --flash-attn-v3) FEATURES="$FEATURES,flash-attn,flash-attn-v3" ;;
    --fused) FEATURES="$FEATURES,fused-kernels" ;;
    --fp8) FEATURES="$FEATURES,fp8-gemm" ;;
    --features) FEATURES=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-smoke) SMOKE=0 ;;
    --tools-only) TOOLS_ONLY=1 ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "build-cuda.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$CARGO_TARGET_DIR/cuda-dist}

# Pins (docs/gpu.md §1): nvcc must stay 13.0.x, because driver 580 (CUDA 13.0) refuses to
# JIT-compile the PTX of any newer nvcc (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). nvidia-cutlass carries
# the CUTLASS 3.5.0 headers flash-attention needs (the flash-attention headers themselves come from
# the candle-flash-attn crate, step 1b).
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cutlass==3.5.0.0
)

log() { printf '\033[1m[build-cuda]\033[0m %s\n' "$*" >&2; }

# --- 1. wheels -----------------------------------------------------------------------------------
VENV=$TOOLS/venv
STAMP=$TOOLS/wheels.stamp
if [ "$(cat "$STAMP" 2>/dev/null)" != "${WHEELS[*]}" ]; then
  log "installing CUDA compiler wheels into $VENV"
  mkdir -p "$TOOLS"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "${WHEELS[@]}"
  echo "${WHEELS[*]}" >"$STAMP"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU=$SITE/nvidia/cu13
CUTLASS_DIR=$SITE/cutlass_library/source
[ -x "$CU/bin/nvcc" ] || { echo "nvcc missing under $CU/bin (wheel install broken?)" >&2; exit 1; }
[ -f "$CUTLASS_DIR/include/cute/tensor.hpp" ] || { echo "CUTLASS headers missing under $CUTLASS_DIR" >&2; exit 1; }

# --- 1b. FlashAttention-2 headers ----------------------------------------------------------------
# Not kept in this repository: the forward-kernel headers (Tri Dao's FlashAttention-2, BSD-3-Clause,
# as packaged by candle, MIT OR Apache-2.0) come from the published candle-flash-attn crate, pinned
# by version and by the SHA-256 of its .crate file (the `cksum` crates.io's index lists for it).
# Only its `kernels/` directory is used, as an include path of engine/cuda/kernels/
# flash_attn_bf16_hd128.cu (engine/cuda/build.rs reads KONTEXT_FLASH_ATTN_DIR).
mkdir -p "$CARGO_TARGET_DIR/third-party"
FA_CACHE=$(cd "$CARGO_TARGET_DIR/third-party" && pwd)
# fetch_crate_dir NAME VERSION SHA256 SUBDIR MARKER WHAT: unpacks SUBDIR of the published crate
# under $FA_CACHE (once per pin) and prints its path; MARKER is a file that must be there.
fetch_crate_dir() {
  local name=$1 version=$2 sha=$3 subdir=$4 marker=$5 what=$6
  local src=$FA_CACHE/$name-$version stamp=$FA_CACHE/$name-$version.stamp
  if [ "$(cat "$stamp" 2>/dev/null)" != "$sha" ] || [ ! -f "$src/$subdir/$marker" ]; then
    local crate=$src.crate
    local url=https://static.crates.io/crates/$name/$name-$version.crate
    if [ "$(sha256sum "$crate" 2>/dev/null | cut -d' ' -f1)" != "$sha" ]; then
      log "fetching $name $version ($what) from $url"
      curl -sSfL --retry 3 -o "$crate.part" "$url" || {
        rm -f "$crate.part"
        echo "cannot download $url; without network, put that file at $crate" >&2
        exit 1
      }
      local got
      got=$(sha256sum "$crate.part" | cut -d' ' -f1)
      if [ "$got" != "$sha" ]; then
        rm -f "$crate.part"
        echo "$url: SHA-256 $got, expected $sha (pinned in $0)" >&2
        exit 1
      fi
      mv "$crate.part" "$crate"
    fi
    rm -rf "$src" "$stamp"
    tar -xzf "$crate" -C "$FA_CACHE" "$name-$version/$subdir"
    echo "$sha" >"$stamp"
  fi
  [ -f "$src/$subdir/$marker" ] || { echo "$what missing under $src/$subdir" >&2; exit 1; }
  echo "$src/$subdir"
}
FLASH_ATTN_DIR=$(fetch_crate_dir candle-flash-attn 0.11.1 \
  e8f233a5d78ac84fac2b097330faae4a26eae4c4009c54fdb0ec8b7b3c23a15b \
  kernels flash_fwd_kernel.h "FlashAttention-2 headers")
# FlashAttention-3 (Hopper; Tri Dao et al., BSD-3-Clause, as packaged by candle-flash-attn-v3,
# MIT OR Apache-2.0): only its hkernel/ headers, for engine/cuda/kernels/flash_attn3_bf16_hd128.cu.
FLASH_ATTN3_DIR=
case ",$FEATURES," in
  *,flash-attn-v3,*)
    FLASH_ATTN3_DIR=$(fetch_crate_dir candle-flash-attn-v3 0.11.1 \
      71644f2fd1a039568e4eeaa99251b2a19df476cfaaa1311074c4d1a8b1fd23af \
      hkernel flash_fwd_launch_template.h "FlashAttention-3 headers") ;;
esac

# --- 2. CUDA_HOME tree and link stubs --------------------------------------------------------------
cd "$ROOT"
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
CUDARC_VERSION=$(awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$CUDARC_VERSION" ] || { echo "cudarc is not in Cargo.lock" >&2; exit 1; }
SYS=$(ls -d "$CARGO_HOME"/registry/src/*/cudarc-"$CUDARC_VERSION"/src 2>/dev/null | head -n1 || true)
if [ -z "$SYS" ]; then
  log "fetching crates (cudarc $CUDARC_VERSION sources are needed for the stubs)"
  cargo fetch -q
  SYS=$(ls -d "$CARGO_HOME"/registry/src/*/cudarc-"$CUDARC_VERSION"/src | head -n1)
fi
CH=$TOOLS/home
STUB_STAMP=$CH/stubs.stamp
if [ "$(cat "$STUB_STAMP" 2>/dev/null)" != "cudarc-$CUDARC_VERSION $CU" ]; then
  log "generating CUDA_HOME ($CH) and link stubs from cudarc $CUDARC_VERSION"
  rm -rf "$CH"
  mkdir -p "$CH/lib64/stubs" "$CH/src"
  ln -sfn "$CU/bin" "$CH/bin"
  ln -sfn "$CU/include" "$CH/include"
  ln -sfn "$CU/nvvm" "$CH/nvvm"
  ln -sf "$CU/lib/libcudart.so.13" "$CH/lib64/libcudart.so.13"
  ln -sf libcudart.so.13 "$CH/lib64/libcudart.so"
  # stub MODULE SONAME DIR [v]: every function cudarc binds, as an empty body. `v` adds the symbol
  # version node the real library uses (cublasCreate_v2@libcublas.so.13); with it the binary is
  # byte-identical to one linked against the real wheel libraries (docs/gpu.md §1, step 2).
  stub() {
    local c=$CH/src/$1.c ver=()
    grep -oE '^pub unsafe fn [A-Za-z0-9_]+' "$SYS/$1/sys/mod.rs" | sed 's/pub unsafe fn //' | sort -u \
      | sed 's/.*/void &(void){}/' >"$c"
    if [ "${4:-}" = v ]; then
      echo "$2 { global: *; };" >"$CH/src/$1.map"
      ver=(-Wl,--version-script="$CH/src/$1.map")
    fi
    gcc -shared -fPIC -Wl,-soname,"$2" "${ver[@]}" -o "$3/${2%%.so*}.so" "$c"
    # The soname too, so the smoke check's loader finds the stubs (never shipped to a GPU machine).
    ln -sf "${2%%.so*}.so" "$3/$2"
  }
  stub driver   libcuda.so.1      "$CH/lib64/stubs"
  stub cublas   libcublas.so.13   "$CH/lib64" v
  stub cublaslt libcublasLt.so.13 "$CH/lib64" v
  stub curand   libcurand.so.10   "$CH/lib64" v
  stub nvrtc    libnvrtc.so.13    "$CH/lib64" v
  # The fake driver of the smoke check: every call fails with CUDA_ERROR_NO_DEVICE (100) and the
  # error-string calls answer, so a correct binary reports "no CUDA device" instead of crashing.
  mkdir -p "$CH/fake-driver"
  {
    echo '#include <stddef.h>'
    echo 'int cuGetErrorString(int e, const char **s) { *s = e == 100 ? "no CUDA device (fake driver)" : "fake driver error"; return 0; }'
    echo 'int cuGetErrorName(int e, const char **s) { *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN"; return 0; }'
    grep -oE '^pub unsafe fn [A-Za-z0-9_]+' "$SYS/driver/sys/mod.rs" | sed 's/pub unsafe fn //' | sort -u \
      | grep -vx 'cuGetErrorString\|cuGetErrorName' | sed 's/.*/int &(void) { return 100; }/'
  } >"$CH/src/fake_driver.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CH/fake-driver/libcuda.so.1" "$CH/src/fake_driver.c"
  echo "cudarc-$CUDARC_VERSION $CU" >"$STUB_STAMP"
fi

# Fatbin compression (driver 580+ decompresses it). candle's CUDA backend links candle-kernels'
# libmoe.a, 15 GGUF/MoE kernel files that FLUX never runs, as 33.5 MB of uncompressed sm_90a SASS:
# with it the stripped binary was 75 MB. "size" mode cuts that fatbin about 5x. nvcc reads
# NVCC_APPEND_FLAGS itself, so this reaches candle-kernels' own nvcc calls (PTX output unchanged).
FATBIN_FLAGS="-Xfatbin=-compress-all --compress-mode=size"
case " ${NVCC_APPEND_FLAGS:-} " in
  *" --compress-mode="*) ;;
  *) export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }$FATBIN_FLAGS" ;;
esac
# Neither cargo nor cudaforge's object cache tracks NVCC_APPEND_FLAGS, so objects compiled with
# other flags would be reused: rebuild candle-kernels once whenever the flags change.
FLAGS_STAMP=$CARGO_TARGET_DIR/release/.kontext-nvcc-append-flags
if [ "$TOOLS_ONLY" = 0 ] && [ "$(cat "$FLAGS_STAMP" 2>/dev/null)" != "$NVCC_APPEND_FLAGS" ]; then
  if compgen -G "$CARGO_TARGET_DIR/release/build/candle-kernels-*" >/dev/null; then
    log "NVCC_APPEND_FLAGS changed to '$NVCC_APPEND_FLAGS': rebuilding candle-kernels"
    cargo clean -q --release -p candle-kernels
  fi
  mkdir -p "$CARGO_TARGET_DIR/release"
  echo "$NVCC_APPEND_FLAGS" >"$FLAGS_STAMP"
fi

THREADS=${KONTEXT_NVCC_THREADS:-$(nproc)}
export CUDA_HOME=$CH
export PATH=$CH/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$THREADS}
export KONTEXT_NVCC_THREADS=$THREADS
export KONTEXT_CUTLASS_DIR=$CUTLASS_DIR
export KONTEXT_FLASH_ATTN_DIR=$FLASH_ATTN_DIR
export KONTEXT_FLASH_ATTN3_DIR=$FLASH_ATTN3_DIR
if [ "$TOOLS_ONLY" = 1 ]; then
  echo "export CUDA_HOME=$CUDA_HOME PATH=$CH/bin:\$PATH CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
  echo "export CUDAFORGE_THREADS=$CUDAFORGE_THREADS KONTEXT_NVCC_THREADS=$THREADS KONTEXT_CUTLASS_DIR=$CUTLASS_DIR"
  echo "export KONTEXT_FLASH_ATTN_DIR=$FLASH_ATTN_DIR KONTEXT_FLASH_ATTN3_DIR=$FLASH_ATTN3_DIR"
  echo "export NVCC_APPEND_FLAGS='$NVCC_APPEND_FLAGS'"
  exit 0
fi

# --- 3. build --------------------------------------------------------------------------------------
log "cargo build --release -p kontext-worker --features $FEATURES (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
started=$(date +%s)
cargo build --release -p kontext-worker --bin kontext-worker --features "$FEATURES"
log "build took $(( $(date +%s) - started )) s"

# --- 4. strip, size ---------------------------------------------------------------------------------
mkdir -p "$OUT"
BIN=$OUT/kontext-worker
strip -o "$BIN" "$CARGO_TARGET_DIR/release/kontext-worker"
xz -T0 -6 -c "$BIN" >"$BIN.xz"
raw=$(stat -c %s "$BIN")
packed=$(stat -c %s "$BIN.xz")
log "binary: $BIN $raw bytes ($(( raw / 1048576 )) MiB); xz: $packed bytes ($(( packed / 1048576 )) MiB)"
log "needs: $(readelf -d "$BIN" | awk '/NEEDED/ { gsub(/[][]/, "", $5); printf "%s ", $5 }')"
# What scripts/gpu-bench.sh runs on a GPU machine (device tool: carry [".tools/gpu-dist"]).
mkdir -p "$ROOT/.tools/gpu-dist"
cp "$BIN.xz" "$ROOT/.tools/gpu-dist/kontext-worker.xz"
log "carry-ready copy: .tools/gpu-dist/kontext-worker.xz"
if [ "$raw" -gt $(( 60 * 1000 * 1000 )) ]; then
  echo "the stripped binary is over 60 MB ($raw bytes)" >&2
  exit 1
fi

# --- 5. smoke check ---------------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
  log "smoke check: the binary must start and fail cleanly at device creation under a fake driver"
  set +e
  msg=$(LD_LIBRARY_PATH="$CH/fake-driver:$CH/lib64" "$BIN" run --model tiny --device cuda \
    --prompt smoke --out "$OUT/smoke.png" 2>&1)
  rc=$?
  set -e
  echo "$msg" | sed 's/^/    /' >&2
  if [ "$rc" = 0 ] || ! grep -q "CUDA_ERROR_NO_DEVICE" <<<"$msg"; then
    echo "smoke check FAILED: expected a non-zero exit naming CUDA_ERROR_NO_DEVICE, got rc=$rc" >&2
    exit 1
  fi
  log "smoke check passed (rc=$rc, CUDA_ERROR_NO_DEVICE reported)"
fi
echo "$BIN"
