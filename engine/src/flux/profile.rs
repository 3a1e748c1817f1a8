//! Wall-time accounting of the transformer by op class, for the CPU benchmark.
//!
//! Disabled by default (one relaxed atomic load per scope). On CPU every candle op is synchronous,
//! so wall time around an op is its cost; on CUDA the numbers would only measure launches unless
//! a device to synchronise is set (`set_sync_device`): then every scope waits for the device at
//! its start and end, so it measures its kernels (the GPU benchmark's per-step breakdown).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use candle_core::Device;
use std::time::{Duration, Instant};

/// What a timed region does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// The attention core: q·kᵀ, softmax, ·v.
    Attention = 0,
    /// Linear layers (GEMMs against weights).
    Matmul = 1,
    /// Norms, modulation, RoPE, activations, residuals, layout copies.
    Elementwise = 2,
}

const CLASSES: usize = 3;
static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; CLASSES] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

static SYNC: Mutex<Option<Device>> = Mutex::new(None);

/// The device every scope synchronises at its start and end while accounting is on (`None`:
/// none; a CPU needs none).
pub fn set_sync_device(dev: Option<Device>) {
    if let Ok(mut s) = SYNC.lock() {
        *s = dev;
    }
}

fn synchronize() {
    if let Ok(s) = SYNC.lock()
        && let Some(dev) = s.as_ref()
    {
        // A failed wait shows up as the next op's error; the profile only loses accuracy.
        let _ = dev.synchronize();
    }
}

/// Turns accounting on or off (process-wide).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Clears the accumulated times.
pub fn reset() {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
}

/// Accumulated time per class: (attention, matmul, elementwise).
pub fn snapshot() -> (Duration, Duration, Duration) {
    let get = |c: OpClass| Duration::from_nanos(NANOS[c as usize].load(Ordering::Relaxed));
    (
        get(OpClass::Attention),
        get(OpClass::Matmul),
        get(OpClass::Elementwise),
    )
}

/// Adds the time until it is dropped to `class` (when accounting is enabled).
#[must_use = "the scope measures until it is dropped"]
pub struct Scope {
    class: OpClass,
    start: Option<Instant>,
}

pub fn scope(class: OpClass) -> Scope {
    let start = ENABLED.load(Ordering::Relaxed).then(|| {
        synchronize();
        Instant::now()
    });
    Scope { class, start }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(s) = self.start {
            synchronize();
            let ns = u64::try_from(s.elapsed().as_nanos()).unwrap_or(u64::MAX);
            NANOS[self.class as usize].fetch_add(ns, Ordering::Relaxed);
        }
    }
}
