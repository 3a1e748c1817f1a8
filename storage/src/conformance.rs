//! The `BlobStore` conformance suite (feature "conformance"): one async function per rule, and
//! [`blob_store_conformance!`](crate::blob_store_conformance) to expand them into one
//! `#[tokio::test]` each against a store implementation.
//!
//! Every implementation must pass every rule; a store that can't presign declares it
//! (`presigned_urls = false`) and is then held to returning `None`, so neither kind of store
//! passes the presign rules by accident.
//!
//! ```text
//! mod local {
//!     async fn open() -> (kontext_storage::LocalStore, tempfile::TempDir) { ... }
//!     kontext_storage::blob_store_conformance!(open, presigned_urls = false);
//! }
//! ```

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use kontext_proto::{JobId, OutputFormat};

use crate::keys::{self, ObjectKey, UploadId};
use crate::{BlobStore, ObjectMeta, PutOutcome};

/// Longest a single rule may take before the test fails as stalled.
pub const RULE_TIMEOUT: Duration = Duration::from_secs(120);

/// Size of the large-object rule's payload.
pub const LARGE_OBJECT_BYTES: usize = 8 * 1024 * 1024;

const TENANT: &str = "conformance";

/// What the implementation under test declares about itself.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// `presigned_get` returns URLs (S3) rather than `None` (local directory).
    pub presigned_urls: bool,
}

/// Expands to one `#[tokio::test]` per rule. `$open` is an async fn returning
/// `(store, guard)`; the guard (e.g. a temporary directory) lives until the rule finished.
#[macro_export]
macro_rules! blob_store_conformance {
    ($open:path, presigned_urls = $presigned:expr) => {
        $crate::blob_store_conformance!(@rules $open, $presigned;
            put_get_roundtrip,
            overwrite_replaces_the_object,
            put_if_absent_keeps_the_first_object,
            racing_put_if_absent_leaves_one_whole_object,
            missing_key_is_not_found,
            head_reports_size_and_content_type,
            delete_removes_the_object,
            delete_of_a_missing_key_succeeds,
            large_object_roundtrip,
            empty_object_roundtrip,
            nested_prefixes_are_independent,
            concurrent_puts_to_distinct_keys,
            presigned_get_serves_the_bytes,
            tampered_presigned_url_is_refused,
        );
    };
    (@rules $open:path, $presigned:expr; $($rule:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $rule() {
                let (store, guard) = $open().await;
                let expect = $crate::conformance::Expect { presigned_urls: $presigned };
                $crate::conformance::run(
                    stringify!($rule),
                    $crate::conformance::$rule(store, expect),
                )
                .await;
                drop(guard);
            }
        )+
    };
}

/// Runs one rule under [`RULE_TIMEOUT`], failing with the rule's name if it stalls.
pub async fn run(rule: &str, body: impl Future<Output = ()>) {
    if tokio::time::timeout(RULE_TIMEOUT, body).await.is_err() {
        panic!("conformance rule {rule} stalled for more than {RULE_TIMEOUT:?}");
    }
}

fn output(epoch: u64) -> ObjectKey {
    keys::output_key(TENANT, JobId::new(), epoch, OutputFormat::Png).expect("valid output key")
}

fn input(bytes: &[u8]) -> ObjectKey {
    let upload = UploadId::for_content(bytes, "png").expect("valid extension");
    keys::input_key(TENANT, &upload).expect("valid input key")
}

/// Deterministic incompressible-looking bytes (xorshift64), so corruption shows up anywhere.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

pub async fn put_get_roundtrip<S: BlobStore>(store: S, _: Expect) {
    let key = output(1);
    let bytes = pattern(4096, 1);
    store
        .put(&key, bytes.clone(), "image/png")
        .await
        .expect("put");
    let blob = store.get(&key).await.expect("get after put");
    assert_eq!(blob.bytes, bytes, "get returns the bytes put");
    assert_eq!(blob.content_type, "image/png");
}

pub async fn overwrite_replaces_the_object<S: BlobStore>(store: S, _: Expect) {
    let key = output(1);
    store
        .put(&key, pattern(3000, 1), "image/png")
        .await
        .expect("first put");
    let second = pattern(1000, 2);
    store
        .put(&key, second.clone(), "image/jpeg")
        .await
        .expect("second put");
    let blob = store.get(&key).await.expect("get");
    assert_eq!(blob.bytes, second, "the second put wins, whole");
    assert_eq!(blob.content_type, "image/jpeg");
    let meta = store.head(&key).await.expect("head").expect("exists");
    assert_eq!(meta.size, 1000);
}

