//! Flags of the worker (`kontext-worker serve`), grouped so `kontext up` can reuse the model and
//! job-loop groups with `#[command(flatten)]`. Every flag also reads a `KONTEXT_*` environment
//! variable (storage uses the standard `AWS_*` names, see `kontext_storage::StorageArgs`); its doc
//! comment is its `--help`. Flags become a validated `WorkerSettings` once, at start; their defaults are
//! `WorkerSettings`'s.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use candle_core::DType;
use clap::Args;
use kontext_engine::flux::LinearPrecision;
use kontext_engine::loader::LoadOptions;
use kontext_engine::{Engine, EngineError};
use kontext_proto::clock::{format_duration, parse_duration};
use kontext_proto::resolution::DEFAULT_MAX_PIXELS;
use kontext_storage::StorageArgs;

use crate::settings::WorkerSettings;

/// The compute dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

/// How the transformer blocks' linear weights are stored (docs/engine.md §FP8 linears).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LinearPrecisionArg {
    /// The compute dtype.
    #[default]
    Native,
    /// FP8 E4M3 weights with per-channel scales, activations quantized per token.
    Fp8,
}

impl From<LinearPrecisionArg> for LinearPrecision {
    fn from(arg: LinearPrecisionArg) -> Self {
        match arg {
            LinearPrecisionArg::Native => Self::Native,
            LinearPrecisionArg::Fp8 => Self::Fp8,
        }
    }
}

/// Which model runs, where.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// `shapes` (the real Kontext architecture at small size, trained on the shapes world; the
    /// weights in models/shapes), `tiny` (toy size, random weights generated from --tiny-seed into
    /// a cache directory on first use: for fast tests) or a directory of FLUX.1-Kontext-dev
    /// weights (BFL single files or diffusers folders). Never downloads anything.
    #[arg(long, env = "KONTEXT_MODEL", default_value = "shapes")]
    pub model: String,

    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "KONTEXT_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Compute dtype; default f32 on CPU, bf16 on CUDA.
    #[arg(long, env = "KONTEXT_DTYPE", value_enum)]
    pub dtype: Option<DtypeArg>,

    /// `fp8` stores the transformer blocks' linear weights in FP8 E4M3 (per-channel scales,
    /// activations quantized per token): about half the transformer memory of bf16, at an
    /// output error docs/engine.md §FP8 linears reports.
    #[arg(long, env = "KONTEXT_LINEAR_PRECISION", value_enum, default_value_t)]
    pub linear_precision: LinearPrecisionArg,

    /// Weights seed of `--model tiny`.
    #[arg(long, env = "KONTEXT_TINY_SEED", default_value_t = 0)]
    pub tiny_seed: u64,

    /// Largest target or context area the engine accepts, in pixels; larger jobs fail as
    /// invalid input. Keep it at least the coordinator's --max-pixels.
    #[arg(long, env = "KONTEXT_ENGINE_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    pub engine_max_pixels: u64,

    /// In a CUDA build with `flash-attn-v3`: whether Hopper GPUs run FlashAttention-3 (`true`)
    /// or stay on FlashAttention-2 (`false`), process-wide. No effect in other builds and on
    /// other devices (docs/gpu.md §1).
    #[arg(long, env = "KONTEXT_FLASH_ATTN3", default_value_t = true, action = clap::ArgAction::Set)]
    pub flash_attn3: bool,
}

impl ModelArgs {
    /// What the engine's loader needs.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            model: self.model.clone(),
            device: self.device.clone(),
            dtype: self.dtype.map(|d| match d {
                DtypeArg::F32 => DType::F32,
                DtypeArg::Bf16 => DType::BF16,
            }),
            tiny_seed: self.tiny_seed,
            max_pixels: self.engine_max_pixels,
            linear_precision: self.linear_precision.into(),
        }
    }
}

/// Loads the engine `args` name (slow for real weights: call on a blocking thread).
pub fn load_engine(args: &ModelArgs) -> Result<Box<dyn Engine>, EngineError> {
    kontext_engine::flux::attention::set_flash_attn3(args.flash_attn3);
    kontext_engine::loader::load_engine(&args.load_options())
}

/// The `tiny` model on CPU: what tests use (the command line's default is `shapes`).
impl Default for ModelArgs {
    fn default() -> Self {
        Self {
            model: "tiny".into(),
            device: "cpu".into(),
            dtype: None,
            linear_precision: LinearPrecisionArg::Native,
            tiny_seed: 0,
            engine_max_pixels: DEFAULT_MAX_PIXELS,
            flash_attn3: true,
        }
    }
}

