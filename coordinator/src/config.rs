//! Command-line flags (`Args`; every flag also reads a `KONTEXT_*` environment variable, and its
//! doc comment is its `--help`) and the validated `Config` the server runs with.
//!
//! `Config` is built once at start (`Config::from_args`) and passed by reference afterwards; nothing
//! reads the environment later. Its `Debug` redacts every secret, so the startup log line is safe.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use kontext_proto::RetainedLimits;
use kontext_proto::clock::parse_duration;
use kontext_proto::model_profile::ModelProfile;
use kontext_proto::policy::QueueConfig;
use kontext_proto::validate::Limits;
use kontext_storage::{StorageArgs, StorageConfig, StorageError};

use crate::admin_auth::{AdminAuth, AdminAuthError};
use crate::auth::{Auth, AuthConfigError};
use crate::auth_failures::AuthFailureLimits;
pub use crate::byte_sizes::parse_bytes;
use crate::http_server::ServerLimits;
use crate::signing::Secret;

#[derive(Parser)]
#[command(
    name = "kontext-coordinator",
    version,
    about = "Kontext Fleet coordinator: the HTTP API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the OpenAPI document (JSON) and exit; docs/openapi.json is this output.
    PrintOpenapi,
}

/// Flags of the server.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. Without --api-keys it must be a loopback address.
    #[arg(long, env = "KONTEXT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Base URL clients reach this coordinator at (behind a proxy or load balancer); used in
    /// Location headers, polling_url and signed result URLs. Default: `http://<listen address>`.
    #[arg(long, env = "KONTEXT_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Redis URL of the job queue, e.g. redis://:password@host:6379/0, or through Sentinel
    /// (failovers followed): redis+sentinel://:password@sentinel1:26379,sentinel2/service/0.
    /// Absent: an in-process
    /// queue that only workers in this process can reach (embedded mode, `kontext up`).
    #[arg(long, env = "KONTEXT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Namespace of the queue's keys inside Redis (the hash tag: `kontext:{<ns>}:...`).
    #[arg(long, env = "KONTEXT_REDIS_NAMESPACE", default_value = "kx")]
    pub redis_namespace: String,

    /// After each submit, WAIT for this many Redis replicas to have the job (best effort).
    #[arg(long, env = "KONTEXT_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Redis connections held at once by blocking reads (SSE followers, `Prefer: wait`, submits
    /// that WAIT for replicas); past it those requests get 503 at once, so followers cannot
    /// exhaust Redis' maxclients and lock out the workers.
    #[arg(long, env = "KONTEXT_REDIS_MAX_BLOCKING", default_value_t = 256)]
    pub redis_max_blocking: usize,

    #[command(flatten)]
    pub storage: StorageArgs,

    /// API keys: a file with one `key tenant [max_in_flight [priorities]]` per line, or an
    /// inline list `key:tenant[:max_in_flight[:priorities]],key2:tenant2` (priorities: the
    /// classes the key may use, e.g. `standard+bulk`; all when absent). Absent: open access as tenant "default",
    /// allowed only on a loopback --listen address.
    #[arg(long, env = "KONTEXT_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// Keys of the admin API (/v1/admin/*): a file with one key per line, or `key1,key2`; at
    /// least 16 characters each. Absent: open in open loopback mode, off when --api-keys is set.
    #[arg(long, env = "KONTEXT_ADMIN_KEYS", hide_env_values = true)]
    pub admin_keys: Option<String>,

    /// Non-terminal jobs a tenant may have at once, unless its key line says otherwise
    /// (0 = no limit). Over it, submits get 429.
    #[arg(long, env = "KONTEXT_MAX_IN_FLIGHT", default_value_t = 24)]
    pub max_in_flight: u32,

    /// Largest request body (JSON with a base64 image included), e.g. 32MiB.
    #[arg(long, env = "KONTEXT_MAX_BODY_BYTES", default_value = "32MiB", value_parser = parse_bytes)]
    pub max_body_bytes: u64,

    /// Largest input image file (upload, base64 or URL), e.g. 20MiB.
    #[arg(long, env = "KONTEXT_MAX_IMAGE_BYTES", default_value = "20MiB", value_parser = parse_bytes)]
    pub max_image_bytes: u64,

    /// Largest LoRA file (POST /v1/loras or a loras[].path URL), e.g. 512MiB. At most two are
    /// received or fetched at once.
    #[arg(long, env = "KONTEXT_MAX_LORA_BYTES", default_value = "512MiB", value_parser = parse_bytes)]
    pub max_lora_bytes: u64,

    /// Most pixels (width x height) of an input image; checked from the header before decoding.
    #[arg(long, env = "KONTEXT_MAX_INPUT_PIXELS", default_value_t = 4096 * 4096)]
    pub max_input_pixels: u64,

    /// Longest side of an input image, in pixels.
    #[arg(long, env = "KONTEXT_MAX_INPUT_SIDE", default_value_t = 8192)]
    pub max_input_side: u32,

    /// Longest prompt, in characters.
    #[arg(long, env = "KONTEXT_MAX_PROMPT_CHARS", default_value_t = 2000)]
    pub max_prompt_chars: usize,

    /// Jobs a tenant may hold, counted from creation over the retention period (finished ones
    /// too: a submit-then-cancel loop cannot fill Redis). 0 = no limit.
    #[arg(long, env = "KONTEXT_MAX_RETAINED_JOBS", default_value_t = 100_000)]
    pub max_retained_jobs: u32,

    /// Chains a tenant may hold, created or forked over the retention period. 0 = no limit.
    #[arg(long, env = "KONTEXT_MAX_RETAINED_CHAINS", default_value_t = 10_000)]
    pub max_retained_chains: u32,

    /// Turns of those chains (planned, appended, and shared by forks). 0 = no limit.
    #[arg(long, env = "KONTEXT_MAX_RETAINED_TURNS", default_value_t = 100_000)]
    pub max_retained_turns: u32,

    /// Longest side of an output image, in pixels (a multiple of 16).
    #[arg(long, env = "KONTEXT_MAX_SIDE", default_value_t = 2048)]
    pub max_side: u32,

    /// Most pixels of an output image.
    #[arg(long, env = "KONTEXT_MAX_PIXELS", default_value_t = kontext_proto::resolution::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,

    /// Most denoising steps per job.
    #[arg(long, env = "KONTEXT_MAX_STEPS", default_value_t = 100)]
    pub max_steps: u32,

    /// Open HTTP connections at once; more wait, unread, until one closes (keep it below the
    /// process's file-descriptor limit).
    #[arg(long, env = "KONTEXT_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// Failed authentications a client (IPv4 address or IPv6 /64) may have back to back; past
    /// them it gets 429 on every keyed request until its budget refills.
    #[arg(long, env = "KONTEXT_AUTH_FAILURE_BURST", default_value_t = AuthFailureLimits::default().burst)]
    pub auth_failure_burst: u32,

    /// Failed authentications per minute a client's budget refills by.
    #[arg(long, env = "KONTEXT_AUTH_FAILURES_PER_MINUTE", default_value_t = AuthFailureLimits::default().per_minute)]
    pub auth_failures_per_minute: u32,

    /// Longest time a client may take to send a request's headers.
    #[arg(long, env = "KONTEXT_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Longest time a client may take to send a request's body (uploads included).
    #[arg(long, env = "KONTEXT_BODY_READ_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// The model directory the workers run (or its kontext_model.json), when it was trained at
    /// other sizes than FLUX.1-Kontext-dev (e.g. models/shapes, 96x96): default output size,
    /// smallest side and the sizes edits snap to follow it. Absent: the 12B model's sizes.
    #[arg(long, env = "KONTEXT_MODEL_PROFILE")]
    pub model_profile: Option<std::path::PathBuf>,

    /// Fetch input_image URLs and deliver webhooks to private, loopback, link-local and CGNAT
    /// addresses too. Off by default (SSRF guard); for trusted networks and tests only.
    #[arg(long, env = "KONTEXT_ALLOW_PRIVATE_URLS", value_parser = BoolishValueParser::new())]
    pub allow_private_urls: bool,

    /// Time limit for fetching one input_image URL (e.g. 10s).
    #[arg(long, env = "KONTEXT_URL_FETCH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub url_fetch_timeout: Duration,

    /// Secret for signed result URLs of local storage (/v1/blobs/...). Set the same value on
    /// every coordinator behind one load balancer; absent: random per process (URLs then stop
    /// working when the process restarts).
    #[arg(long, env = "KONTEXT_URL_SIGNING_SECRET", hide_env_values = true)]
    pub url_signing_secret: Option<String>,

    /// Master webhook secret (`whsec_<base64>`, or any string used as raw bytes): each tenant's
    /// deliveries are signed with a key derived from it, which the tenant reads from
    /// `GET /v1/webhook_secret`. Without it, jobs with a webhook_url are refused.
    #[arg(long, env = "KONTEXT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Time limit of one webhook delivery attempt.
    #[arg(long, env = "KONTEXT_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// Delivery attempts per webhook before giving up (backoff 5 s, x4 each time, capped at 2 h).
    #[arg(long, env = "KONTEXT_WEBHOOK_MAX_ATTEMPTS", default_value_t = 12)]
    pub webhook_max_attempts: u32,

    /// How often this coordinator re-queues expired leases and promotes due retries. Every
    /// coordinator may reap: the queue's scripts are atomic, no leader is needed.
    #[arg(long, env = "KONTEXT_REAP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub reap_interval: Duration,

    /// How long finished jobs (and their events) are kept.
    #[arg(long, env = "KONTEXT_JOB_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub job_retention: Duration,

    /// How long a job with LoRAs waits for the worker that holds its LoRA set (warm caches,
    /// weights already merged) before any worker may take it; 0s turns LoRA affinity off.
    #[arg(long, env = "KONTEXT_LORA_AFFINITY_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub lora_affinity_delay: Duration,

    /// How long an Idempotency-Key is remembered.
    #[arg(long, env = "KONTEXT_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,

    /// Log lines and trace export (--json-logs, --otlp-endpoint).
    #[command(flatten)]
    pub logs: kontext_telemetry::LogArgs,
}

