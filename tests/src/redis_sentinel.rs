//! A Redis Sentinel deployment for failover tests: a primary, one replica and one Sentinel
//! (quorum 1, `down-after-milliseconds` 1000, `failover-timeout` 5000), each a real redis-server
//! process on a free loopback port, all stopped (and their directories deleted) when dropped or
//! when the test process ends.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::redis_server::{RedisServer, find_binary, free_port, spawn_guarded};

/// The monitored service's name.
pub const SERVICE: &str = "kx";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct SentinelSetup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinel_port: u16,
    _dir: PathBuf,
    guard: Child,
}

fn query(url: &str, cmd: &redis::Cmd) -> anyhow::Result<redis::Value> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(Duration::from_millis(500))?;
    Ok(cmd.query(&mut con)?)
}

/// Polls `check` until it holds (another process's state: nothing to await but time).
fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + READY_TIMEOUT;
    while !check() {
        if Instant::now() > until {
            bail!("{what} did not happen within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl SentinelSetup {
    pub fn start() -> anyhow::Result<Self> {
        let primary = RedisServer::start(&["--appendonly", "yes"])?;
        let primary_port = primary.port().to_string();
        let replica = RedisServer::start(&[
            "--appendonly",
            "yes",
            "--replicaof",
            "127.0.0.1",
            &primary_port,
        ])?;
        wait_until("the replica's first sync", || {
            query(replica.url(), redis::cmd("INFO").arg("replication"))
                .ok()
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
                .is_some_and(|info| info.contains("master_link_status:up"))
        })?;

        let binary = find_binary()?;
        let sentinel_port = free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("kontext-e2e-sentinel-")
            .tempdir()
            .context("creating the sentinel directory")?
            .keep();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/redis.log\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 5000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir = dir.display()
            ),
        )
        .context("writing sentinel.conf")?;
        let guard = spawn_guarded(
            &binary,
            &dir,
            &[conf.to_string_lossy().into_owned(), "--sentinel".to_owned()],
        )?;
        let setup = Self {
            primary,
            replica,
            sentinel_port,
            _dir: dir,
            guard,
        };
        let sentinel = format!("redis://127.0.0.1:{sentinel_port}/");
        wait_until("Sentinel knowing the replica", || {
            query(
                &sentinel,
                redis::cmd("SENTINEL").arg("replicas").arg(SERVICE),
            )
            .ok()
            .and_then(|v| redis::from_redis_value::<Vec<redis::Value>>(v).ok())
            .is_some_and(|r| r.len() == 1)
        })?;
        Ok(setup)
    }

    /// `redis+sentinel://127.0.0.1:<port>/kx`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{SERVICE}",
            self.sentinel_port
        )
    }

    /// The port of the primary Sentinel names now.
    pub fn primary_port(&self) -> anyhow::Result<u16> {
        let sentinel = format!("redis://127.0.0.1:{}/", self.sentinel_port);
        let v = query(
            &sentinel,
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(SERVICE),
        )?;
        let addr: Vec<String> = redis::from_redis_value(v)?;
        Ok(addr.get(1).context("no port")?.parse()?)
    }

    /// Waits until Sentinel has promoted the replica.
    pub fn wait_failover(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let replica = self.replica.port();
        wait_until("the failover to the replica", || {
            self.primary_port().is_ok_and(|p| p == replica)
        })?;
        Ok(started.elapsed())
    }
}

impl Drop for SentinelSetup {
    fn drop(&mut self) {
        drop(self.guard.stdin.take());
        let _ = self.guard.wait();
    }
}