/// How the worker takes and keeps jobs.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Name of this worker in the queue (running jobs show it). Default: `<hostname>-<pid>-<random>`,
    /// unique per process start.
    #[arg(long, env = "KONTEXT_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Lease of a claimed job: renewed every third of it; a job whose worker stops renewing is
    /// re-queued by the coordinator's reaper this long after the last renewal (e.g. 30s, 1500ms).
    #[arg(long, env = "KONTEXT_LEASE_TTL", value_parser = parse_duration,
        default_value = format_duration(WorkerSettings::DEFAULT_LEASE_TTL))]
    pub lease_ttl: Duration,

    /// On SIGTERM/SIGINT: finish the running job if its expected remaining time fits this,
    /// else cancel it between steps and give it back to the queue. Keep it below the
    /// orchestrator's kill timeout (Kubernetes: terminationGracePeriodSeconds, 30 s by default).
    #[arg(long, env = "KONTEXT_GRACE_PERIOD", value_parser = parse_duration,
        default_value = format_duration(WorkerSettings::DEFAULT_GRACE_PERIOD))]
    pub grace_period: Duration,

    /// Longest blocking wait of one claim; also bounds how long a drain waits for a claim call.
    #[arg(long, env = "KONTEXT_CLAIM_WAIT", value_parser = parse_duration,
        default_value = format_duration(WorkerSettings::DEFAULT_CLAIM_WAIT))]
    pub claim_wait: Duration,

    /// Shortest time between two progress events of a job (at least 500ms: 2 per second).
    #[arg(long, env = "KONTEXT_PROGRESS_INTERVAL", value_parser = parse_duration,
        default_value = format_duration(WorkerSettings::DEFAULT_PROGRESS_INTERVAL))]
    pub progress_interval: Duration,
}

