//! The S3 test server: s3s-fs (a real S3 HTTP implementation over a directory, with SigV4
//! checking) embedded as a library and served on a free loopback port.
//!
//! The server runs on its own thread with its own tokio runtime, so it keeps answering while a
//! test's runtime is blocked or shutting down, and it serves every test of the process:
//! [`S3Server::shared`] starts it once (`OnceLock`) and each test takes a fresh bucket
//! ([`S3Server::fresh_store`]), so tests never see each other's objects. It lives inside the
//! test process, so it stops when the process ends, whether the tests passed or failed.
//! Because statics are never dropped, the shared server's data directory is named after the
//! process id and swept by the next start once that process is gone. [`S3Server::start`] gives a
//! private server instead, which is stopped and deleted when dropped (also on a panic).
//! No fixed ports anywhere.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use kontext_storage::{BlobStore, S3Config, S3Store};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// Region the tests sign for; s3s-fs accepts any.
pub const REGION: &str = "us-east-1";

/// Name prefix of shared servers' data directories (followed by the owning process id).
const SHARED_DIR_PREFIX: &str = "kontext-e2e-s3-";

/// How long starting may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(10);

enum DataDir {
    /// Deleted when the server is dropped.
    Temp(tempfile::TempDir),
    /// The shared server's directory; swept by a later process (see the module docs).
    Kept(PathBuf),
}

/// A running s3s-fs server. Dropping it stops the server and deletes its data.
pub struct S3Server {
    addr: SocketAddr,
    endpoint: String,
    access_key: String,
    secret_key: String,
    startup: Duration,
    stop: Option<oneshot::Sender<()>>,
    /// `true` while the server plays dead (`set_down`).
    down: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    data: DataDir,
}

