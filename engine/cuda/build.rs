//! Compiles our CUDA kernels with nvcc into one static library: the trimmed flash-attention kernel
//! (`kernels/flash_attn_bf16_hd128.cu`, feature `flash-attn`; FlashAttention-3 for Hopper,
//! `kernels/flash_attn3_bf16_hd128.cu`, feature `flash-attn-v3`), the fused elementwise kernels
//! (`kernels/fused_bf16.cu`, feature `fused`) and the FP8 quantization kernels
//! (`kernels/fp8_gemm.cu`, feature `fp8-gemm`). Without those features this does nothing, so CPU
//! builds (and `cargo test --workspace` in CI) never look for a CUDA toolchain.
//!
//! Inputs (scripts/build-cuda.sh sets them): `nvcc` on PATH or `$CUDA_HOME/bin/nvcc`;
//! `KONTEXT_CUTLASS_DIR` = a CUTLASS 3.5 source tree (the nvidia-cutlass==3.5.0.0 wheel's
//! `cutlass_library/source`; flash-attention only); `KONTEXT_FLASH_ATTN_DIR` = the `kernels/`
//! directory of the published candle-flash-attn 0.11.1 crate, which holds the FlashAttention-2
//! forward headers (not kept in this repository: the script downloads the crate, checks its
//! SHA-256 and unpacks it under `$CARGO_TARGET_DIR/third-party`; flash-attention only);
//! `KONTEXT_FLASH_ATTN3_DIR` = the `hkernel/` directory of the published candle-flash-attn-v3
//! 0.11.1 crate (FlashAttention-3 headers, fetched the same way; `flash-attn-v3` only);
//! `CUDA_COMPUTE_CAP` = comma-separated compute capabilities (default 90: H100/H200; these kernels
//! use sm80 instructions at most, so `80,90` also serves A100).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const FLASH: &str = "kernels/flash_attn_bf16_hd128.cu";
const FLASH3: &str = "kernels/flash_attn3_bf16_hd128.cu";
const FUSED: &str = "kernels/fused_bf16.cu";
const FP8: &str = "kernels/fp8_gemm.cu";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    let flash = std::env::var_os("CARGO_FEATURE_FLASH_ATTN").is_some();
    let fused = std::env::var_os("CARGO_FEATURE_FUSED").is_some();
    let fp8 = std::env::var_os("CARGO_FEATURE_FP8_GEMM").is_some();
    if !flash && !fused && !fp8 {
        return;
    }
    for var in [
        "KONTEXT_CUTLASS_DIR",
        "KONTEXT_FLASH_ATTN_DIR",
        "KONTEXT_FLASH_ATTN3_DIR",
        "CUDA_COMPUTE_CAP",
        "CUDA_HOME",
        "NVCC",
        // nvcc reads these itself; scripts/build-cuda.sh sets the fatbin compression there.
        "NVCC_APPEND_FLAGS",
        "NVCC_PREPEND_FLAGS",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let caps = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let gencodes = gencodes(&caps);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut objects = Vec::new();
    if fused {
        objects.push(compile(FUSED, &[], &gencodes, &out));
    }
    if fp8 {
        objects.push(compile(FP8, &[], &gencodes, &out));
    }
    if flash {
        let cutlass = match std::env::var_os("KONTEXT_CUTLASS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => fail(
                "KONTEXT_CUTLASS_DIR is not set: point it at a CUTLASS 3.5 source tree (the \
                 nvidia-cutlass==3.5.0.0 wheel's cutlass_library/source); scripts/build-cuda.sh does",
            ),
        };
        if !cutlass.join("include/cute/tensor.hpp").is_file() {
            fail(&format!(
                "KONTEXT_CUTLASS_DIR={} has no include/cute/tensor.hpp",
                cutlass.display()
            ));
        }
        let headers = match std::env::var_os("KONTEXT_FLASH_ATTN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => fail(
                "KONTEXT_FLASH_ATTN_DIR is not set: point it at the kernels/ directory of the \
                 candle-flash-attn 0.11.1 crate (the FlashAttention-2 headers, not kept in this \
                 repository); scripts/build-cuda.sh downloads, checks and unpacks it",
            ),
        };
        for header in ["flash.h", "flash_fwd_kernel.h"] {
            if !headers.join(header).is_file() {
                fail(&format!(
                    "KONTEXT_FLASH_ATTN_DIR={} has no {header}: run scripts/build-cuda.sh, which \
                     fetches candle-flash-attn 0.11.1 and exports the variable",
                    headers.display()
                ));
            }
        }
        println!("cargo::rerun-if-changed={}", headers.display());
        let includes = [headers, cutlass.join("include")];
        objects.push(compile(FLASH, &includes, &gencodes, &out));
        if std::env::var_os("CARGO_FEATURE_FLASH_ATTN_V3").is_some() {
            let headers = match std::env::var_os("KONTEXT_FLASH_ATTN3_DIR") {
                Some(dir) if !dir.is_empty() => PathBuf::from(dir),
                _ => fail(
                    "KONTEXT_FLASH_ATTN3_DIR is not set: point it at the hkernel/ directory of the \
                     candle-flash-attn-v3 0.11.1 crate (the FlashAttention-3 headers); \
                     scripts/build-cuda.sh --flash-attn-v3 downloads, checks and unpacks it",
                ),
            };
            if !headers.join("flash_fwd_launch_template.h").is_file() {
                fail(&format!(
                    "KONTEXT_FLASH_ATTN3_DIR={} has no flash_fwd_launch_template.h",
                    headers.display()
                ));
            }
            println!("cargo::rerun-if-changed={}", headers.display());
            // Warpgroup MMA and TMA are sm_90a-only instructions: Hopper alone, whatever
            // CUDA_COMPUTE_CAP lists (other GPUs keep FlashAttention-2 at run time).
            let includes = [headers, cutlass.join("include")];
            let hopper = ["-gencode=arch=compute_90a,code=sm_90a".to_string()];
            objects.push(compile(FLASH3, &includes, &hopper, &out));
        }
    }

    let lib = out.join("libkontext_cuda_kernels.a");
    let _ = std::fs::remove_file(&lib);
    let status = Command::new(std::env::var("AR").unwrap_or_else(|_| "ar".into()))
        .arg("crs")
        .arg(&lib)
        .args(&objects)
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run ar: {e}")));
    if !status.success() {
        fail("ar failed to archive the kernel objects");
    }
    println!("cargo::rustc-link-search=native={}", out.display());
    println!("cargo::rustc-link-lib=static=kontext_cuda_kernels");
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        for sub in ["lib64", "lib"] {
            let dir = Path::new(&home).join(sub);
            if dir.is_dir() {
                println!("cargo::rustc-link-search=native={}", dir.display());
            }
        }
    }
    println!("cargo::rustc-link-lib=dylib=cudart");
    println!("cargo::rustc-link-lib=dylib=stdc++");
}

