//! `S3Store`: any S3-compatible object store through aws-sdk-s3 (AWS S3, MinIO, Ceph, R2,
//! Garage, s3s-fs in the tests).
//!
//! Configuration comes from the standard AWS environment (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles...) with explicit overrides in
//! [`S3Config`]. When an override is given the SDK's lookup for that setting is skipped, which
//! also avoids its slow instance-metadata probes on machines outside AWS.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use bytes::Bytes;

use crate::{
    Blob, BlobStore, DEFAULT_CONTENT_TYPE, ObjectKey, ObjectMeta, PutOutcome, StorageError,
};

/// The longest validity SigV4 allows for a presigned URL.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where and how to reach the bucket. `None` fields fall back to the standard AWS environment.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Overrides `AWS_ENDPOINT_URL`, e.g. `http://127.0.0.1:9000` for MinIO.
    pub endpoint: Option<String>,
    /// Overrides `AWS_REGION`.
    pub region: Option<String>,
    /// Overrides `AWS_ACCESS_KEY_ID`; must come with `secret_access_key`.
    pub access_key_id: Option<String>,
    /// Overrides `AWS_SECRET_ACCESS_KEY`; never printed.
    pub secret_access_key: Option<String>,
    /// `http://host/bucket/key` instead of `http://bucket.host/key`; most self-hosted stores
    /// need it.
    pub force_path_style: bool,
    /// Validity of presigned GET URLs, at most 7 days (SigV4's limit).
    pub presign_ttl: Duration,
    /// Create the bucket at start when it does not exist (convenient for local setups).
    pub create_bucket_if_missing: bool,
    /// Limit for one attempt of one request, so a hung connection can't stall a job forever.
    pub attempt_timeout: Duration,
}

