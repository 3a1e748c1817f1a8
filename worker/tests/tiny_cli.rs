//! `kontext-worker tiny` writes a model that `ModelDir::open` loads, in both layouts, and the
//! same seed gives the same files through the binary as through the library.

use std::process::Command;

use anyhow::{Result, ensure};
use kontext_engine::config::{FluxConfig, VaeConfig};
use kontext_engine::weights::{Layout, ModelDir};

fn run_tiny(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_kontext-worker"))
        .arg("tiny")
        .args(args)
        .output()?)
}

#[test]
fn tiny_command_writes_loadable_models() -> Result<()> {
    for (flag, layout) in [("bfl", Layout::Bfl), ("diffusers", Layout::Diffusers)] {
        let dir = tempfile::tempdir()?;
        let out = run_tiny(&[
            "--seed",
            "11",
            "--layout",
            flag,
            "--out",
            &dir.path().to_string_lossy(),
        ])?;
        ensure!(
            out.status.success(),
            "tiny --layout {flag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = ModelDir::open(dir.path())?;
        ensure!(
            m.transformer_layout() == layout && m.vae_layout() == layout,
            "{flag}: wrong layout detected"
        );
        ensure!(m.flux_config() == &FluxConfig::tiny() && m.vae_config() == &VaeConfig::tiny());

        let lib = tempfile::tempdir()?;
        kontext_engine::tiny::write(lib.path(), 11, layout)?;
        let a = std::fs::read(
            dir.path()
                .join("text_encoder_2/model-00001-of-00002.safetensors"),
        )?;
        let b = std::fs::read(
            lib.path()
                .join("text_encoder_2/model-00001-of-00002.safetensors"),
        )?;
        ensure!(a == b, "{flag}: binary and library wrote different bytes");
    }
    Ok(())
}

#[test]
fn bad_layout_is_rejected_by_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = run_tiny(&["--layout", "comfy", "--out", &dir.path().to_string_lossy()])?;
    ensure!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("--layout") && err.contains("comfy"),
        "unclear error: {err}"
    );
    Ok(())
}
