//! One Service's change, as kube-proxy's ServiceChangeTracker records it: the frontends it had
//! (previous, as the dataplane runs them) against the frontends it should have (current, as
//! the store builds them). The sync loop applies only what differs, so an event that changes
//! nothing for a Service costs no dataplane work.
//!
//! Unlike kube-proxy, changes are not accumulated between syncs: the sync loop applies every
//! event at once, and the previous state is read from the dataplane, never copied.

use crate::model::Frontend;

/// How one current frontend differs from what the Service had on its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendChange {
    /// The Service had nothing on this key.
    Added,
    /// The frontend differs; `endpoints` when the endpoint lists for new flows changed
    /// (counted in `endpoint_changes_total`).
    Changed {
        /// The IPv4 or IPv6 endpoint list differs.
        endpoints: bool,
    },
    /// Identical to what runs now.
    Unchanged,
}

/// A Service's frontends, previous against current.
#[derive(Debug, Default)]
pub struct ServiceChange {
    /// Frontends the Service had and no longer has (as they were, for metric labels).
    pub removed: Vec<Frontend>,
    /// Every frontend the Service should have, in the store's order, with how it changed.
    pub current: Vec<(Frontend, FrontendChange)>,
}

impl ServiceChange {
    /// Compares `previous` (what runs now) with `current` (what the store wants), by key.
    pub fn new(previous: Vec<Frontend>, current: Vec<Frontend>) -> Self {
        let change_of = |fe: &Frontend| match previous.iter().find(|p| p.key == fe.key) {
            None => FrontendChange::Added,
            Some(p) if p == fe => FrontendChange::Unchanged,
            Some(p) => FrontendChange::Changed {
                endpoints: p.v4 != fe.v4 || p.v6 != fe.v6,
            },
        };
        let current: Vec<(Frontend, FrontendChange)> = current
            .into_iter()
            .map(|fe| {
                let how = change_of(&fe);
                (fe, how)
            })
            .collect();
        let removed = previous
            .into_iter()
            .filter(|p| !current.iter().any(|(c, _)| c.key == p.key))
            .collect();
        Self { removed, current }
    }

    /// True when nothing differs: no frontend removed, added or changed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self
                .current
                .iter()
                .all(|(_, how)| *how == FrontendChange::Unchanged)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::model::{Backend, Family, FrontendKey, Protocol, ServiceKey, TrafficPolicy};

    /// A TCP frontend of `shop/web` on `node_port` with one ready endpoint per address.
    pub(crate) fn frontend(node_port: u16, endpoints: &[&str]) -> Frontend {
        let addrs: Vec<SocketAddr> = endpoints
            .iter()
            .map(|a| a.parse().expect("endpoint address"))
            .collect();
        Frontend {
            key: FrontendKey {
                protocol: Protocol::Tcp,
                node_port,
            },
            service: ServiceKey::new(Some("shop"), "web"),
            port_name: "http".into(),
            families: vec![Family::V4],
            v4: addrs.iter().map(|a| Backend::ready(*a)).collect(),
            v6: Arc::from([]),
            serving: addrs.into(),
            affinity: None,
            policy: TrafficPolicy::Cluster,
            plugins: None,
            proxy_protocol: false,
            spread: false,
        }
    }

    fn hows(c: &ServiceChange) -> Vec<(u16, FrontendChange)> {
        c.current
            .iter()
            .map(|(fe, how)| (fe.key.node_port, *how))
            .collect()
    }

    #[test]
    fn a_new_service_adds_every_frontend() {
        let c = ServiceChange::new(
            vec![],
            vec![frontend(30080, &["198.18.0.2:80"]), frontend(30443, &[])],
        );
        assert!(c.removed.is_empty());
        assert_eq!(
            hows(&c),
            [
                (30080, FrontendChange::Added),
                (30443, FrontendChange::Added)
            ]
        );
        assert!(!c.is_empty());
    }

    #[test]
    fn a_deleted_service_removes_every_frontend() {
        let c = ServiceChange::new(
            vec![frontend(30080, &["198.18.0.2:80"]), frontend(30443, &[])],
            vec![],
        );
        let removed: Vec<u16> = c.removed.iter().map(|fe| fe.key.node_port).collect();
        assert_eq!(removed, [30080, 30443]);
        assert!(c.current.is_empty());
        assert!(!c.is_empty());
    }

    #[test]
    fn an_unchanged_service_is_no_work() {
        let fes = vec![frontend(30080, &["198.18.0.2:80"]), frontend(30443, &[])];
        let c = ServiceChange::new(fes.clone(), fes);
        assert!(c.is_empty());
        assert!(c.removed.is_empty());
        assert_eq!(
            hows(&c),
            [
                (30080, FrontendChange::Unchanged),
                (30443, FrontendChange::Unchanged)
            ]
        );
    }

    #[test]
    fn an_endpoints_only_change_is_flagged_as_such() {
        let c = ServiceChange::new(
            vec![frontend(30080, &["198.18.0.2:80"])],
            vec![frontend(30080, &["198.18.0.2:80", "198.18.0.3:80"])],
        );
        assert!(c.removed.is_empty());
        assert_eq!(
            hows(&c),
            [(30080, FrontendChange::Changed { endpoints: true })]
        );
    }

    #[test]
    fn a_change_beside_the_endpoints_is_not_an_endpoint_change() {
        let before = frontend(30080, &["198.18.0.2:80"]);
        let mut after = before.clone();
        after.affinity = Some(std::time::Duration::from_secs(10));
        let c = ServiceChange::new(vec![before], vec![after]);
        assert_eq!(
            hows(&c),
            [(30080, FrontendChange::Changed { endpoints: false })]
        );
    }

    #[test]
    fn a_moved_nodeport_removes_the_old_key_and_adds_the_new() {
        let c = ServiceChange::new(
            vec![frontend(30080, &["198.18.0.2:80"]), frontend(30443, &[])],
            vec![frontend(30081, &["198.18.0.2:80"]), frontend(30443, &[])],
        );
        let removed: Vec<u16> = c.removed.iter().map(|fe| fe.key.node_port).collect();
        assert_eq!(removed, [30080]);
        assert_eq!(
            hows(&c),
            [
                (30081, FrontendChange::Added),
                (30443, FrontendChange::Unchanged)
            ]
        );
    }
}
