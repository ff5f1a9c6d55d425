//! nodePort claims: which Service holds each (protocol, nodePort), and which Services wait
//! for something they could not get (a port another Service holds, a socket another process
//! holds). The first Service to claim a port keeps it; a conflict is reported once per
//! distinct message, and the waiting Services are retried in name order when a port is
//! released, so the same Service wins on every node and after every restart.
//!
//! Only sync knows this: the dataplane serves frontends by key and does not know which
//! Service asked for which key, nor who was refused one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::model::{FrontendKey, ServiceKey};

/// What a Service's latest reconcile means for its error report.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fully programmed, as it was before.
    Complete,
    /// Fully programmed after being reported (say so once).
    Recovered,
    /// Not fully programmed, for a reason not reported yet (report it).
    Failed(String),
    /// Not fully programmed, for the reason already reported.
    StillFailing,
}

/// The claims and the Services still waiting.
#[derive(Debug, Default)]
pub struct Claims {
    /// Who holds each key.
    owners: HashMap<FrontendKey, ServiceKey>,
    /// The keys each Service holds (no empty sets).
    held: BTreeMap<ServiceKey, BTreeSet<FrontendKey>>,
    /// Keys whose last programming failed (some socket could not be bound): programmed
    /// again on the next try even if nothing changed.
    incomplete: HashSet<FrontendKey>,
    /// Services not fully programmed, in name order (the retry order).
    waiting: BTreeSet<ServiceKey>,
    /// The error last reported per waiting Service, so it is logged once.
    reported: HashMap<ServiceKey, String>,
}

impl Claims {
    /// The Service that holds `key`, unless it is `service` (or nobody): the conflict to
    /// report instead of serving the port.
    pub fn conflict(&self, service: &ServiceKey, key: &FrontendKey) -> Option<&ServiceKey> {
        self.owners.get(key).filter(|o| *o != service)
    }

    /// Records that `service` holds `key` (the dataplane runs its frontend there).
    pub fn claim(&mut self, service: &ServiceKey, key: FrontendKey) {
        if let Some(old) = self.owners.insert(key, service.clone()) {
            if old != *service {
                self.forget_held(&old, &key);
            }
        }
        self.held.entry(service.clone()).or_default().insert(key);
    }

    /// Releases `key` (its frontend was removed from the dataplane): the next Service that
    /// asks for it gets it.
    pub fn release(&mut self, key: &FrontendKey) {
        self.incomplete.remove(key);
        if let Some(owner) = self.owners.remove(key) {
            self.forget_held(&owner, key);
        }
    }

    fn forget_held(&mut self, service: &ServiceKey, key: &FrontendKey) {
        if let Some(keys) = self.held.get_mut(service) {
            keys.remove(key);
            if keys.is_empty() {
                self.held.remove(service);
            }
        }
    }

