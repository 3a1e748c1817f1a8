//! Failed authentications per client address: after `burst` failures, one more is allowed every
//! `60 s / per_minute` (GCRA, `governor`), and a client over that budget is answered 429 with
//! `Retry-After` on *every* keyed request until the budget refills — also when the key it sends
//! is right, so that guessing on past the limit learns nothing.
//!
//! Clients are told apart by their peer address (IPv4) or their /64 (IPv6: one host usually
//! holds a whole /64, so rotating addresses inside it does not reset the budget). Behind a
//! reverse proxy every client shares the proxy's address: limit failed authentications there.
//!
//! Memory is bounded: the GCRA state of a client is dropped once its budget is full again
//! (`prune`, called by the reaper's tick), and at most `MAX_BLOCKED` clients are held blocked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Clients blocked at once; past it, the ones whose block ends first are forgotten.
const MAX_BLOCKED: usize = 100_000;

/// The unit a budget belongs to: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4))),
                // The top 64 bits, tagged so they never equal an IPv4 key.
                None => Self((u128::from(v6) & !u128::from(u64::MAX)) | 1),
            },
        }
    }
}

/// Limits of failed authentications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailureLimits {
    /// Failures allowed back to back.
    pub burst: u32,
    /// Failures per minute allowed after the burst (the refill rate).
    pub per_minute: u32,
}

impl Default for AuthFailureLimits {
    fn default() -> Self {
        Self {
            burst: 20,
            per_minute: 10,
        }
    }
}

/// The budget of failed authentications per client (see the module comment).
pub struct AuthFailures<C: Clock = DefaultClock> {
    limiter: RateLimiter<ClientKey, HashMapStateStore<ClientKey>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    /// Clients over budget → when their next attempt is allowed.
    blocked: Mutex<HashMap<ClientKey, C::Instant>>,
}

impl AuthFailures<DefaultClock> {
    pub fn new(limits: AuthFailureLimits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> AuthFailures<C> {
    pub fn with_clock(limits: AuthFailureLimits, clock: C) -> Self {
        let per_minute = NonZeroU32::new(limits.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Self {
            limiter: RateLimiter::new(quota, HashMapStateStore::default(), clock.clone()),
            clock,
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// How long `client` must wait before its next keyed request is looked at; `None` when it may
    /// go ahead.
    pub fn blocked_for(&self, client: ClientKey) -> Option<Duration> {
        let now = self.clock.now();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *blocked.get(&client)?;
        if until <= now {
            blocked.remove(&client);
            return None;
        }
        Some(until.duration_since(now).into())
    }

    /// Records a failed authentication of `client`; returns how long it is now blocked when this
    /// failure was over its budget.
    pub fn failed(&self, client: ClientKey) -> Option<Duration> {
        let not_until = self.limiter.check_key(&client).err()?;
        let now = self.clock.now();
        let wait = not_until.wait_time_from(now);
        let until = now + wait.into();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        if blocked.len() >= MAX_BLOCKED && !blocked.contains_key(&client) {
            blocked.retain(|_, at| *at > now);
            if blocked.len() >= MAX_BLOCKED
                && let Some(first) = blocked.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
            {
                blocked.remove(&first);
            }
        }
        blocked.insert(client, until);
        Some(wait)
    }

    /// Forgets clients whose budget is full again and blocks that have ended.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let now = self.clock.now();
        self.blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, at| *at > now);
    }

    /// Clients with state held (for tests and the memory bound).
    pub fn tracked(&self) -> usize {
        self.limiter.len()
            + self
                .blocked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits() -> AuthFailureLimits {
        AuthFailureLimits {
            burst: 3,
            per_minute: 6,
        }
    }

    #[test]
    fn a_client_is_blocked_after_its_burst_until_the_budget_refills() {
        let clock = FakeRelativeClock::default();
        let f = AuthFailures::with_clock(limits(), clock.clone());
        let a = ClientKey::of(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
        let b = ClientKey::of(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8)));
        for _ in 0..3 {
            assert_eq!(f.failed(a), None);
            assert_eq!(f.blocked_for(a), None);
        }
        let wait = f.failed(a).expect("the fourth failure is over the burst");
        assert_eq!(
            wait,
            Duration::from_secs(10),
            "6 per minute: one every 10 s"
        );
        assert_eq!(f.blocked_for(a), Some(Duration::from_secs(10)));
        assert_eq!(f.blocked_for(b), None, "other clients are not affected");
        clock.advance(Duration::from_secs(4));
        assert_eq!(f.blocked_for(a), Some(Duration::from_secs(6)));
        clock.advance(Duration::from_secs(6));
        assert_eq!(f.blocked_for(a), None);
        assert_eq!(f.failed(a), None, "one failure refilled");
        assert!(f.failed(a).is_some());
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let one: Ipv6Addr = "2001:db8:1:2::1".parse().expect("ip");
        let two: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other: Ipv6Addr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(ClientKey::of(one.into()), ClientKey::of(two.into()));
        assert_ne!(ClientKey::of(one.into()), ClientKey::of(other.into()));
        let v4 = Ipv4Addr::new(198, 51, 100, 1);
        assert_eq!(
            ClientKey::of(v4.to_ipv6_mapped().into()),
            ClientKey::of(v4.into())
        );
    }

    #[test]
    fn pruning_forgets_clients_whose_budget_is_full() {
        let clock = FakeRelativeClock::default();
        let f = AuthFailures::with_clock(limits(), clock.clone());
        for i in 0..50u8 {
            let c = ClientKey::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)));
            for _ in 0..4 {
                f.failed(c);
            }
        }
        assert_eq!(f.tracked(), 100, "50 budgets and 50 blocks");
        clock.advance(Duration::from_secs(60));
        f.prune();
        assert_eq!(f.tracked(), 0);
    }
}