impl Default for ConsumerArgs {
    /// The flags' defaults, without a worker id.
    fn default() -> Self {
        Self {
            worker_id: None,
            lease_ttl: WorkerSettings::DEFAULT_LEASE_TTL,
            grace_period: WorkerSettings::DEFAULT_GRACE_PERIOD,
            claim_wait: WorkerSettings::DEFAULT_CLAIM_WAIT,
            progress_interval: WorkerSettings::DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

/// Shortest lease accepted: the heartbeat must fit three renewals into it.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(300);
/// Shortest progress interval: two events per second.
pub const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// A flag value that cannot work; names the flag and the limit.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

impl ConsumerArgs {
    /// The validated settings.
    pub fn settings(&self) -> Result<WorkerSettings, ConfigError> {
        if self.lease_ttl < MIN_LEASE_TTL {
            return Err(ConfigError {
                flag: "lease-ttl",
                reason: format!(
                    "must be at least {MIN_LEASE_TTL:?} (got {:?})",
                    self.lease_ttl
                ),
            });
        }
        if self.progress_interval < MIN_PROGRESS_INTERVAL {
            return Err(ConfigError {
                flag: "progress-interval",
                reason: format!(
                    "must be at least {MIN_PROGRESS_INTERVAL:?} (got {:?}): progress is published at most twice a second",
                    self.progress_interval
                ),
            });
        }
        if self.claim_wait.is_zero() {
            return Err(ConfigError {
                flag: "claim-wait",
                reason: "must be above zero (a zero wait would spin on an empty queue)".into(),
            });
        }
        let worker_id = match &self.worker_id {
            Some(id) if id.trim().is_empty() || id.len() > 200 => {
                return Err(ConfigError {
                    flag: "worker-id",
                    reason: "must be 1 to 200 characters".into(),
                });
            }
            Some(id) => id.trim().to_owned(),
            None => default_worker_id(),
        };
        let mut settings = WorkerSettings::with_lease(worker_id, self.lease_ttl);
        settings.grace_period = self.grace_period;
        settings.claim_wait = self.claim_wait;
        settings.progress_interval = self.progress_interval;
        Ok(settings)
    }
}

/// `<hostname>-<pid>-<4 random hex>`: stable for the process, new on every start, so a restarted
/// pod never inherits its predecessor's stream entries.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let nonce: u16 = rand::random();
    format!("{host}-{}-{nonce:04x}", std::process::id())
}

/// Flags of `kontext-worker serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Redis URL of the job queue, e.g. redis://:password@host:6379/0, or through Sentinel
    /// (failovers followed): redis+sentinel://:password@sentinel1:26379,sentinel2/service/0.
    #[arg(long, env = "KONTEXT_REDIS_URL", hide_env_values = true)]
    pub redis_url: String,

    /// Namespace of the queue's keys inside Redis (the coordinator's --redis-namespace).
    #[arg(long, env = "KONTEXT_REDIS_NAMESPACE", default_value = "kx")]
    pub redis_namespace: String,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub consumer: ConsumerArgs,

    /// Address of /healthz, /readyz and /metrics (use 0.0.0.0:9091 in a pod for probes).
    #[arg(long, env = "KONTEXT_METRICS_LISTEN", default_value = "127.0.0.1:9091")]
    pub metrics_listen: SocketAddr,

    /// Log lines and trace export (--json-logs, --otlp-endpoint).
    #[command(flatten)]
    pub logs: kontext_telemetry::LogArgs,
}

impl fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The Redis URL and the S3 secret may carry credentials.
        f.debug_struct("ServeArgs")
            .field("redis_url", &"<redacted>")
            .field("redis_namespace", &self.redis_namespace)
            .field("bucket", &self.storage.bucket)
            .field("data_dir", &self.storage.data_dir)
            .field("s3_endpoint", &self.storage.s3_endpoint)
            .field("model", &self.model)
            .field("consumer", &self.consumer)
            .field("metrics_listen", &self.metrics_listen)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_become_settings_and_secrets_stay_out_of_debug() {
        let cli = Cli::try_parse_from([
            "x",
            "--redis-url",
            "redis://:hunter2hunter2@db:6379",
            "--data-dir",
            "/tmp/k",
            "--lease-ttl",
            "1500ms",
            "--grace-period",
            "5s",
            "--worker-id",
            "gpu-0",
        ])
        .expect("valid flags");
        let settings = cli.serve.consumer.settings().expect("valid settings");
        assert_eq!(settings.lease_ttl, Duration::from_millis(1500));
        assert_eq!(settings.heartbeat_every, Duration::from_millis(500));
        assert_eq!(settings.grace_period, Duration::from_secs(5));
        assert_eq!(settings.worker_id, "gpu-0");
        assert!(!format!("{:?}", cli.serve).contains("hunter2"));
        let cli = Cli::try_parse_from([
            "x",
            "--redis-url",
            "redis://db",
            "--data-dir",
            "/tmp/k",
            "--flash-attn3",
            "false",
        ])
        .expect("valid flags");
        assert!(!cli.serve.model.flash_attn3);
    }

    #[test]
    fn flag_defaults_are_the_settings_defaults() {
        let cli = Cli::try_parse_from(["x", "--redis-url", "redis://db", "--data-dir", "/tmp/k"])
            .expect("valid flags");
        let (flags, defaults) = (cli.serve.consumer, ConsumerArgs::default());
        assert_eq!(flags.lease_ttl, defaults.lease_ttl);
        assert_eq!(flags.grace_period, defaults.grace_period);
        assert_eq!(flags.claim_wait, defaults.claim_wait);
        assert_eq!(flags.progress_interval, defaults.progress_interval);
        assert_eq!(
            cli.serve.model.flash_attn3,
            ModelArgs::default().flash_attn3
        );
        let settings = flags.settings().expect("valid settings");
        let reference = WorkerSettings::new(settings.worker_id.clone());
        assert_eq!(settings.heartbeat_every, reference.heartbeat_every);
        assert_eq!(settings.progress_interval, reference.progress_interval);
    }

    #[test]
    fn bad_values_name_the_flag_and_the_limit() {
        let args = ConsumerArgs {
            lease_ttl: Duration::from_millis(100),
            ..ConsumerArgs::default()
        };
        let err = args.settings().expect_err("too short").to_string();
        assert!(
            err.contains("--lease-ttl") && err.contains("300ms"),
            "{err}"
        );
        let args = ConsumerArgs {
            progress_interval: Duration::from_millis(100),
            ..ConsumerArgs::default()
        };
        let err = args.settings().expect_err("too often").to_string();
        assert!(
            err.contains("--progress-interval") && err.contains("500ms"),
            "{err}"
        );
        let id = ConsumerArgs::default()
            .settings()
            .expect("defaults")
            .worker_id;
        assert!(id.contains(&std::process::id().to_string()), "{id}");
    }
}
