//! `LocalStore`: objects as plain files under a root directory (the embedded default).
//!
//! Layout: the object `a/b/c.png` is the file `<root>/a/b/c.png`, so operators can browse
//! outputs; its content type is the sidecar `<root>/.meta/a/b/c.png`. Keys never have a segment
//! starting with '.', so neither the sidecar tree nor temporary files (`.<name>.tmp-<uuid>`)
//! can collide with an object.
//!
//! Writes go to a temporary file in the destination's directory, are synced, then renamed into
//! place: a reader sees the old file or the new one, never half of one. `put_if_absent` hard-links
//! the temporary file to the destination, which fails atomically if the destination exists.
//! The blocking file calls run on tokio's blocking pool.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::{
    Blob, BlobStore, DEFAULT_CONTENT_TYPE, ObjectKey, ObjectMeta, PutOutcome, StorageError,
};

/// Directory under the root holding content-type sidecars.
const META_DIR: &str = ".meta";

/// A directory of objects. Cloning is cheap (one path).
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root`; nothing is touched until [`BlobStore::check`] or a write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding `key`'s bytes. Validated keys have no `..`, no absolute or hidden
    /// segments, so the result is always inside the root.
    pub fn object_path(&self, key: &ObjectKey) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(key.segments());
        path
    }

    fn meta_path(&self, key: &ObjectKey) -> PathBuf {
        let mut path = self.root.join(META_DIR);
        path.extend(key.segments());
        path
    }

    fn check_blocking(&self) -> Result<(), StorageError> {
        let meta = self.root.join(META_DIR);
        fs::create_dir_all(&meta).map_err(|e| StorageError::io("creating", &meta, e))?;
        // Prove we can create, write and remove files, as every put does.
        let probe = self
            .root
            .join(format!(".write-probe-{}", uuid::Uuid::new_v4()));
        write_synced(&probe, b"probe").map_err(|e| StorageError::io("writing", &probe, e))?;
        fs::remove_file(&probe).map_err(|e| StorageError::io("removing", &probe, e))
    }

    fn put_blocking(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<(), StorageError> {
        // Sidecar first: a reader that sees the new bytes also sees their content type.
        replace_file(&self.meta_path(key), content_type.as_bytes())?;
        replace_file(&self.object_path(key), bytes)
    }

    fn put_if_absent_blocking(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<PutOutcome, StorageError> {
        let dest = self.object_path(key);
        if dest.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let tmp = write_temp_beside(&dest, bytes)?;
        // hard_link refuses an existing destination atomically, so of two racing writers exactly
        // one creates the object; only that one writes the sidecar.
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                replace_file(&self.meta_path(key), content_type.as_bytes())?;
                Ok(PutOutcome::Created)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(StorageError::io("linking", dest, e)),
        }
    }

    fn get_blocking(&self, key: &ObjectKey) -> Result<Blob, StorageError> {
        let path = self.object_path(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if is_missing(&e) => return Err(not_found(key)),
            Err(e) => return Err(StorageError::io("reading", path, e)),
        };
        Ok(Blob {
            bytes: Bytes::from(bytes),
            content_type: self.content_type_blocking(key)?,
        })
    }

    fn head_blocking(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.object_path(key);
        let meta = match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            // A directory is a key prefix, not an object.
            Ok(_) => return Ok(None),
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(StorageError::io("inspecting", path, e)),
        };
        Ok(Some(ObjectMeta {
            size: meta.len(),
            content_type: self.content_type_blocking(key)?,
        }))
    }

    fn content_type_blocking(&self, key: &ObjectKey) -> Result<String, StorageError> {
        let path = self.meta_path(key);
        match fs::read_to_string(&path) {
            Ok(content_type) => Ok(content_type),
            // Only between a put_if_absent's link and its sidecar write, or for files an operator
            // copied in by hand.
            Err(e) if is_missing(&e) => Ok(DEFAULT_CONTENT_TYPE.to_owned()),
            Err(e) => Err(StorageError::io("reading", path, e)),
        }
    }

    fn delete_blocking(&self, key: &ObjectKey) -> Result<(), StorageError> {
        for path in [self.object_path(key), self.meta_path(key)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(StorageError::io("removing", path, e)),
            }
        }
        Ok(())
    }
}

/// Runs blocking file work on tokio's blocking pool, re-raising a panic from it.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

fn not_found(key: &ObjectKey) -> StorageError {
    StorageError::NotFound {
        key: key.to_string(),
    }
}

/// A missing file, or a missing parent because a prefix component is a file.
/// No object at the path: nothing there, a file where a directory was expected, or a directory
/// (a key prefix such as `out/<tenant>/<job>`, not an object).
fn is_missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory
    )
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::options().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes `bytes` to a fresh temporary file in `dest`'s directory (creating it), so that the
/// later rename or link stays on one file system.
fn write_temp_beside(dest: &Path, bytes: &[u8]) -> Result<PathBuf, StorageError> {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        unreachable!("object paths are <root>/<at least one segment>; this is a bug")
    };
    fs::create_dir_all(dir).map_err(|e| StorageError::io("creating", dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    if let Err(e) = write_synced(&tmp, bytes) {
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::io("writing", tmp, e));
    }
    Ok(tmp)
}

/// Atomically replaces `dest` with `bytes`.
fn replace_file(dest: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = write_temp_beside(dest, bytes)?;
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::io("renaming into", dest, e));
    }
    Ok(())
}

impl BlobStore for LocalStore {
    fn describe(&self) -> String {
        format!("dir {}", self.root.display())
    }

    async fn check(&self) -> Result<(), StorageError> {
        let store = self.clone();
        blocking(move || store.check_blocking()).await
    }

    async fn put(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let (store, key, content_type) = (self.clone(), key.clone(), content_type.to_owned());
        blocking(move || store.put_blocking(&key, &bytes, &content_type)).await
    }

    async fn put_if_absent(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<PutOutcome, StorageError> {
        let (store, key, content_type) = (self.clone(), key.clone(), content_type.to_owned());
        blocking(move || store.put_if_absent_blocking(&key, &bytes, &content_type)).await
    }

    async fn get(&self, key: &ObjectKey) -> Result<Blob, StorageError> {
        let (store, key) = (self.clone(), key.clone());
        blocking(move || store.get_blocking(&key)).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let (store, key) = (self.clone(), key.clone());
        blocking(move || store.head_blocking(&key)).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let (store, key) = (self.clone(), key.clone());
        blocking(move || store.delete_blocking(&key)).await
    }

    async fn presigned_get(&self, _key: &ObjectKey) -> Result<Option<String>, StorageError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> ObjectKey {
        ObjectKey::parse(raw).expect("valid test key")
    }

    fn leftover_temp_files(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).expect("readable test dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.to_string_lossy().contains(".tmp-") {
                    found.push(path);
                }
            }
        }
        found
    }

    /// `out/<tenant>/<job>` is a directory of attempts here: reading it is "not found" (a 422
    /// for an `input_image` naming it), never an I/O error (a 5xx).
    #[tokio::test]
    async fn a_key_prefix_is_not_an_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().join("data"));
        store.check().await.expect("check creates the root");
        store
            .put(
                &key("out/acme/job/1.png"),
                Bytes::from_static(b"x"),
                "image/png",
            )
            .await
            .expect("put");
        let e = store.get(&key("out/acme/job")).await.expect_err("a prefix");
        assert!(e.is_not_found(), "{e}");
    }

    #[tokio::test]
    async fn files_land_under_the_root_and_no_temp_files_remain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().join("data"));
        store.check().await.expect("check creates the root");
        let k = key("out/acme/job/1.png");
        store
            .put(&k, Bytes::from_static(b"one"), "image/png")
            .await
            .expect("put");
        store
            .put(&k, Bytes::from_static(b"two"), "image/png")
            .await
            .expect("overwrite");
        let outcome = store
            .put_if_absent(&k, Bytes::from_static(b"three"), "image/png")
            .await
            .expect("put_if_absent");
        assert_eq!(outcome, PutOutcome::AlreadyExists);
        assert_eq!(
            fs::read(dir.path().join("data/out/acme/job/1.png")).expect("plain file"),
            b"two"
        );
        assert!(leftover_temp_files(dir.path()).is_empty());
        assert!(!dir.path().join("data").read_dir().expect("root").any(|e| {
            e.expect("entry")
                .file_name()
                .to_string_lossy()
                .starts_with(".write-probe")
        }));
    }

    #[tokio::test]
    async fn racing_put_if_absent_creates_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let k = key("in/acme/abc.png");
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let (store, k) = (store.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .put_if_absent(&k, Bytes::from(vec![i; 1024]), "image/png")
                    .await
            }));
        }
        let mut created = 0;
        for task in tasks {
            if task.await.expect("task").expect("put_if_absent") == PutOutcome::Created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        let blob = store.get(&k).await.expect("get");
        assert_eq!(blob.bytes.len(), 1024);
        assert!(blob.bytes.iter().all(|b| *b == blob.bytes[0]), "not torn");
        assert!(leftover_temp_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_prefix_is_not_an_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        store
            .put(&key("out/a/j/1.png"), Bytes::from_static(b"x"), "image/png")
            .await
            .expect("put");
        assert_eq!(store.head(&key("out/a/j")).await.expect("head"), None);
        // A key below an existing object's file is simply missing.
        let below = key("out/a/j/1.png/x");
        assert!(store.get(&below).await.expect_err("missing").is_not_found());
        assert_eq!(store.head(&below).await.expect("head"), None);
    }

    #[tokio::test]
    async fn check_reports_an_unusable_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").expect("write");
        let err = LocalStore::new(&file)
            .check()
            .await
            .expect_err("a file is no root");
        assert!(
            err.to_string().contains("not-a-dir"),
            "names the path: {err}"
        );
    }
}