impl S3Server {
    /// The process-wide server, started on first use.
    pub fn shared() -> anyhow::Result<&'static S3Server> {
        static SHARED: OnceLock<Result<S3Server, String>> = OnceLock::new();
        let server = SHARED.get_or_init(|| {
            sweep_dead_shared_dirs();
            let dir = tempfile::Builder::new()
                .prefix(&format!("{SHARED_DIR_PREFIX}{}-", std::process::id()))
                .tempdir()
                .map_err(|e| format!("creating the S3 data directory: {e}"))?
                .keep();
            let server = Self::start_in(DataDir::Kept(dir))
                .map_err(|e| format!("starting s3s-fs: {e:#}"))?;
            eprintln!(
                "s3s-fs test server at {} started in {:.2?}",
                server.endpoint, server.startup
            );
            Ok(server)
        });
        server.as_ref().map_err(|e| anyhow!("{e}"))
    }

    /// A private server that lives as long as the process (for fleets, which hold a
    /// `&'static S3Server`); its directory is swept like the shared server's.
    pub fn start_for_process() -> anyhow::Result<&'static S3Server> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{SHARED_DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("creating the S3 data directory")?
            .keep();
        Ok(Box::leak(Box::new(Self::start_in(DataDir::Kept(dir))?)))
    }

    /// Plays dead while `down`: open connections are cut and new ones are closed as soon as
    /// they are accepted (what clients see when the server is stopped or unreachable); the data
    /// stays. `set_down(false)` serves again on the same port.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// A private server for tests that must not share one (stopped and deleted on drop).
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kontext-e2e-s3-private-")
            .tempdir()
            .context("creating the S3 data directory")?;
        Self::start_in(DataDir::Temp(dir))
    }

    fn start_in(data: DataDir) -> anyhow::Result<Self> {
        let started = Instant::now();
        let root = match &data {
            DataDir::Temp(dir) => dir.path().to_path_buf(),
            DataDir::Kept(path) => path.clone(),
        };
        let access_key = format!("test-{}", uuid::Uuid::new_v4().simple());
        let secret_key = uuid::Uuid::new_v4().simple().to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (down_tx, down_rx) = watch::channel(false);
        let (ak, sk) = (access_key.clone(), secret_key.clone());
        let thread = std::thread::Builder::new()
            .name("s3s-fs".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("s3s-fs-worker")
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        runtime.block_on(serve(root, ak, sk, ready_tx, stop_rx, down_rx));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("building its runtime: {e}")));
                    }
                }
            })
            .context("spawning the s3s-fs thread")?;
        let addr = ready_rx
            .recv_timeout(START_TIMEOUT)
            .map_err(|e| anyhow!("s3s-fs did not report ready within {START_TIMEOUT:?}: {e}"))??;
        Ok(Self {
            addr,
            endpoint: format!("http://{addr}"),
            access_key,
            secret_key,
            startup: started.elapsed(),
            stop: Some(stop_tx),
            down: down_tx,
            thread: Some(thread),
            data,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint
    }

    pub fn region(&self) -> &str {
        REGION
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Where the objects lie on disk: `<data_dir>/<bucket>/<key>`.
    pub fn data_dir(&self) -> &Path {
        match &self.data {
            DataDir::Temp(dir) => dir.path(),
            DataDir::Kept(path) => path,
        }
    }

    /// From `start` until the server accepted on its port.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// A client configuration for `bucket` on this server: explicit endpoint, region and
    /// credentials (nothing from the environment), path-style addressing.
    pub fn config(&self, bucket: &str) -> S3Config {
        let mut config = S3Config::new(bucket);
        config.endpoint = Some(self.endpoint.clone());
        config.region = Some(REGION.to_owned());
        config.access_key_id = Some(self.access_key.clone());
        config.secret_access_key = Some(self.secret_key.clone());
        config.force_path_style = true;
        config.attempt_timeout = Duration::from_secs(30);
        config
    }

    /// A store on a new, empty bucket with a unique name, created through the store's own
    /// start-up check.
    pub async fn fresh_store(&self) -> anyhow::Result<S3Store> {
        let mut config = self.config(&unique_bucket_name());
        config.create_bucket_if_missing = true;
        let store = S3Store::connect(config)
            .await
            .context("configuring the S3 client")?;
        store.check().await.context("creating the test bucket")?;
        Ok(store)
    }
}

/// `kx-<32 hex>`: a valid bucket name no other test uses.
pub fn unique_bucket_name() -> String {
    format!("kx-{}", uuid::Uuid::new_v4().simple())
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // `data` drops after this: a temporary directory is deleted once nothing serves it.
    }
}

async fn serve(
    root: PathBuf,
    access_key: String,
    secret_key: String,
    ready: std::sync::mpsc::Sender<anyhow::Result<SocketAddr>>,
    mut stop: oneshot::Receiver<()>,
    down: watch::Receiver<bool>,
) {
    let setup = async {
        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|e| anyhow!("opening {} as an s3s-fs root: {e:?}", root.display()))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding a loopback port")?;
        let addr = listener.local_addr().context("reading the bound port")?;
        anyhow::Ok((builder.build(), listener, addr))
    };
    let (service, listener, addr) = match setup.await {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(addr)).is_err() {
        return;
    }
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    if *down.borrow() {
                        drop(socket);
                        continue;
                    }
                    // As real S3 servers do (Go's net package, behind MinIO, sets it by
                    // default): otherwise a body written after its headers waits ~40 ms for the
                    // client's delayed ACK, and bench-fleet measures that instead of the fleet.
                    let _ = socket.set_nodelay(true);
                    let connection = http
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    let mut down = down.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = connection => {}
                            // Going down cuts the connection mid-request.
                            _ = down.wait_for(|d| *d) => {}
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "s3s-fs test server: accept failed"),
            },
        }
    }
    // Returning drops the runtime with it, which ends the open connections.
}

/// Removes shared-server directories whose process has exited (Linux: `/proc/<pid>` is gone).
fn sweep_dead_shared_dirs() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SHARED_DIR_PREFIX))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
