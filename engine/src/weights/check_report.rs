//! The text of a `check-weights` report and the resident memory it computes.

use std::fmt;

use super::check::{CheckReport, ComponentCheck};

/// Problems and unexpected tensors listed per component before "… and N more".
const LISTED: usize = 20;

/// Resident bytes of the weights for one device/dtype choice:
/// transformer, T5 encoder, CLIP text, autoencoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Resident {
    pub label: &'static str,
    pub bytes: [u64; 4],
}

impl Resident {
    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }
}

impl CheckReport {
    /// Weight memory per device and dtype, from the parameter counts: bf16 on CUDA (the
    /// autoencoder in f32, the worker's default), the same with FP8 block linears (one byte per
    /// weight plus an f32 scale per output row), and f32 on the CPU (text encoders included); for
    /// a GGUF transformer, its block-format tensors at their stored size instead.
    pub fn resident(&self) -> Vec<Resident> {
        let params = |name: &str| self.component(name).map_or(0, ComponentCheck::parameters);
        let (t, t5, clip, vae) = (
            params("transformer"),
            params("t5 encoder"),
            params("clip text"),
            params("autoencoder"),
        );
        let (block, rows) = self
            .component("transformer")
            .map_or((0, 0), ComponentCheck::block_linear_elements);
        // A GGUF transformer's block-format tensors stay in their format (`GgufLinear`).
        let (q_elems, q_bytes) = self
            .component("transformer")
            .map_or((0, 0), |c| c.block_format);
        if q_elems > 0 {
            return vec![
                Resident {
                    label: "cuda, bf16 + gguf linears",
                    bytes: [2 * (t - q_elems) + q_bytes, 2 * t5, 2 * clip, 4 * vae],
                },
                Resident {
                    label: "cpu, f32 + gguf linears",
                    bytes: [4 * (t - q_elems) + q_bytes, 4 * t5, 4 * clip, 4 * vae],
                },
            ];
        }
        vec![
            Resident {
                label: "cuda, bf16",
                bytes: [2 * t, 2 * t5, 2 * clip, 4 * vae],
            },
            Resident {
                label: "cuda, bf16 + fp8 linears",
                bytes: [
                    2 * (t - block) + block + 4 * rows,
                    2 * t5,
                    2 * clip,
                    4 * vae,
                ],
            },
            Resident {
                label: "cpu, f32",
                bytes: [4 * t, 4 * t5, 4 * clip, 4 * vae],
            },
        ]
    }
}

fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= f64::from(1u32 << 30) {
        format!("{:.2} GiB", b / f64::from(1u32 << 30))
    } else {
        format!("{:.1} MiB", b / f64::from(1u32 << 20))
    }
}

fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n => n.to_string(),
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problems = self.problems().count();
        writeln!(
            f,
            "check-weights {}: {}",
            self.root.display(),
            if problems == 0 {
                "OK".to_string()
            } else {
                format!("{problems} problem(s)")
            }
        )?;
        writeln!(
            f,
            "{:<12} {:<44} {:>5} {:>7} {:>10} {:>10}  stored dtypes",
            "component", "layout", "files", "tensors", "params", "stored"
        )?;
        for c in &self.components {
            let dtypes: Vec<String> = c.dtypes.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
            writeln!(
                f,
                "{:<12} {:<44} {:>5} {:>7} {:>10} {:>10}  {}",
                c.name,
                c.layout,
                c.files.len(),
                c.required.len(),
                count(c.parameters()),
                gib(c.stored_bytes),
                dtypes.join(", ")
            )?;
        }
        writeln!(f, "resident weights (text encoders kept resident):")?;
        writeln!(
            f,
            "  {:<26} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "device, dtype", "transformer", "t5 encoder", "clip text", "autoencoder", "total"
        )?;
        for r in self.resident() {
            writeln!(
                f,
                "  {:<26} {:>12} {:>12} {:>12} {:>12} {:>12}",
                r.label,
                gib(r.bytes[0]),
                gib(r.bytes[1]),
                gib(r.bytes[2]),
                gib(r.bytes[3]),
                gib(r.total())
            )?;
        }
        for c in self.components.iter().filter(|c| !c.problems.is_empty()) {
            writeln!(f, "{} problems ({}):", c.name, c.problems.len())?;
            for p in c.problems.iter().take(LISTED) {
                writeln!(f, "  - {p}")?;
            }
            if c.problems.len() > LISTED {
                writeln!(f, "  … and {} more", c.problems.len() - LISTED)?;
            }
        }
        for c in self.components.iter().filter(|c| !c.unexpected.is_empty()) {
            writeln!(
                f,
                "{}: {} stored tensor(s) the engine never reads (ignored):",
                c.name,
                c.unexpected.len()
            )?;
            for k in c.unexpected.iter().take(LISTED) {
                writeln!(f, "  - {k}")?;
            }
            if c.unexpected.len() > LISTED {
                writeln!(f, "  … and {} more", c.unexpected.len() - LISTED)?;
            }
        }
        Ok(())
    }
}