/// Where jobs are queued.
#[derive(Clone, PartialEq)]
pub enum QueueSource {
    /// In-process: embedded mode only.
    Memory,
    Redis {
        url: String,
        namespace: String,
        wait_replicas: u32,
        max_blocking: usize,
    },
}

impl fmt::Debug for QueueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            // The URL may carry a password.
            Self::Redis {
                namespace,
                wait_replicas,
                max_blocking,
                ..
            } => f
                .debug_struct("Redis")
                .field("url", &"<redacted>")
                .field("namespace", namespace)
                .field("wait_replicas", wait_replicas)
                .field("max_blocking", max_blocking)
                .finish(),
        }
    }
}

/// Bounds on what clients send, beyond the job fields `Limits` covers.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLimits {
    pub max_body_bytes: u64,
    /// Longest time to receive a request body.
    pub body_read_timeout: Duration,
    pub max_image_bytes: u64,
    /// Largest LoRA file.
    pub max_lora_bytes: u64,
    /// Job fields: prompt, sizes, steps, input pixels...
    pub job: Limits,
    /// What each tenant may hold in the queue over the retention period.
    pub retained: RetainedLimits,
}

/// Webhook delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `None`: jobs with a webhook_url are refused.
    pub secret: Option<Secret>,
    pub timeout: Duration,
    pub max_attempts: u32,
    /// Delay before the second attempt; multiplied by 4 each further attempt, capped.
    pub first_retry: Duration,
    pub max_retry: Duration,
    /// How often the notifier looks for finished jobs.
    pub poll_interval: Duration,
    /// How long a taken notification stays with this coordinator before another may take it.
    pub lease: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Without a trailing slash.
    pub public_url: Option<String>,
    pub queue: QueueSource,
    pub queue_config: QueueConfig,
    pub storage: StorageConfig,
    pub auth: Auth,
    pub admin: AdminAuth,
    pub limits: RequestLimits,
    pub allow_private_urls: bool,
    pub url_fetch_timeout: Duration,
    /// Validity of result URLs (presigned S3 URLs and signed local URLs alike).
    pub result_url_ttl: Duration,
    pub url_signing_secret: Secret,
    pub webhooks: WebhookConfig,
    pub reap_interval: Duration,
    /// Connection cap and header-read timeout of the HTTP server.
    pub server: ServerLimits,
    pub auth_failures: AuthFailureLimits,
}