pub async fn put_if_absent_keeps_the_first_object<S: BlobStore>(store: S, _: Expect) {
    let first = pattern(2048, 3);
    let key = input(&first);
    let outcome = store
        .put_if_absent(&key, first.clone(), "image/png")
        .await
        .expect("first put_if_absent");
    assert_eq!(outcome, PutOutcome::Created);
    let outcome = store
        .put_if_absent(&key, pattern(10, 4), "text/plain")
        .await
        .expect("second put_if_absent");
    assert_eq!(outcome, PutOutcome::AlreadyExists);
    let blob = store.get(&key).await.expect("get");
    assert_eq!(blob.bytes, first, "the existing object is untouched");
    assert_eq!(blob.content_type, "image/png");
}

/// Content-addressed uploads of the same image race (two clients, or a client's retry): the
/// same key with the same bytes. Whatever the store's atomicity, every writer must succeed, at
/// least one must report `Created`, and the object must be those bytes, whole. (Writers of
/// *different* bytes to one key don't happen with content addressing; s3s-fs, whose data and
/// checksum files are written separately, would then serve a checksum mismatch. The local
/// store's own tests race different bytes and check exactly one `Created`.)
pub async fn racing_put_if_absent_leaves_one_whole_object<S: BlobStore + Clone + 'static>(
    store: S,
    _: Expect,
) {
    let bytes = pattern(256 * 1024, 100);
    let key = input(&bytes);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, key, bytes) = (store.clone(), key.clone(), bytes.clone());
        tasks.spawn(async move {
            store
                .put_if_absent(&key, bytes, "image/png")
                .await
                .expect("a racing put_if_absent succeeds")
        });
    }
    let mut created = 0;
    while let Some(outcome) = tasks.join_next().await {
        if outcome.expect("put task") == PutOutcome::Created {
            created += 1;
        }
    }
    assert!(created >= 1, "somebody created the object");
    let blob = store.get(&key).await.expect("get");
    assert!(blob.bytes == bytes, "the object is whole");
    assert_eq!(blob.content_type, "image/png");
}

pub async fn missing_key_is_not_found<S: BlobStore>(store: S, _: Expect) {
    let key = output(7);
    let err = store.get(&key).await.expect_err("nothing was stored");
    assert!(err.is_not_found(), "expected NotFound, got {err:?}");
    assert!(!err.is_transient());
    assert!(
        err.to_string().contains(key.as_str()),
        "names the key: {err}"
    );
    assert_eq!(store.head(&key).await.expect("head of a missing key"), None);
}

pub async fn head_reports_size_and_content_type<S: BlobStore>(store: S, _: Expect) {
    let key = keys::output_latent_key(TENANT, JobId::new(), 2).expect("valid key");
    store
        .put(&key, pattern(12_345, 5), "application/octet-stream")
        .await
        .expect("put");
    let meta = store.head(&key).await.expect("head");
    assert_eq!(
        meta,
        Some(ObjectMeta {
            size: 12_345,
            content_type: "application/octet-stream".to_owned()
        })
    );
}

pub async fn delete_removes_the_object<S: BlobStore>(store: S, _: Expect) {
    let key = output(1);
    store
        .put(&key, pattern(100, 6), "image/png")
        .await
        .expect("put");
    store.delete(&key).await.expect("delete");
    assert_eq!(store.head(&key).await.expect("head"), None);
    assert!(store.get(&key).await.expect_err("deleted").is_not_found());
    // The key is usable again afterwards.
    store
        .put(&key, pattern(50, 7), "image/png")
        .await
        .expect("put after delete");
    assert_eq!(store.get(&key).await.expect("get").bytes.len(), 50);
}

pub async fn delete_of_a_missing_key_succeeds<S: BlobStore>(store: S, _: Expect) {
    store
        .delete(&output(9))
        .await
        .expect("deleting a missing object is not an error");
}

pub async fn large_object_roundtrip<S: BlobStore>(store: S, _: Expect) {
    let key = output(1);
    let bytes = pattern(LARGE_OBJECT_BYTES, 8);
    store
        .put(&key, bytes.clone(), "image/png")
        .await
        .expect("put 8 MiB");
    let meta = store.head(&key).await.expect("head").expect("exists");
    assert_eq!(meta.size, LARGE_OBJECT_BYTES as u64);
    let blob = store.get(&key).await.expect("get 8 MiB");
    assert_eq!(blob.bytes.len(), bytes.len());
    // Not assert_eq!: on failure it would print 16 MiB of bytes.
    if blob.bytes != bytes {
        let at = blob
            .bytes
            .iter()
            .zip(bytes.iter())
            .position(|(a, b)| a != b);
        panic!("the large object came back changed, first at byte {at:?}");
    }
}

