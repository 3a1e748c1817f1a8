//! `StorageArgs` (feature "cli"): the storage flags that coordinator, worker and `kontext up`
//! share through `#[command(flatten)]`, so every binary spells them the same way.
//!
//! Endpoint, region and credentials use the standard AWS variable names (`AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`; AWS SDKs and Tools Reference
//! Guide, "Environment variables"), so an environment that already works with the AWS CLI works
//! with us.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::builder::BoolishValueParser;
use kontext_proto::clock::parse_duration;

use crate::{S3Config, StorageConfig, StorageError};

#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// S3 bucket for inputs and results. Without it, objects go to --data-dir.
    #[arg(long, env = "KONTEXT_BUCKET", conflicts_with = "data_dir")]
    pub bucket: Option<String>,

    /// Local directory for inputs and results when no bucket is given (embedded mode).
    #[arg(long, env = "KONTEXT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// S3 endpoint URL for S3-compatible stores (MinIO, Ceph, R2, Garage...).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,

    /// S3 access key id; without it the AWS default credential chain is used.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,

    /// S3 secret access key (prefer the environment variable: flags show up in `ps`).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,

    /// Path-style requests (http://host/bucket/key); most self-hosted stores need this.
    #[arg(long, env = "KONTEXT_S3_PATH_STYLE", value_parser = BoolishValueParser::new())]
    pub s3_path_style: bool,

    /// Create the bucket at start if it does not exist.
    #[arg(long, env = "KONTEXT_S3_CREATE_BUCKET", value_parser = BoolishValueParser::new())]
    pub s3_create_bucket: bool,

    /// How long presigned result URLs stay valid (e.g. 900s, 15m, 1h, 7d; at most 7d).
    #[arg(long, env = "KONTEXT_PRESIGN_TTL", default_value = "1h", value_parser = parse_duration)]
    pub presign_ttl: Duration,
}

/// Longest validity of a presigned (or locally signed) result URL: S3's SigV4 limit.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl StorageArgs {
    /// The store these flags select; refuses a configuration that names neither store.
    pub fn into_config(self) -> Result<StorageConfig, StorageError> {
        // S3 SigV4 presigning allows at most 7 days; the local store's signed URLs use the same
        // bound, which also keeps `now + ttl` far from overflowing.
        if self.presign_ttl.is_zero() || self.presign_ttl > MAX_PRESIGN_TTL {
            return Err(StorageError::Config {
                field: "--presign-ttl",
                reason: format!(
                    "must be between 1s and 7d (got {}s)",
                    self.presign_ttl.as_secs()
                ),
            });
        }
        match (self.bucket, self.data_dir) {
            (Some(bucket), _) => {
                let mut config = S3Config::new(bucket);
                config.endpoint = self.s3_endpoint;
                config.region = self.s3_region;
                config.access_key_id = self.s3_access_key_id;
                config.secret_access_key = self.s3_secret_access_key;
                config.force_path_style = self.s3_path_style;
                config.create_bucket_if_missing = self.s3_create_bucket;
                config.presign_ttl = self.presign_ttl;
                Ok(StorageConfig::S3(config))
            }
            (None, Some(root)) => Ok(StorageConfig::Local { root }),
            (None, None) => Err(StorageError::Config {
                field: "--bucket/--data-dir",
                reason: "give a bucket (KONTEXT_BUCKET) or a local directory (KONTEXT_DATA_DIR)"
                    .to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        storage: StorageArgs,
    }

    #[test]
    fn presign_ttl_is_bounded_in_both_modes() {
        for ttl in ["0s", "8d", "1000d"] {
            for store in [["--data-dir", "/tmp/k"], ["--bucket", "results"]] {
                let cli = Cli::try_parse_from(["x", store[0], store[1], "--presign-ttl", ttl])
                    .expect("parses");
                let e = cli.storage.into_config().expect_err(ttl);
                assert!(e.to_string().contains("--presign-ttl"), "{e}");
            }
        }
    }

    #[test]
    fn bucket_selects_s3_with_the_overrides() {
        let cli = Cli::try_parse_from([
            "x",
            "--bucket",
            "results",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-region",
            "us-east-1",
            "--s3-path-style",
            "--presign-ttl",
            "15m",
        ])
        .expect("valid flags");
        let StorageConfig::S3(config) = cli.storage.into_config().expect("config") else {
            panic!("a bucket selects S3");
        };
        assert_eq!(config.bucket, "results");
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(config.force_path_style);
        assert_eq!(config.presign_ttl, Duration::from_secs(900));
    }

    #[test]
    fn data_dir_selects_local_and_both_conflict() {
        let cli = Cli::try_parse_from(["x", "--data-dir", "/tmp/k"]).expect("valid flags");
        assert!(matches!(
            cli.storage.into_config(),
            Ok(StorageConfig::Local { .. })
        ));
        assert!(Cli::try_parse_from(["x", "--data-dir", "/tmp/k", "--bucket", "b"]).is_err());
    }
}