/// A flag value that cannot work; names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error(transparent)]
    AdminAuth(#[from] AdminAuthError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

impl Config {
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let invalid = |flag, reason: &str| ConfigError::Invalid {
            flag,
            reason: reason.to_owned(),
        };
        let auth = match &args.api_keys {
            Some(v) => Auth::from_arg(v, args.max_in_flight)?,
            None => Auth::Open {
                max_in_flight: args.max_in_flight,
            },
        };
        let public_url = match args.public_url {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return Err(invalid("public-url", "must start with http:// or https://"));
            }
            other => other.map(|u| u.trim_end_matches('/').to_owned()),
        };
        // Without it, Location headers and result URLs would be built from the listen address,
        // and 0.0.0.0 / [::] reach nobody.
        if public_url.is_none() && args.listen.ip().is_unspecified() {
            return Err(invalid(
                "public-url",
                "is required when --listen is 0.0.0.0 or [::]: give the URL clients reach this \
                 coordinator at, e.g. --public-url http://my-host:8080",
            ));
        }
        if !args.max_side.is_multiple_of(16) {
            return Err(invalid("max-side", "must be a multiple of 16"));
        }
        if args.reap_interval.is_zero() {
            return Err(invalid("reap-interval", "must be above zero"));
        }
        if args.auth_failure_burst == 0 || args.auth_failures_per_minute == 0 {
            return Err(invalid(
                if args.auth_failure_burst == 0 {
                    "auth-failure-burst"
                } else {
                    "auth-failures-per-minute"
                },
                "must be at least 1",
            ));
        }
        if args.max_connections == 0 {
            return Err(invalid("max-connections", "must be at least 1"));
        }
        for (flag, d) in [
            ("header-read-timeout", args.header_read_timeout),
            ("body-read-timeout", args.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(flag, "must be above zero"));
            }
        }
        let queue = match args.redis_url {
            Some(url) => QueueSource::Redis {
                url,
                namespace: args.redis_namespace,
                wait_replicas: args.redis_wait_replicas,
                max_blocking: args.redis_max_blocking,
            },
            None => QueueSource::Memory,
        };
        let webhook_secret = args
            .webhook_secret
            .as_deref()
            .map(Secret::from_standard_webhooks)
            .transpose()
            .map_err(|reason| invalid("webhook-secret", &reason))?;
        let url_signing_secret = match args.url_signing_secret.as_deref() {
            Some(s) if s.len() < 16 => {
                return Err(invalid("url-signing-secret", "use at least 16 characters"));
            }
            Some(s) => Secret::from_bytes(s.as_bytes().to_vec()),
            None => Secret::random(),
        };
        let result_url_ttl = args.storage.presign_ttl;
        let base = match &args.model_profile {
            Some(path) => match ModelProfile::read(path) {
                Ok(Some(profile)) => Limits::for_model(&profile),
                Ok(None) => Limits::default(),
                Err(e) => return Err(invalid("model-profile", &e.to_string())),
            },
            None => Limits::default(),
        };
        let job = Limits {
            max_prompt_chars: args.max_prompt_chars,
            max_side: args.max_side,
            max_pixels: args.max_pixels,
            max_steps: args.max_steps,
            max_input_pixels: args.max_input_pixels,
            max_input_side: args.max_input_side,
            ..base
        };
        let queue_config = QueueConfig {
            retention: args.job_retention,
            idempotency_ttl: args.idempotency_ttl,
            lora_affinity_delay: args.lora_affinity_delay,
            ..QueueConfig::default()
        };
        Ok(Self {
            listen: args.listen,
            public_url,
            queue,
            queue_config,
            storage: args.storage.into_config()?,
            admin: AdminAuth::from_arg(args.admin_keys.as_deref(), auth.is_open())?,
            auth,
            limits: RequestLimits {
                max_body_bytes: args.max_body_bytes,
                body_read_timeout: args.body_read_timeout,
                max_image_bytes: args.max_image_bytes,
                max_lora_bytes: args.max_lora_bytes,
                job,
                retained: RetainedLimits {
                    jobs: args.max_retained_jobs,
                    chains: args.max_retained_chains,
                    turns: args.max_retained_turns,
                },
            },
            allow_private_urls: args.allow_private_urls,
            url_fetch_timeout: args.url_fetch_timeout,
            result_url_ttl,
            url_signing_secret,
            webhooks: WebhookConfig {
                secret: webhook_secret,
                timeout: args.webhook_timeout,
                max_attempts: args.webhook_max_attempts.max(1),
                ..WebhookConfig::default()
            },
            reap_interval: args.reap_interval,
            server: ServerLimits {
                max_connections: args.max_connections,
                header_read_timeout: args.header_read_timeout,
            },
            auth_failures: AuthFailureLimits {
                burst: args.auth_failure_burst,
                per_minute: args.auth_failures_per_minute,
            },
        })
    }

    /// Embedded defaults (memory queue, local storage under `data_dir`, open access): what
    /// `kontext up` and the tests start from, adjusting fields as needed.
    pub fn embedded(data_dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            queue: QueueSource::Memory,
            queue_config: QueueConfig::default(),
            storage: StorageConfig::Local {
                root: data_dir.into(),
            },
            auth: Auth::Open { max_in_flight: 24 },
            admin: AdminAuth::Open,
            limits: RequestLimits {
                max_body_bytes: 32 << 20,
                body_read_timeout: Duration::from_secs(60),
                max_image_bytes: 20 << 20,
                max_lora_bytes: 512 << 20,
                job: Limits::default(),
                retained: RetainedLimits {
                    jobs: 100_000,
                    chains: 10_000,
                    turns: 100_000,
                },
            },
            allow_private_urls: false,
            url_fetch_timeout: Duration::from_secs(10),
            result_url_ttl: Duration::from_secs(3600),
            url_signing_secret: Secret::random(),
            webhooks: WebhookConfig::default(),
            reap_interval: Duration::from_secs(1),
            server: ServerLimits::default(),
            auth_failures: AuthFailureLimits::default(),
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            secret: None,
            timeout: Duration::from_secs(10),
            max_attempts: 12,
            first_retry: Duration::from_secs(5),
            max_retry: Duration::from_secs(2 * 3600),
            poll_interval: Duration::from_millis(250),
            lease: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_a_config_with_secrets_redacted() {
        let cli = Cli::try_parse_from([
            "kontext-coordinator",
            "--data-dir",
            "/tmp/k",
            "--redis-url",
            "redis://:hunter2hunter2@db:6379",
            "--api-keys",
            "key-0123456789abcdef:acme:3",
            "--webhook-secret",
            "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
            "--max-body-bytes",
            "1MiB",
            "--public-url",
            "https://api.example.com/",
        ])
        .expect("valid flags");
        let config = Config::from_args(cli.serve).expect("valid config");
        assert_eq!(config.limits.max_body_bytes, 1 << 20);
        assert_eq!(
            config.public_url.as_deref(),
            Some("https://api.example.com")
        );
        let text = format!("{config:?}");
        for secret in ["hunter2", "key-0123456789abcdef", "c2VjcmV0"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    #[test]
    fn a_wildcard_listen_address_needs_a_public_url() {
        let cli = Cli::try_parse_from([
            "x",
            "--data-dir",
            "/tmp/k",
            "--listen",
            "0.0.0.0:8080",
            "--api-keys",
            "key-0123456789abcdef:acme",
        ])
        .expect("parses");
        let err = Config::from_args(cli.serve).expect_err("URLs would name 0.0.0.0");
        assert!(err.to_string().contains("--public-url"), "{err}");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let cli = Cli::try_parse_from(["x", "--data-dir", "/tmp/k", "--max-side", "1000"])
            .expect("parses");
        let err = Config::from_args(cli.serve).expect_err("1000 is no multiple of 16");
        assert!(err.to_string().contains("--max-side"), "{err}");
    }
}