pub async fn empty_object_roundtrip<S: BlobStore>(store: S, _: Expect) {
    let key = output(1);
    store
        .put(&key, Bytes::new(), "image/png")
        .await
        .expect("put empty");
    let meta = store
        .head(&key)
        .await
        .expect("head")
        .expect("an empty object exists");
    assert_eq!(meta.size, 0);
    assert!(store.get(&key).await.expect("get").bytes.is_empty());
}

pub async fn nested_prefixes_are_independent<S: BlobStore>(store: S, _: Expect) {
    let job = JobId::new();
    let objects = [
        keys::output_key(TENANT, job, 1, OutputFormat::Png).expect("key"),
        keys::output_latent_key(TENANT, job, 1).expect("key"),
        keys::output_key(TENANT, job, 2, OutputFormat::Jpeg).expect("key"),
        keys::output_key("other-tenant", job, 1, OutputFormat::Png).expect("key"),
        input(b"nested"),
        ObjectKey::parse("out/conformance/deep/a/b/c/d/e/f.png").expect("key"),
    ];
    for (i, key) in objects.iter().enumerate() {
        store
            .put(key, pattern(100 + i, i as u64), "image/png")
            .await
            .expect("put");
    }
    store.delete(&objects[0]).await.expect("delete one");
    assert_eq!(store.head(&objects[0]).await.expect("head"), None);
    for (i, key) in objects.iter().enumerate().skip(1) {
        let blob = store.get(key).await.expect("sibling survives");
        assert_eq!(
            blob.bytes,
            pattern(100 + i, i as u64),
            "{key} kept its own bytes"
        );
    }
    // No rule here for HEAD of a bare prefix (`out/<tenant>/<job>`): S3 says 404, but s3s-fs,
    // being a file system, answers 500 for a directory. Nothing of ours HEADs a prefix; the
    // local store's own tests cover it.
}

pub async fn concurrent_puts_to_distinct_keys<S: BlobStore + Clone + 'static>(store: S, _: Expect) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let key = output(i + 1);
            store
                .put(&key, pattern(64 * 1024, i), "image/png")
                .await
                .expect("concurrent put");
            (key, i)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (key, i) = done.expect("put task");
        let blob = store.get(&key).await.expect("get");
        assert_eq!(blob.bytes, pattern(64 * 1024, i), "{key}");
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client builds")
}

async fn fetch(url: &str) -> (u16, Bytes) {
    let response = http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    (status, body)
}

pub async fn presigned_get_serves_the_bytes<S: BlobStore>(store: S, expect: Expect) {
    let key = output(1);
    let bytes = pattern(50_000, 9);
    store
        .put(&key, bytes.clone(), "image/png")
        .await
        .expect("put");
    let url = store.presigned_get(&key).await.expect("presign");
    if !expect.presigned_urls {
        assert_eq!(url, None, "this store declared it has no presigned URLs");
        return;
    }
    let url = url.expect("this store declared presigned URLs");
    let (status, body) = fetch(&url).await;
    assert_eq!(status, 200, "a plain GET of the presigned URL succeeds");
    assert_eq!(body, bytes);

    // A presigned URL of a missing object is well-formed; fetching it finds nothing.
    let missing = store
        .presigned_get(&output(99))
        .await
        .expect("presign")
        .expect("a URL");
    let (status, _) = fetch(&missing).await;
    assert_eq!(status, 404);
}

pub async fn tampered_presigned_url_is_refused<S: BlobStore>(store: S, expect: Expect) {
    let (mine, other) = (output(1), output(2));
    for key in [&mine, &other] {
        store
            .put(key, pattern(1000, 10), "image/png")
            .await
            .expect("put");
    }
    let url = store.presigned_get(&mine).await.expect("presign");
    if !expect.presigned_urls {
        assert_eq!(url, None, "this store declared it has no presigned URLs");
        return;
    }
    let url = url.expect("this store declared presigned URLs");

    // Flip the last character of the signature.
    let marker = "X-Amz-Signature=";
    let at = url.find(marker).expect("a SigV4 presigned URL") + marker.len();
    let end = url[at..].find('&').map_or(url.len(), |i| at + i);
    let last = url[..end].chars().last().expect("a non-empty signature");
    let flipped = if last == '0' { '1' } else { '0' };
    let bad_signature = format!("{}{flipped}{}", &url[..end - 1], &url[end..]);
    assert_eq!(
        fetch(&bad_signature).await.0,
        403,
        "a forged signature is refused"
    );

    // Reuse the signature for another object.
    let other_object = url.replacen(mine.as_str(), other.as_str(), 1);
    assert_ne!(other_object, url);
    assert_eq!(
        fetch(&other_object).await.0,
        403,
        "a signature is bound to its key"
    );

    // Stretch the validity.
    let longer = url.replacen("X-Amz-Expires=", "X-Amz-Expires=9", 1);
    assert_eq!(fetch(&longer).await.0, 403, "the TTL is signed");
}
