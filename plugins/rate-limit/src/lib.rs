//! Admission by rate: a token bucket on new flows, per Service port (and address family) or
//! per client address. Each new flow takes one token; a flow that finds the bucket empty is
//! denied with `rate-limited`. Buckets refill continuously at the configured rate.
//!
//! Config, comma-separated `key=value`:
//! - `rate=N/s` (or `N/m`, `N/h`; a bare `N` is per second): the sustained rate. Required.
//! - `burst=N`: bucket size, the most flows admitted at once after a quiet spell. Default: one
//!   second's worth of the rate (at least 1).
//! - `per=service` (default) or `per=client`: one bucket for the Service port, or one per
//!   client address.
//! - `clients=N`: with `per=client`, the most client buckets kept (default 65536). Buckets
//!   that have refilled are dropped first; if every bucket is in use, the clients beyond the
//!   limit share one overflow bucket, so memory stays bounded under a flood of sources.
//!
//! Example: `rate=100/s,burst=20` or `rate=600/m,per=client`.
use nodeport_plugin::{
    config, export, Admission, DenyReason, Flow, HandleMap, Plugin, RandomState, Service, Verdict,
};
use std::collections::HashMap;
use std::net::IpAddr;

/// Parsed configuration of one Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Tokens added per `period_ns`.
    pub tokens: u64,
    /// The rate's period in nanoseconds.
    pub period_ns: u64,
    /// Bucket size in tokens.
    pub burst: u64,
    /// One bucket per client address instead of one per Service port.
    pub per_client: bool,
    /// Most client buckets kept.
    pub max_clients: usize,
}

const SECOND: u64 = 1_000_000_000;

impl Limit {
    /// Parses a config string; errors name the offending entry.
    pub fn parse(cfg: &str) -> Result<Limit, String> {
        let mut rate = None;
        let mut burst = None;
        let mut per_client = false;
        let mut max_clients = 65536;
        for (key, value) in config::pairs(cfg)? {
            match key {
                "rate" => {
                    let (n, unit) = value.split_once('/').unwrap_or((value, "s"));
                    let period = match unit.trim() {
                        "s" => SECOND,
                        "m" => 60 * SECOND,
                        "h" => 3600 * SECOND,
                        _ => return Err(format!("`rate={value}`: the unit must be s, m or h")),
                    };
                    let n: u64 = config::number("rate", n.trim())?;
                    if n == 0 {
                        return Err("`rate=0`: to refuse every flow, remove the Service".into());
                    }
                    rate = Some((n, period));
                }
                "burst" => burst = Some(config::number::<u64>(key, value)?),
                "per" => {
                    per_client = match value {
                        "service" => false,
                        "client" => true,
                        _ => return Err(format!("`per={value}`: expected service or client")),
                    }
                }
                "clients" => max_clients = config::number(key, value)?,
                _ => return Err(config::unknown(key, &["rate", "burst", "per", "clients"])),
            }
        }
        let (tokens, period_ns) = rate.ok_or("`rate` is required, e.g. rate=100/s")?;
        // one second's worth, rounded up, at least one token
        let per_second = (u128::from(tokens) * u128::from(SECOND)).div_ceil(u128::from(period_ns));
        let burst = burst.unwrap_or(per_second.clamp(1, u128::from(u32::MAX)) as u64);
        if burst == 0 {
            return Err("`burst=0` would refuse every flow: use at least 1".into());
        }
        if max_clients == 0 {
            return Err("`clients=0`: use at least 1".into());
        }
        Ok(Limit {
            tokens,
            period_ns,
            burst,
            per_client,
            max_clients,
        })
    }
}

/// A token bucket in exact integer units: one token is `period_ns` units and every
/// nanosecond adds `tokens` units, so no rate rounds to zero and nothing drifts.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    units: u128,
    last_ns: u64,
}

impl Bucket {
    /// A full bucket at time `now_ns`.
    pub fn full(limit: &Limit, now_ns: u64) -> Bucket {
        Bucket {
            units: capacity(limit),
            last_ns: now_ns,
        }
    }

    fn refill(&mut self, limit: &Limit, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        let added = u128::from(elapsed) * u128::from(limit.tokens);
        self.units = self.units.saturating_add(added).min(capacity(limit));
        self.last_ns = self.last_ns.max(now_ns);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, limit: &Limit, now_ns: u64) -> bool {
        self.refill(limit, now_ns);
        let one = u128::from(limit.period_ns);
        if self.units >= one {
            self.units -= one;
            true
        } else {
            false
        }
    }

    /// Whether it has refilled completely, so dropping it changes nothing.
    pub fn is_full(&self, limit: &Limit, now_ns: u64) -> bool {
        let mut b = *self;
        b.refill(limit, now_ns);
        b.units >= capacity(limit)
    }
}

fn capacity(limit: &Limit) -> u128 {
    u128::from(limit.burst) * u128::from(limit.period_ns)
}

/// The state of one Service port.
pub struct Port {
    limit: Limit,
    shared: Bucket,
    /// Keyed with host randomness: the keys are addresses a client chooses.
    clients: HashMap<IpAddr, Bucket, RandomState>,
    last_sweep_ns: u64,
}

impl Port {
    /// A port with full buckets at `now_ns`.
    pub fn new(limit: Limit, now_ns: u64) -> Port {
        Port {
            limit,
            shared: Bucket::full(&limit, now_ns),
            clients: HashMap::default(),
            last_sweep_ns: now_ns,
        }
    }

