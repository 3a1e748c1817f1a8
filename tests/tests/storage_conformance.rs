//! The `BlobStore` conformance suite against both implementations: S3 against the real s3s-fs
//! server (a fresh bucket per test) and the local directory (a fresh temporary directory per
//! test). Then the S3-only rules the suite can't express generically: the start-up check,
//! bucket creation, expired URLs and wrong credentials.

use std::time::{Duration, SystemTime};

use kontext_e2e::s3_server::{S3Server, unique_bucket_name};
use kontext_storage::keys::{self, UploadId};
use kontext_storage::{
    AnyBlobStore, BlobStore, LocalStore, PutOutcome, S3Store, StorageConfig, StorageError,
};

mod s3 {
    use super::*;

    async fn open() -> (S3Store, ()) {
        let server = S3Server::shared().expect("the S3 test server starts");
        let store = server.fresh_store().await.expect("a fresh bucket");
        (store, ())
    }

    kontext_storage::blob_store_conformance!(open, presigned_urls = true);
}

mod local {
    use super::*;

    async fn open() -> (LocalStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = LocalStore::new(dir.path().join("objects"));
        store.check().await.expect("the local store starts");
        (store, dir)
    }

    kontext_storage::blob_store_conformance!(open, presigned_urls = false);
}

mod any {
    use super::*;

    async fn open() -> (AnyBlobStore, ()) {
        let server = S3Server::shared().expect("the S3 test server starts");
        let mut config = server.config(&unique_bucket_name());
        config.create_bucket_if_missing = true;
        let store = AnyBlobStore::open(StorageConfig::S3(config))
            .await
            .expect("opening creates the bucket");
        assert!(store.serves_presigned_urls());
        (store, ())
    }

    // The run-time wrapper must behave exactly like what it wraps.
    kontext_storage::blob_store_conformance!(open, presigned_urls = true);
}

async fn fetch_status(url: &str) -> u16 {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
        .get(url)
        .send()
        .await
        .expect("the server answers")
        .status()
        .as_u16()
}

fn upload_key(bytes: &[u8]) -> kontext_storage::ObjectKey {
    keys::input_key("t1", &UploadId::for_content(bytes, "png").expect("ext")).expect("key")
}

#[tokio::test]
async fn check_of_a_missing_bucket_names_bucket_and_endpoint() {
    let server = S3Server::shared().expect("server");
    let bucket = unique_bucket_name();
    let store = S3Store::connect(server.config(&bucket))
        .await
        .expect("client");
    let err = store
        .check()
        .await
        .expect_err("the bucket was never created");
    assert!(
        matches!(err, StorageError::BucketUnavailable { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&bucket), "names the bucket: {text}");
    assert!(
        text.contains(server.endpoint_url()),
        "names the endpoint: {text}"
    );
    assert!(
        text.contains("no such bucket"),
        "says what is wrong: {text}"
    );
    let opened = AnyBlobStore::open(StorageConfig::S3(server.config(&bucket))).await;
    assert!(opened.is_err(), "open refuses a missing bucket");
}

#[tokio::test]
async fn check_creates_a_missing_bucket_when_asked_and_is_idempotent() {
    let server = S3Server::shared().expect("server");
    let bucket = unique_bucket_name();
    let mut config = server.config(&bucket);
    config.create_bucket_if_missing = true;
    let store = S3Store::connect(config).await.expect("client");
    store.check().await.expect("creates the bucket");
    store.check().await.expect("a second check finds it");
    assert!(
        server.data_dir().join(&bucket).is_dir(),
        "the server holds the bucket"
    );
}

#[tokio::test]
async fn wrong_secret_is_refused_with_a_clear_error() {
    let server = S3Server::shared().expect("server");
    let good = server.fresh_store().await.expect("bucket");
    let mut config = server.config(good.bucket());
    config.secret_access_key = Some("not-the-secret".into());
    let bad = S3Store::connect(config).await.expect("client");
    let err = bad.check().await.expect_err("wrong secret");
    assert!(err.to_string().contains("access denied"), "{err}");
    let key = upload_key(b"x");
    let err = bad
        .put(&key, bytes::Bytes::from_static(b"x"), "image/png")
        .await
        .expect_err("an unsigned-by-us put is refused");
    assert!(
        matches!(
            err,
            StorageError::S3 {
                transient: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
}

#[tokio::test]
async fn expired_presigned_url_is_refused() {
    let server = S3Server::shared().expect("server");
    let store = server.fresh_store().await.expect("bucket");
    let key = upload_key(b"expiring");
    store
        .put(&key, bytes::Bytes::from_static(b"expiring"), "image/png")
        .await
        .expect("put");
    // Signed an hour ago, valid for a minute: expired for 59 minutes, no waiting needed.
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let expired = store
        .presigned_get_at(&key, Duration::from_secs(60), an_hour_ago)
        .await
        .expect("presign");
    assert_eq!(fetch_status(&expired).await, 403);
    // The same signing path with a current start time works, so the 403 is the expiry.
    let fresh = store
        .presigned_get_at(&key, Duration::from_secs(60), SystemTime::now())
        .await
        .expect("presign");
    assert_eq!(fetch_status(&fresh).await, 200);
}

#[tokio::test]
async fn presigned_urls_carry_the_configured_ttl() {
    let server = S3Server::shared().expect("server");
    let mut config = server.config(&unique_bucket_name());
    config.create_bucket_if_missing = true;
    config.presign_ttl = Duration::from_secs(900);
    let store = S3Store::connect(config).await.expect("client");
    store.check().await.expect("bucket");
    let url = store
        .presigned_get(&upload_key(b"ttl"))
        .await
        .expect("presign")
        .expect("S3 presigns");
    assert!(url.contains("X-Amz-Expires=900"), "{url}");
    assert!(
        url.starts_with(&format!("{}/{}/", server.endpoint_url(), store.bucket())),
        "{url}"
    );
}

#[tokio::test]
async fn a_private_server_stops_and_deletes_its_data_when_dropped() {
    let server = S3Server::start().expect("a private server");
    let (addr, dir) = (server.addr(), server.data_dir().to_path_buf());
    let store = server.fresh_store().await.expect("bucket");
    store
        .put(
            &upload_key(b"p"),
            bytes::Bytes::from_static(b"p"),
            "image/png",
        )
        .await
        .expect("put");
    drop(server);
    assert!(!dir.exists(), "the data directory is deleted");
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "nothing listens on {addr} any more"
    );
}

#[tokio::test]
async fn conditional_put_never_replaces_an_object() {
    let server = S3Server::shared().expect("server");
    let store = server.fresh_store().await.expect("bucket");
    let key = upload_key(b"first");
    let first = store
        .put_conditional(&key, bytes::Bytes::from_static(b"first"), "image/png")
        .await
        .expect("conditional put of a new key");
    assert_eq!(first, PutOutcome::Created);
    // No HEAD before this PUT: the 412 from the server itself must read as AlreadyExists.
    let second = store
        .put_conditional(&key, bytes::Bytes::from_static(b"second"), "image/png")
        .await
        .expect("conditional put of an existing key");
    assert_eq!(second, PutOutcome::AlreadyExists);
    assert_eq!(&store.get(&key).await.expect("get").bytes[..], b"first");
}
