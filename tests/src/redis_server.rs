//! A real redis-server for tests and benchmarks, on a free loopback port with its data in a
//! temporary directory.
//!
//! [`redis_url`] starts one server per test process on first use (`OnceLock`); tests isolate
//! themselves with a fresh key namespace ([`fresh_namespace`]), never with FLUSHDB.
//! [`RedisServer::start`] gives a private server (e.g. with another `maxmemory-policy`), stopped
//! when dropped.
//!
//! The server must stop when the test process exits, even on a panic or a kill, and statics are
//! never dropped. So it runs under `sh -c 'redis-server … & p=$!; read _; kill $p; …'` whose
//! stdin is a pipe from this process: when the process ends, the pipe closes, `read` returns, and
//! the shell stops redis and deletes the directory.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// How long a start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Ports are picked by binding port 0 and releasing it; another process may grab it meanwhile.
const START_ATTEMPTS: usize = 5;

/// A running redis-server. Dropping it stops the server and deletes its directory.
pub struct RedisServer {
    url: String,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    guard: Child,
    /// Guards of earlier runs on the same port and directory (`kill9` + `restart`); dropped
    /// after `guard`, their servers already dead.
    earlier: Vec<Child>,
}

impl RedisServer {
    /// Start a private server. `extra_args` are appended to the defaults (`--save ''
    /// --appendonly no --maxmemory-policy noeviction --bind 127.0.0.1`), so they override them.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let binary = find_binary()?;
        let mut last_error = anyhow!("redis-server was not started");
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&binary, extra_args) {
                Ok(server) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn start_once(binary: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("kontext-e2e-redis-")
            .tempdir()
            .context("creating the redis data directory")?
            .keep();
        let args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let guard = spawn_guarded(binary, &dir, &node_args(port, &dir, &args))?;
        let server = Self {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            dir,
            args,
            guard,
            earlier: Vec::new(),
        };
        server.wait_ready(&server.dir.join("redis.log"))?;
        Ok(server)
    }

    /// SIGKILL the server process: no shutdown, no final fsync (what a crash or an OOM kill
    /// does). Its data directory stays for `restart`.
    pub fn kill9(&self) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(self.dir.join("redis.pid"))
            .context("reading redis.pid")?
            .trim()
            .to_owned();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .context("running kill -KILL")?;
        if !status.success() {
            bail!("kill -KILL {pid} failed");
        }
        Ok(())
    }

    /// Start the server again on the same port and directory (it loads its AOF, if any), and
    /// wait until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let binary = find_binary()?;
        let guard = spawn_guarded(
            &binary,
            &self.dir,
            &node_args(self.port, &self.dir, &self.args),
        )?;
        self.earlier.push(std::mem::replace(&mut self.guard, guard));
        self.wait_ready(&self.dir.join("redis.log"))
    }
}

/// The arguments of a data node on `port` with its data in `dir`; `extra` is appended, so it
/// overrides these.
fn node_args(port: u16, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.to_string_lossy(),
        "--logfile",
        &dir.join("redis.log").to_string_lossy(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory-policy",
        "noeviction",
        "--daemonize",
        "no",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    args.extend(extra.iter().cloned());
    args
}

/// redis-server with `args` and its files in `dir`, under a shell that stops it (and deletes
/// `dir`) when this process's end closes the shell's stdin; the server's pid goes to
/// `dir/redis.pid`.
pub(crate) fn spawn_guarded(binary: &Path, dir: &Path, args: &[String]) -> anyhow::Result<Child> {
    let script = r#"bin="$1"; shift; "$bin" "$@" & p=$!; echo $p > "$KX_REDIS_DIR/redis.pid"; read _; kill $p 2>/dev/null; wait $p; rm -rf "$KX_REDIS_DIR""#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(binary)
        .args(args)
        .env("KX_REDIS_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning sh for redis-server")
}

impl RedisServer {
    /// Poll until this server answers PING (and is ours: its `dir` is our directory).
    fn wait_ready(&self, log: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = redis::Client::open(self.url.as_str()).context("redis url")?;
        let want_dir = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        loop {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            if log_text.contains("Address already in use") || log_text.contains("FATAL") {
                bail!("redis-server failed to start on {}:\n{log_text}", self.url);
            }
            let probe = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| {
                    redis::cmd("PING").query::<String>(&mut c)?;
                    redis::cmd("CONFIG")
                        .arg("GET")
                        .arg("dir")
                        .query::<Vec<String>>(&mut c)
                });
            if let Ok(reply) = probe {
                let dir = reply.get(1).map(PathBuf::from).unwrap_or_default();
                if dir.canonicalize().unwrap_or(dir) == want_dir {
                    return Ok(());
                }
                bail!("port of {} was taken by another redis-server", self.url);
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server at {} did not answer PING within {START_TIMEOUT:?}:\n{log_text}",
                    self.url
                );
            }
            // Polling with a deadline: the server is another process we cannot await.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // EOF on the shell's stdin stops redis and removes the directory.
        drop(self.guard.stdin.take());
        let _ = self.guard.wait();
        for mut earlier in self.earlier.drain(..) {
            drop(earlier.stdin.take());
            let _ = earlier.wait();
        }
    }
}

/// redis-server on PATH, else /usr/bin/redis-server.
pub(crate) fn find_binary() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file());
    let fallback = PathBuf::from("/usr/bin/redis-server");
    on_path.or_else(|| fallback.is_file().then_some(fallback)).ok_or_else(|| {
        anyhow!(
            "redis-server not found: run `cargo xtask test` (installs it) or `apt-get install redis-server`"
        )
    })
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// URL of the process-wide test server, started on first use. Panics with the reason (e.g.
/// redis-server not installed), which fails the test that asked: tests never skip silently.
pub fn redis_url() -> String {
    static SHARED: OnceLock<Result<RedisServer, String>> = OnceLock::new();
    match SHARED.get_or_init(|| RedisServer::start(&[]).map_err(|e| format!("{e:#}"))) {
        Ok(server) => server.url().to_owned(),
        Err(e) => panic!("{e}"),
    }
}

/// A key namespace no other test uses.
pub fn fresh_namespace() -> String {
    format!("t-{}", uuid::Uuid::new_v4())
}
