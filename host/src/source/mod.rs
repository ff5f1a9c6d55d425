//! Sources fill the model: a directory of manifests, or the Kubernetes API (`kube`). Each
//! reports whole sets of objects per origin and says when its first listing is complete, by
//! sending `SourceEvent`s through a `Sink` straight into the sync loop's channel.

#[cfg(test)]
mod fuzz;
pub mod kube;
pub mod manifests;

use crossbeam_channel::Sender;

use crate::model::store::Object;
use crate::sync::Event;

/// Something that fills the model: it runs on its own (a thread, or tasks on a runtime) and
/// sends what it sees to the sync loop through a `Sink` until the sink is closed.
///
/// `start` returns once the source runs, not when it ends, because sources run in different
/// ways: the manifests directory on a thread blocked on file-system notifications, the
/// Kubernetes API source as kube-rs watchers on the control plane's tokio runtime (it holds
/// a runtime handle and spawns its tasks there). A blocking `run` would force a thread per
/// source; an `async fn` would force the manifests directory onto the runtime. What stops
/// a source is its sink closing (the sync loop returned), so no handle is needed to stop it.
/// Errors that prevent starting (a directory that cannot be watched, no API server
/// credentials) are returned at once, so the daemon fails before it reports ready.
pub trait Source: Send {
    /// Starts delivering events to `sink`; returns once the source is running.
    fn start(self: Box<Self>, sink: Sink) -> anyhow::Result<()>;
}

/// Where a source sends its events: the sync loop's own channel, so an event reaches the
/// loop with no forwarding thread in between. Cheap to clone (one per watcher). The channel
/// is unbounded, so `send` never blocks, also not a tokio task.
#[derive(Clone)]
pub struct Sink {
    tx: Sender<Event>,
}

impl Sink {
    /// A sink into the sync loop that receives from the other end of `tx`.
    pub fn new(tx: Sender<Event>) -> Self {
        Self { tx }
    }

    /// Delivers `ev`. False once the sync loop is gone: the source should then stop.
    pub fn send(&self, ev: SourceEvent) -> bool {
        self.tx.send(Event::from(ev)).is_ok()
    }
}

/// What a source tells the sync loop.
#[derive(Debug)]
pub enum SourceEvent {
    /// `origin` now holds exactly these objects.
    Objects {
        /// A file path, or another source's name.
        origin: String,
        /// Its objects.
        objects: Vec<Object>,
    },
    /// `origin` could not be read; what it held before stays in force.
    Failed {
        /// The origin.
        origin: String,
        /// Why, naming the object where one is at fault.
        error: String,
    },
    /// `origin` is gone, with all its objects.
    Removed {
        /// The origin.
        origin: String,
    },
    /// This node's topology zone, from its Node object (None: it has no zone label).
    NodeZone(Option<String>),
    /// This node's addresses, from its Node object's `status.addresses`.
    NodeAddresses(Vec<std::net::IpAddr>),
    /// The first complete listing has been delivered.
    Synced,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_delivers_into_the_sync_channel_until_it_closes() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink = Sink::new(tx);
        assert!(sink.clone().send(SourceEvent::Synced));
        assert!(matches!(
            rx.try_recv(),
            Ok(Event::Source(SourceEvent::Synced))
        ));
        drop(rx);
        assert!(!sink.send(SourceEvent::Synced));
    }
}