impl S3Config {
    /// Defaults: everything else from the environment, virtual-hosted style, 1 h presigned URLs,
    /// no bucket creation, 60 s per attempt.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            force_path_style: false,
            presign_ttl: Duration::from_secs(3600),
            create_bucket_if_missing: false,
            attempt_timeout: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<(), StorageError> {
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !self.bucket.starts_with(['-', '.'])
            && !self.bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(config_error(
                "bucket",
                format!(
                    "{:?} is not a bucket name: use 3 to 63 characters of [a-z0-9.-], starting \
                     and ending with a letter or digit",
                    self.bucket
                ),
            ));
        }
        if self.presign_ttl < Duration::from_secs(1) || self.presign_ttl > MAX_PRESIGN_TTL {
            return Err(config_error(
                "presign_ttl",
                format!(
                    "{} s is out of range: use 1 s to {} s (7 days)",
                    self.presign_ttl.as_secs(),
                    MAX_PRESIGN_TTL.as_secs()
                ),
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(config_error(
                "access_key_id/secret_access_key",
                "give both or neither (otherwise both come from the AWS environment)".to_owned(),
            ));
        }
        if self.attempt_timeout.is_zero() {
            return Err(config_error(
                "attempt_timeout",
                "must be above zero".to_owned(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("force_path_style", &self.force_path_style)
            .field("presign_ttl", &self.presign_ttl)
            .field("create_bucket_if_missing", &self.create_bucket_if_missing)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

fn config_error(field: &'static str, reason: String) -> StorageError {
    StorageError::Config { field, reason }
}

/// A bucket on an S3-compatible store. Cloning is cheap (the SDK client is shared).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// The effective endpoint, for messages.
    endpoint: String,
    region: String,
    presign_ttl: Duration,
    create_bucket_if_missing: bool,
}

impl S3Store {
    /// Resolves the configuration (overrides, then the AWS environment) and builds the client.
    /// Makes no request: call [`BlobStore::check`] at start.
    pub async fn connect(config: S3Config) -> Result<Self, StorageError> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(config.attempt_timeout)
                .build(),
        );
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "kontext-config",
            ));
        }
        let sdk = loader.load().await;
        let Some(region) = sdk.region().map(|r| r.to_string()) else {
            return Err(config_error(
                "region",
                "no region configured: set AWS_REGION or --s3-region".to_owned(),
            ));
        };
        let endpoint = sdk
            .endpoint_url()
            .map_or_else(|| format!("AWS S3 ({region})"), str::to_owned);
        let s3_config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.force_path_style)
            .build();
        Ok(Self {
            client: Client::from_conf(s3_config),
            bucket: config.bucket,
            endpoint,
            region,
            presign_ttl: config.presign_ttl,
            create_bucket_if_missing: config.create_bucket_if_missing,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn presign_ttl(&self) -> Duration {
        self.presign_ttl
    }

    /// A presigned GET signed as of `start` and valid for `ttl` from then. [`BlobStore::presigned_get`]
    /// is this with now and the configured TTL; tests use a past `start` to get expired URLs.
    pub async fn presigned_get_at(
        &self,
        key: &ObjectKey,
        ttl: Duration,
        start: SystemTime,
    ) -> Result<String, StorageError> {
        let presigning = PresigningConfig::builder()
            .start_time(start)
            .expires_in(ttl)
            .build()
            .map_err(|e| config_error("presign_ttl", DisplayErrorContext(&e).to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .presigned(presigning)
            .await
            .map_err(|e| self.request_error("presign GET", key.as_str(), e))?;
        Ok(request.uri().to_owned())
    }

    /// One PUT with `If-None-Match: *` and no HEAD before it: the store itself refuses to
    /// replace an existing object (412, or 409 while a concurrent conditional write is in
    /// flight), which is reported as [`PutOutcome::AlreadyExists`]. Only as reliable as the
    /// store's support for conditional writes; [`BlobStore::put_if_absent`] HEADs first.
    pub async fn put_conditional(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<PutOutcome, StorageError> {
        self.put_object(key, bytes, content_type, true).await
    }

    async fn create_bucket(&self) -> Result<(), StorageError> {
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        // us-east-1 is the default location and must not be named explicitly.
        if self.region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, endpoint = %self.endpoint, "created bucket");
                Ok(())
            }
            // Another process created it first: just as good.
            Err(e)
                if matches!(
                    e.as_service_error().and_then(|s| s.code()),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.bucket_unavailable("creating it failed", e)),
        }
    }

    fn bucket_unavailable<E>(&self, what: &str, err: SdkError<E, HttpResponse>) -> StorageError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let hint = match status_of(&err) {
            Some(404) => " (no such bucket; create it, or set create-bucket-if-missing)",
            Some(401 | 403) => " (access denied; check the credentials and their permissions)",
            Some(301 | 400) => " (wrong region or addressing style? try path-style)",
            None => " (no answer; is the endpoint right and the server up?)",
            _ => "",
        };
        StorageError::BucketUnavailable {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            detail: format!("{what}{hint}: {}", DisplayErrorContext(&err)),
            source: Some(Box::new(err)),
        }
    }

    fn request_error<E>(
        &self,
        op: &'static str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    {
        let transient = match &err {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                status >= 500
                    || status == 429
                    || matches!(service.err().code(), Some("SlowDown" | "RequestTimeout"))
            }
            _ => false,
        };
        StorageError::S3 {
            op,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            detail: DisplayErrorContext(&err).to_string(),
            transient,
            source: Box::new(err),
        }
    }

    fn not_found(key: &ObjectKey) -> StorageError {
        StorageError::NotFound {
            key: key.to_string(),
        }
    }

    async fn put_object(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
        only_if_absent: bool,
    ) -> Result<PutOutcome, StorageError> {
        let len = i64::try_from(bytes.len()).expect("object sizes fit in i64; this is a bug");
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .content_length(len)
            .body(ByteStream::from(bytes));
        if only_if_absent {
            request = request.if_none_match("*");
        }
        match request.send().await {
            Ok(_) => Ok(PutOutcome::Created),
            // 412: the object exists. 409: a concurrent conditional write of the same key is in
            // flight (AWS returns ConditionalRequestConflict); its writer will create it.
            Err(e) if only_if_absent && matches!(status_of(&e), Some(412 | 409)) => {
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => Err(self.request_error("PUT", key.as_str(), e)),
        }
    }
}

fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

impl BlobStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{} at {}", self.bucket, self.endpoint)
    }

    async fn check(&self) -> Result<(), StorageError> {
        let head = self.client.head_bucket().bucket(&self.bucket).send().await;
        match head {
            Ok(_) => Ok(()),
            Err(e) if self.create_bucket_if_missing && status_of(&e) == Some(404) => {
                self.create_bucket().await
            }
            Err(e) => Err(self.bucket_unavailable("HEAD bucket failed", e)),
        }
    }