/// nvcc's `-gencode` for every compute capability in `caps`: plain sm_XX SASS (no PTX). No
/// sm_90a-only instructions are used by these kernels, and embedded PTX from a newer nvcc than
/// the driver would be rejected at load time anyway.
fn gencodes(caps: &str) -> Vec<String> {
    let mut out = Vec::new();
    for cap in caps.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let cap = cap.trim_end_matches('a');
        if cap.parse::<u32>().map_or(true, |c| c < 80) {
            fail(&format!(
                "CUDA_COMPUTE_CAP entry {cap:?}: these kernels need 80 or newer"
            ));
        }
        out.push(format!("-gencode=arch=compute_{cap},code=sm_{cap}"));
    }
    out
}

/// `nvcc -c` of one kernel file for every target in `gencodes`; returns the object.
fn compile(src: &str, includes: &[PathBuf], gencodes: &[String], out: &Path) -> PathBuf {
    let nvcc = nvcc_path();
    let stem = Path::new(src)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("kernel");
    let obj = out.join(format!("{stem}.o"));
    let mut cmd = Command::new(&nvcc);
    cmd.arg("-c").arg(src).arg("-o").arg(&obj);
    for inc in includes {
        cmd.arg("-I").arg(inc);
    }
    cmd.args(["-std=c++17", "-O3", "--use_fast_math"])
        .args(["--expt-relaxed-constexpr", "--expt-extended-lambda"])
        // FlashAttention relies on the half/bf16 operators that CUDA hides by default.
        .args([
            "-U__CUDA_NO_HALF_OPERATORS__",
            "-U__CUDA_NO_HALF_CONVERSIONS__",
        ])
        .args([
            "-U__CUDA_NO_HALF2_OPERATORS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ])
        .args(["-Xcompiler", "-fPIC"])
        // CUTLASS 3.5 names vector types that CUDA 13 deprecates; the warnings are noise.
        .args(["-Xcompiler", "-Wno-deprecated-declarations"]);
    cmd.args(gencodes);
    if gencodes.len() > 1 {
        cmd.args(["--threads", &gencodes.len().to_string()]);
    }
    let started = Instant::now();
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", nvcc.display())));
    if !status.success() {
        fail(&format!("nvcc failed ({status}) compiling {src}"));
    }
    println!(
        "cargo::warning={src} ({}) compiled in {:.0} s",
        gencodes.join(" "),
        started.elapsed().as_secs_f64()
    );
    obj
}

fn nvcc_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("nvcc")
}

fn fail(msg: &str) -> ! {
    eprintln!("kontext-cuda build: {msg}");
    std::process::exit(1);
}