    /// The keys `service` holds, in order.
    pub fn held(&self, service: &ServiceKey) -> Vec<FrontendKey> {
        self.held
            .get(service)
            .map(|k| k.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every Service holding a port, with its keys, in name order.
    pub fn holders(&self) -> impl Iterator<Item = (&ServiceKey, &BTreeSet<FrontendKey>)> {
        self.held.iter()
    }

    /// How many Services hold at least one port.
    pub fn services(&self) -> usize {
        self.held.len()
    }

    /// Records whether the last programming of `key` failed.
    pub fn set_incomplete(&mut self, key: FrontendKey, failed: bool) {
        if failed {
            self.incomplete.insert(key);
        } else {
            self.incomplete.remove(&key);
        }
    }

    /// True when the last programming of `key` failed.
    pub fn is_incomplete(&self, key: &FrontendKey) -> bool {
        self.incomplete.contains(key)
    }

    /// Records how reconciling `service` went (`errors` empty: fully programmed) and says
    /// what to report.
    pub fn settle(&mut self, service: &ServiceKey, errors: Vec<String>) -> Outcome {
        if errors.is_empty() {
            self.waiting.remove(service);
            return match self.reported.remove(service) {
                Some(_) => Outcome::Recovered,
                None => Outcome::Complete,
            };
        }
        self.waiting.insert(service.clone());
        let msg = errors.join("; ");
        if self.reported.get(service) == Some(&msg) {
            return Outcome::StillFailing;
        }
        self.reported.insert(service.clone(), msg.clone());
        Outcome::Failed(msg)
    }

    /// The Services waiting, in name order: the order in which they are retried, so a
    /// released port goes to the first of them by name.
    pub fn waiting(&self) -> Vec<ServiceKey> {
        self.waiting.iter().cloned().collect()
    }

    /// True when some Service waits.
    pub fn any_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn svc(name: &str) -> ServiceKey {
        ServiceKey::new(Some("shop"), name)
    }

    fn tcp(node_port: u16) -> FrontendKey {
        FrontendKey {
            protocol: Protocol::Tcp,
            node_port,
        }
    }

    /// What the sync loop does per frontend: claim the port unless another Service holds
    /// it, then settle the Service with the conflicts found.
    fn reconcile(claims: &mut Claims, service: &ServiceKey, key: FrontendKey) -> Outcome {
        let errors = match claims.conflict(service, &key) {
            Some(owner) => vec![format!("nodePort {key} is already used by Service {owner}")],
            None => {
                claims.claim(service, key);
                vec![]
            }
        };
        claims.settle(service, errors)
    }

    #[test]
    fn the_first_claim_wins() {
        let mut c = Claims::default();
        assert_eq!(reconcile(&mut c, &svc("b"), tcp(30080)), Outcome::Complete);
        assert!(matches!(
            reconcile(&mut c, &svc("a"), tcp(30080)),
            Outcome::Failed(_)
        ));
        assert_eq!(c.conflict(&svc("a"), &tcp(30080)), Some(&svc("b")));
        assert_eq!(c.conflict(&svc("b"), &tcp(30080)), None);
        assert_eq!(c.held(&svc("b")), [tcp(30080)]);
        assert!(c.held(&svc("a")).is_empty());
        assert_eq!(c.services(), 1);
    }

    #[test]
    fn a_conflict_is_reported_once_and_names_the_holder() {
        let mut c = Claims::default();
        reconcile(&mut c, &svc("a"), tcp(30080));
        assert_eq!(c.conflict(&svc("b"), &tcp(30080)), Some(&svc("a")));
        assert!(matches!(
            reconcile(&mut c, &svc("b"), tcp(30080)),
            Outcome::Failed(_)
        ));
        assert_eq!(
            reconcile(&mut c, &svc("b"), tcp(30080)),
            Outcome::StillFailing
        );
        assert_eq!(c.waiting(), [svc("b")]);
    }

    #[test]
    fn a_released_port_goes_to_the_first_waiting_service_by_name() {
        let mut c = Claims::default();
        reconcile(&mut c, &svc("a"), tcp(30080));
        // Refused in the opposite of name order.
        reconcile(&mut c, &svc("c"), tcp(30080));
        reconcile(&mut c, &svc("b"), tcp(30080));
        assert_eq!(c.waiting(), [svc("b"), svc("c")]);

        c.release(&tcp(30080));
        assert!(c.held(&svc("a")).is_empty());
        let outcomes: Vec<Outcome> = c
            .waiting()
            .iter()
            .map(|s| reconcile(&mut c, s, tcp(30080)))
            .collect();
        assert_eq!(outcomes[0], Outcome::Recovered);
        assert!(matches!(&outcomes[1], Outcome::Failed(m) if m.contains("shop/b")));
        assert_eq!(c.held(&svc("b")), [tcp(30080)]);
        assert_eq!(c.waiting(), [svc("c")]);
    }

    #[test]
    fn the_same_port_on_tcp_and_udp_are_two_claims() {
        let mut c = Claims::default();
        let udp = FrontendKey {
            protocol: Protocol::Udp,
            node_port: 30053,
        };
        assert_eq!(
            reconcile(&mut c, &svc("dns"), tcp(30053)),
            Outcome::Complete
        );
        assert_eq!(reconcile(&mut c, &svc("other"), udp), Outcome::Complete);
        assert!(!c.any_waiting());
        assert_eq!(c.services(), 2);
    }

    #[test]
    fn release_forgets_a_failed_programming() {
        let mut c = Claims::default();
        c.set_incomplete(tcp(30080), true);
        assert!(c.is_incomplete(&tcp(30080)));
        c.release(&tcp(30080));
        assert!(!c.is_incomplete(&tcp(30080)));
    }
}
