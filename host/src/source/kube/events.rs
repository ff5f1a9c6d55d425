//! Notices become Kubernetes Events on the Service (events.k8s.io/v1, through kube-rs's
//! `Recorder`, which turns repeats into one Event with a growing count), so
//! `kubectl describe service` says why its policy is not in force. Rate-limited: the same
//! notice about the same Service is published at most once per `EVERY`; a failure to
//! publish is logged, never retried in a loop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::notice::Notice;

/// The same notice about the same Service is published at most this often.
pub const EVERY: Duration = Duration::from_secs(60);

/// Decides which notices are published now.
#[derive(Default)]
pub struct RateLimit {
    last: HashMap<(String, String, &'static str, String), Instant>,
}

impl RateLimit {
    /// Whether `n` may be published at `now` (and books it if so).
    pub fn admit(&mut self, n: &Notice, now: Instant) -> bool {
        self.last
            .retain(|_, t| now.saturating_duration_since(*t) < EVERY);
        let key = (
            n.namespace.clone(),
            n.name.clone(),
            n.reason.as_str(),
            n.message.clone(),
        );
        if self.last.contains_key(&key) {
            return false;
        }
        self.last.insert(key, now);
        true
    }
}

/// The reference an Event about a Service needs: with its uid (from the Services
/// reflector), which `kubectl describe` matches on.
fn reference(services: &Store<Service>, n: &Notice) -> ObjectReference {
    match services.get(&ObjectRef::new(&n.name).within(&n.namespace)) {
        Some(svc) => svc.object_ref(&()),
        None => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(n.namespace.clone()),
            name: Some(n.name.clone()),
            ..Default::default()
        },
    }
}

/// Publishes notices until the sending side is gone.
pub async fn publish(
    client: Client,
    node: String,
    services: Store<Service>,
    mut notices: UnboundedReceiver<Notice>,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "nodeportd".into(),
            instance: Some(node),
        },
    );
    let mut limit = RateLimit::default();
    while let Some(n) = notices.recv().await {
        if !limit.admit(&n, Instant::now()) {
            continue;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: n.reason.as_str().into(),
            note: Some(n.message.chars().take(1000).collect()),
            action: "ApplyPolicy".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference(&services, &n)).await {
            tracing::warn!(service = %format!("{}/{}", n.namespace, n.name), reason = n.reason.as_str(), error = %e, "cannot publish the Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::Reason;

    #[test]
    fn the_same_notice_is_published_once_a_minute() {
        let n = Notice {
            namespace: "shop".into(),
            name: "web".into(),
            reason: Reason::PluginNotApplied,
            message: "refused".into(),
        };
        let other = Notice {
            name: "api".into(),
            ..n.clone()
        };
        let t0 = Instant::now();
        let mut limit = RateLimit::default();
        assert!(limit.admit(&n, t0));
        assert!(!limit.admit(&n, t0 + Duration::from_secs(30)));
        assert!(limit.admit(&other, t0 + Duration::from_secs(30)));
        assert!(limit.admit(&n, t0 + EVERY));
    }
}
