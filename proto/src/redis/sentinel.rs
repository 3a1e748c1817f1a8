//! Redis Sentinel: `redis+sentinel://` URLs name the Sentinels and the monitored service; the
//! queue connects to the primary Sentinel reports (checked with `ROLE`, redis-rs
//! `SentinelClient`), and a watcher asks again every `FOLLOW_EVERY`: after a failover it moves
//! the shared connection and the blocking pool to the new primary. Commands in flight during the
//! switch fail as backend errors; their callers retry as for any outage (workers' claim loop,
//! heartbeats until the lease runs out, HTTP clients on 503). With `--redis-wait-replicas 1`, a
//! submit's acknowledgement waits (up to `wait_timeout`) until a replica has it, so a promoted
//! replica holds every job acknowledged while a replica was in sync; a shortfall (no replica
//! left, or one lagging past the timeout) is logged, not refused (see `RedisConfig`).
//!
//! URL: `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`; the port
//! defaults to 26379; the credentials and db are those of the data nodes.

use std::sync::{RwLock, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, RedisConnectionInfo};

use super::connection::{BlockingPool, RedisConfig, shared};
use super::reply::backend;
use crate::error::QueueError;

/// How often the watcher asks Sentinel for the primary.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(500);
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// `redis://host:port` of each Sentinel.
    pub sentinels: Vec<String>,
    pub service: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

fn invalid(why: &str) -> QueueError {
    QueueError::Config(format!(
        "invalid redis+sentinel URL: {why} (expected \
         redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db])"
    ))
}

/// `None` when `url` is not a `redis+sentinel://` URL.
pub(crate) fn parse(url: &str) -> Result<Option<SentinelUrl>, QueueError> {
    let Some(rest) = url.strip_prefix("redis+sentinel://") else {
        return Ok(None);
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (
                Some(u.to_owned()).filter(|u| !u.is_empty()),
                Some(p.to_owned()),
            ),
            None => (Some(a.to_owned()), None),
        },
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or_else(|| invalid("no service name"))?;
    let mut parts = path.trim_end_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    if service.is_empty() {
        return Err(invalid("no service name"));
    }
    let db = match parts.next() {
        Some(d) => d.parse().map_err(|_| invalid("the db is not a number"))?,
        None => 0,
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(invalid("an empty host"));
        }
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_owned()
        } else {
            format!("{host}:{DEFAULT_SENTINEL_PORT}")
        };
        sentinels.push(format!("redis://{with_port}"));
    }
    Ok(Some(SentinelUrl {
        sentinels,
        service: service.to_owned(),
        db,
        username,
        password,
    }))
}

impl SentinelUrl {
    pub(crate) fn client(&self) -> Result<SentinelClient, QueueError> {
        let mut node = RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            node = node.set_username(u);
        }
        if let Some(p) = &self.password {
            node = node.set_password(p);
        }
        SentinelClient::build(
            self.sentinels.clone(),
            self.service.clone(),
            Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(node)),
            SentinelServerType::Master,
        )
        .map_err(|e| QueueError::Config(format!("invalid redis+sentinel URL: {e}")))
    }
}

/// The primary's client, as Sentinel reports it now.
pub(crate) async fn primary(sentinel: &mut SentinelClient) -> Result<Client, QueueError> {
    sentinel.async_get_client().await.map_err(backend)
}

/// Follows failovers until the queue is dropped: when Sentinel reports another primary, the
/// shared connection and the blocking pool move to it.
pub(crate) async fn follow(
    mut sentinel: SentinelClient,
    mut current: String,
    conn: Weak<RwLock<ConnectionManager>>,
    blocking: Weak<BlockingPool>,
    cfg: RedisConfig,
) {
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Some(conn), Some(blocking)) = (conn.upgrade(), blocking.upgrade()) else {
            return;
        };
        // During a failover Sentinel may still name the dead primary, or none: ask again.
        let Ok(client) = primary(&mut sentinel).await else {
            continue;
        };
        let addr = client.get_connection_info().addr().to_string();
        if addr == current {
            continue;
        }
        match shared(&client, &cfg).await {
            Ok(manager) => {
                tracing::warn!(from = %current, to = %addr, "Redis failover: following the new primary");
                *conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = manager;
                blocking.set_client(client);
                current = addr;
            }
            Err(e) => {
                tracing::warn!(to = %addr, error = %e, "could not connect to the new primary yet")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse() {
        assert_eq!(parse("redis://localhost:6379/").expect("ok"), None);
        let u = parse("redis+sentinel://:s3cret@a:26380,b/kx/2")
            .expect("ok")
            .expect("sentinel");
        assert_eq!(
            u.sentinels,
            vec!["redis://a:26380".to_owned(), "redis://b:26379".to_owned()]
        );
        assert_eq!((u.service.as_str(), u.db), ("kx", 2));
        assert_eq!((u.username, u.password.as_deref()), (None, Some("s3cret")));
        let plain = parse("redis+sentinel://127.0.0.1:5000/mymaster")
            .expect("ok")
            .expect("sentinel");
        assert_eq!((plain.db, plain.password), (0, None));
        for bad in [
            "redis+sentinel://host",
            "redis+sentinel://host/",
            "redis+sentinel://a,,b/kx",
            "redis+sentinel://a/kx/x",
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains("redis+sentinel"), "{bad}: {e}");
        }
    }
}
