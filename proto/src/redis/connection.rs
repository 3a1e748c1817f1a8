//! Connections and start-up checks of `RedisQueue`.
//!
//! Ordinary commands share one multiplexed `ConnectionManager` (reconnects on its own). Commands
//! that block server-side (`XREAD BLOCK`, `WAIT`) would stall every request queued behind them on
//! that connection, so they run on connections of their own from `BlockingPool`.
//!
//! The server is checked once at connect: Redis ≥ 7.0 and `maxmemory-policy noeviction` (any
//! other policy may evict job hashes, leases or streams — jobs would silently vanish). AOF off is
//! logged as a warning: without `appendonly yes` a Redis restart loses accepted jobs.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::reply::backend;
use crate::error::QueueError;
use crate::policy::QueueConfig;

/// Settings of `RedisQueue` beyond the shared `QueueConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    pub queue: QueueConfig,
    /// After a submit, `WAIT` for this many replicas to have it (0 = don't wait). Best effort:
    /// `WAIT` does not make Redis strongly consistent; a shortfall is logged, not an error.
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
    /// Response timeout of ordinary (non-blocking) commands.
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    /// Blocking commands (event follows, `Prefer: wait`, dispatch waits, submit + `WAIT`) in
    /// flight at once, each on a connection of its own; past it they fail with
    /// `QueueError::Saturated` at once, so followers cannot exhaust the server's `maxclients`.
    pub max_blocking: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            queue: QueueConfig::default(),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_blocking: 256,
        }
    }
}

/// Open the shared multiplexed connection.
pub(crate) async fn shared(
    client: &Client,
    cfg: &RedisConfig,
) -> Result<ConnectionManager, QueueError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(cfg.command_timeout))
        .set_connection_timeout(Some(cfg.connect_timeout));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(backend)
}

/// Dedicated connections for blocking commands: at most `max` in use, `MAX_IDLE` kept idle.
pub(crate) struct BlockingPool {
    /// Replaced after a Sentinel failover (`set_client`).
    client: Mutex<Client>,
    connect_timeout: Duration,
    idle: Mutex<Vec<MultiplexedConnection>>,
    in_use: Arc<Semaphore>,
    max: usize,
}

/// A connection taken from `BlockingPool`; its slot is free again when it is dropped.
pub(crate) struct BlockingConnection {
    pub(crate) con: MultiplexedConnection,
    _slot: OwnedSemaphorePermit,
}

/// Idle blocking connections kept for reuse; more are opened on demand and closed after use.
const MAX_IDLE: usize = 16;

impl BlockingPool {
    pub(crate) fn new(client: Client, connect_timeout: Duration, max: usize) -> Self {
        let max = max.max(1);
        Self {
            client: Mutex::new(client),
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            in_use: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A connection without a client-side response timeout: callers bound the wait themselves
    /// and drop the connection (never `put` it back) when that bound fires. Fails at once with
    /// `Saturated` when `max` are in use.
    pub(crate) async fn take(&self) -> Result<BlockingConnection, QueueError> {
        let slot =
            Arc::clone(&self.in_use)
                .try_acquire_owned()
                .map_err(|_| QueueError::Saturated {
                    what: "blocking Redis connections",
                    limit: self.max,
                })?;
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(con) = reused {
            return Ok(BlockingConnection { con, _slot: slot });
        }
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.connect_timeout));
        let client = self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(backend)?;
        Ok(BlockingConnection { con, _slot: slot })
    }

    /// From now on, connect to `client`'s server (the new primary after a failover); idle
    /// connections to the old one are dropped.
    pub(crate) fn set_client(&self, client: Client) {
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = client;
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Connections in use now.
    pub(crate) fn in_use(&self) -> usize {
        self.max - self.in_use.available_permits()
    }

    pub(crate) fn put(&self, taken: BlockingConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(taken.con);
        }
    }
}

/// The value of `field` in an `INFO` reply.
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// Refuse servers that could lose jobs by design.
pub(crate) async fn check_server(con: &mut ConnectionManager) -> Result<(), QueueError> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .arg("memory")
        .arg("persistence")
        .query_async(con)
        .await
        .map_err(backend)?;
    check_info(&info)?;
    if info_field(&info, "aof_enabled") == Some("0") {
        tracing::warn!(
            "Redis runs without appendonly: accepted jobs are lost if Redis restarts; \
             set `appendonly yes` (and `appendfsync everysec`) for durability"
        );
    }
    Ok(())
}

/// The checks of `check_server` on an `INFO` text.
pub(crate) fn check_info(info: &str) -> Result<(), QueueError> {
    let version = info_field(info, "redis_version").unwrap_or("unknown");
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 7 {
        return Err(QueueError::Config(format!(
            "Redis {version} is too old: the queue needs Redis >= 7.0 (stream lag and the \
             X[AUTO]CLAIM fixes)"
        )));
    }
    match info_field(info, "maxmemory_policy") {
        Some("noeviction") => Ok(()),
        policy => Err(QueueError::Config(format!(
            "Redis maxmemory-policy is {:?}, which may evict job records, leases and queue \
             streams (jobs would vanish). Run `CONFIG SET maxmemory-policy noeviction` and set \
             `maxmemory-policy noeviction` in redis.conf",
            policy.unwrap_or("unknown")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str =
        "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nmaxmemory_policy:noeviction\r\n";

    #[test]
    fn accepts_noeviction_on_redis_7() {
        assert!(check_info(INFO).is_ok());
        assert_eq!(info_field(INFO, "redis_version"), Some("7.0.15"));
    }

    #[test]
    fn refuses_evicting_policies_with_the_fix() {
        let info = INFO.replace("noeviction", "allkeys-lru");
        let err = check_info(&info).expect_err("must refuse").to_string();
        assert!(
            err.contains("allkeys-lru") && err.contains("CONFIG SET maxmemory-policy noeviction"),
            "{err}"
        );
    }

    #[test]
    fn refuses_old_servers() {
        let info = INFO.replace("7.0.15", "6.2.6");
        assert!(
            check_info(&info)
                .expect_err("must refuse")
                .to_string()
                .contains(">= 7.0")
        );
    }
}