    /// Whether a new flow from `client` is admitted at `now_ns`.
    pub fn admit(&mut self, client: IpAddr, now_ns: u64) -> bool {
        let limit = self.limit;
        if !limit.per_client {
            return self.shared.take(&limit, now_ns);
        }
        if let Some(bucket) = self.clients.get_mut(&client) {
            return bucket.take(&limit, now_ns);
        }
        if self.clients.len() >= limit.max_clients {
            // at most one O(n) sweep per second, however hard a flood of sources pushes
            if now_ns.saturating_sub(self.last_sweep_ns) >= SECOND {
                self.last_sweep_ns = now_ns;
                self.clients.retain(|_, b| !b.is_full(&limit, now_ns));
            }
            if self.clients.len() >= limit.max_clients {
                return self.shared.take(&limit, now_ns);
            }
        }
        let mut bucket = Bucket::full(&limit, now_ns);
        let ok = bucket.take(&limit, now_ns);
        self.clients.insert(client, bucket);
        ok
    }
}

#[derive(Default)]
pub struct RateLimit {
    ports: HandleMap<Port>,
}

impl Plugin for RateLimit {
    fn configure(&mut self, service: &Service, config: &str) -> Result<(), String> {
        let limit = Limit::parse(config)?;
        self.ports.insert(
            service.handle,
            Port::new(limit, nodeport_plugin::now_nanos()),
        );
        Ok(())
    }

    fn forget(&mut self, handle: u32) {
        self.ports.remove(&handle);
    }
}

impl Admission for RateLimit {
    fn admit(&mut self, flow: &Flow) -> Verdict {
        let Some(port) = self.ports.get_mut(&flow.handle) else {
            return Verdict::Deny(DenyReason::Policy);
        };
        if port.admit(flow.client, nodeport_plugin::now_nanos()) {
            Verdict::Allow
        } else {
            Verdict::Deny(DenyReason::RateLimited)
        }
    }
}

export!(RateLimit: admission);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_configs_never_panic() {
        nodeport_plugin::testing::fuzz_configure::<RateLimit>(20_000);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_documented_syntax() {
        let l = Limit::parse("rate=100/s,burst=20").unwrap();
        assert_eq!(
            (l.tokens, l.period_ns, l.burst, l.per_client),
            (100, SECOND, 20, false)
        );
        let l = Limit::parse("rate=600/m, per=client, clients=10").unwrap();
        assert_eq!((l.tokens, l.period_ns, l.burst), (600, 60 * SECOND, 10));
        assert!(l.per_client && l.max_clients == 10);
        assert_eq!(Limit::parse("rate=5").unwrap().burst, 5);
        assert_eq!(Limit::parse("rate=1/h").unwrap().burst, 1);
    }

    #[test]
    fn rejects_bad_configs_by_name() {
        assert!(Limit::parse("").unwrap_err().contains("rate"));
        assert!(Limit::parse("rate=10/d").unwrap_err().contains("rate=10/d"));
        assert!(Limit::parse("rate=x/s").unwrap_err().contains("rate=x"));
        assert!(Limit::parse("rate=0/s").is_err());
        assert!(Limit::parse("rate=1,burst=0").is_err());
        assert!(Limit::parse("rate=1,per=node")
            .unwrap_err()
            .contains("per=node"));
        assert!(Limit::parse("rate=1,brust=3")
            .unwrap_err()
            .contains("brust"));
        assert!(Limit::parse("rate=1,clients=0").is_err());
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let limit = Limit::parse("rate=10/s,burst=3").unwrap();
        let mut port = Port::new(limit, 1_000);
        let c = ip("192.0.2.1");
        assert!((0..3).all(|_| port.admit(c, 1_000)));
        assert!(!port.admit(c, 1_000));
        // 10/s: one token per 100 ms
        assert!(!port.admit(c, 1_000 + 99_999_999));
        assert!(port.admit(c, 1_000 + 100_000_000));
        assert!(!port.admit(c, 1_000 + 100_000_000));
        // a long quiet spell refills only up to the burst
        let later = 1_000 + 3600 * SECOND;
        assert!((0..3).all(|_| port.admit(c, later)));
        assert!(!port.admit(c, later));
    }

    #[test]
    fn slow_rates_do_not_round_to_zero() {
        let limit = Limit::parse("rate=1/h").unwrap();
        let mut port = Port::new(limit, 0);
        let c = ip("192.0.2.1");
        assert!(port.admit(c, 0));
        assert!(!port.admit(c, 3599 * SECOND));
        assert!(port.admit(c, 3600 * SECOND));
    }

    #[test]
    fn per_client_buckets_are_independent_and_bounded() {
        let limit = Limit::parse("rate=1/s,burst=1,per=client,clients=2").unwrap();
        let mut port = Port::new(limit, 0);
        assert!(port.admit(ip("192.0.2.1"), 0));
        assert!(!port.admit(ip("192.0.2.1"), 0));
        assert!(port.admit(ip("2001:db8::1"), 0));
        // table full of active clients: the third shares the overflow bucket
        assert!(port.admit(ip("192.0.2.3"), 0));
        assert!(!port.admit(ip("192.0.2.4"), 0));
        assert_eq!(port.clients.len(), 2);
        // after refill the sweep drops idle buckets and new clients get their own again
        assert!(port.admit(ip("192.0.2.4"), 5 * SECOND));
        assert_eq!(port.clients.len(), 1);
    }

    #[test]
    fn clock_going_backwards_never_adds_tokens() {
        let limit = Limit::parse("rate=1/s,burst=1").unwrap();
        let mut port = Port::new(limit, 10 * SECOND);
        let c = ip("192.0.2.1");
        assert!(port.admit(c, 10 * SECOND));
        assert!(!port.admit(c, 5 * SECOND));
        assert!(!port.admit(c, 10 * SECOND + SECOND / 2));
        assert!(port.admit(c, 11 * SECOND));
    }
}