    async fn put(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.put_object(key, bytes, content_type, false)
            .await
            .map(|_| ())
    }

    async fn put_if_absent(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<PutOutcome, StorageError> {
        // HEAD first: some S3-compatible stores ignore If-None-Match, and for content-addressed
        // keys skipping the upload is the common case. If-None-Match still settles a race where
        // the store supports it; where it doesn't, both writers store the same bytes.
        if self.head(key).await?.is_some() {
            return Ok(PutOutcome::AlreadyExists);
        }
        self.put_conditional(key, bytes, content_type).await
    }

    async fn get(&self, key: &ObjectKey) -> Result<Blob, StorageError> {
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await;
        let output = match response {
            Ok(output) => output,
            Err(e)
                if e.as_service_error().is_some_and(|s| s.is_no_such_key())
                    || status_of(&e) == Some(404) =>
            {
                return Err(Self::not_found(key));
            }
            Err(e) => return Err(self.request_error("GET", key.as_str(), e)),
        };
        let content_type = output
            .content_type
            .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| StorageError::S3 {
                op: "GET (reading the body)",
                bucket: self.bucket.clone(),
                key: key.to_string(),
                detail: DisplayErrorContext(&e).to_string(),
                transient: true,
                source: Box::new(e),
            })?
            .into_bytes();
        Ok(Blob {
            bytes,
            content_type,
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let response = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await;
        match response {
            Ok(output) => Ok(Some(ObjectMeta {
                size: output
                    .content_length
                    .and_then(|len| u64::try_from(len).ok())
                    .unwrap_or(0),
                content_type: output
                    .content_type
                    .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
            })),
            Err(e)
                if e.as_service_error().is_some_and(|s| s.is_not_found())
                    || status_of(&e) == Some(404) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.request_error("HEAD", key.as_str(), e)),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.request_error("DELETE", key.as_str(), e))
    }

    async fn presigned_get(&self, key: &ObjectKey) -> Result<Option<String>, StorageError> {
        self.presigned_get_at(key, self.presign_ttl, SystemTime::now())
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated_with_field_names() {
        let mut config = S3Config::new("Bad_Bucket");
        let err = config.validate().expect_err("bad bucket");
        assert!(err.to_string().contains("bucket"), "{err}");

        config.bucket = "good-bucket".into();
        config.presign_ttl = MAX_PRESIGN_TTL + Duration::from_secs(1);
        let err = config.validate().expect_err("ttl above 7 days");
        assert!(
            err.to_string().contains("presign_ttl") && err.to_string().contains("604800"),
            "{err}"
        );

        config.presign_ttl = Duration::from_secs(60);
        config.access_key_id = Some("id".into());
        assert!(config.validate().is_err(), "key id without secret");
        config.secret_access_key = Some("s3cr3t".into());
        config.validate().expect("valid");
    }

    #[test]
    fn debug_redacts_the_secret() {
        let mut config = S3Config::new("b");
        config.secret_access_key = Some("s3cr3t-value".into());
        let text = format!("{config:?}");
        assert!(
            !text.contains("s3cr3t-value") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn explicit_settings_override_the_environment() {
        let mut config = S3Config::new("bucket-x");
        config.endpoint = Some("http://127.0.0.1:9".into());
        config.region = Some("eu-west-3".into());
        config.access_key_id = Some("id".into());
        config.secret_access_key = Some("secret".into());
        let store = S3Store::connect(config).await.expect("explicit settings");
        assert_eq!(store.describe(), "s3://bucket-x at http://127.0.0.1:9");
        assert_eq!(store.region, "eu-west-3");
    }

    #[tokio::test]
    async fn check_against_a_dead_endpoint_names_bucket_and_endpoint() {
        // A port that was just free: binding then dropping the listener leaves nothing there,
        // so the connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut config = S3Config::new("bucket-x");
        config.endpoint = Some(endpoint.clone());
        config.region = Some("us-east-1".into());
        config.access_key_id = Some("id".into());
        config.secret_access_key = Some("secret".into());
        config.force_path_style = true;
        let store = S3Store::connect(config).await.expect("explicit settings");
        let err = store.check().await.expect_err("nothing listens there");
        let text = err.to_string();
        assert!(
            text.contains("bucket-x") && text.contains(&endpoint),
            "{text}"
        );
        assert!(err.is_transient());
    }
}
