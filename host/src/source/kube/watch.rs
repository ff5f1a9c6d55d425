//! One kind watched through kube-rs: a `watcher` (list, then watch from the listed resource
//! version, bookmarks on, kube's default exponential backoff after errors) feeding a
//! `reflector` store, told to a [`Handler`] per event. An expired resource version (410
//! Gone) or a broken watch makes the watcher list again; nothing is dropped meanwhile, and
//! when the new listing is complete the handler is told which objects it still holds, so
//! only what was deleted while the watch was down goes away.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::source::{Sink, SourceEvent};

/// What a watched kind does with its events. Each method returns false once the sync loop
/// is gone (the watch then ends).
pub trait Handler<K>: Send {
    /// `obj` was added or changed (or listed).
    fn apply(&mut self, obj: &K) -> bool;
    /// `obj` was deleted.
    fn delete(&mut self, obj: &K) -> bool;
    /// A listing is complete and `live` is everything that exists now: forget the rest.
    fn relisted(&mut self, live: &[Arc<K>]) -> bool;
}

/// Counts the kinds whose first listing is still incomplete; the last one to complete tells
/// the sync loop `Synced`, so the daemon is ready only once it knows every kind.
pub struct FirstListing {
    left: AtomicUsize,
    sink: Sink,
}

impl FirstListing {
    /// Waits for `kinds` first listings, then sends `Synced` to `sink`.
    pub fn new(kinds: usize, sink: Sink) -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(kinds),
            sink,
        })
    }

    fn done(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sink.send(SourceEvent::Synced);
        }
    }
}

/// A reflector reader for `K` and the future that runs its watch (spawn it on the runtime).
pub fn watch<K, H>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    mut handler: H,
    first: Arc<FirstListing>,
) -> (Store<K>, impl std::future::Future<Output = ()> + Send)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    H: Handler<K> + 'static,
{
    let writer = reflector::store::Writer::<K>::default();
    let reader = writer.as_reader();
    let store = reader.clone();
    let run = async move {
        let stream = watcher(api, config).default_backoff().reflect(writer);
        let mut stream = std::pin::pin!(stream);
        let mut listed_once = false;
        let mut failing = false;
        while let Some(item) = stream.next().await {
            let alive = match item {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => handler.apply(&o),
                Ok(watcher::Event::Delete(o)) => handler.delete(&o),
                Ok(watcher::Event::Init) => true,
                Ok(watcher::Event::InitDone) => {
                    if failing {
                        tracing::info!(kind, "watch listed again; changes made meanwhile apply");
                        failing = false;
                    }
                    let alive = handler.relisted(&reader.state());
                    if !listed_once {
                        listed_once = true;
                        first.done();
                    }
                    alive
                }
                Err(e) => {
                    // kube's backoff retries (1 s doubling to 30 s, with jitter); the last
                    // known objects stay in force meanwhile.
                    if !failing {
                        tracing::warn!(kind, error = %e, "watch failed; serving the last known state while it retries");
                    } else {
                        tracing::debug!(kind, error = %e, "watch retry failed");
                    }
                    failing = true;
                    true
                }
            };
            if !alive {
                return;
            }
        }
    };
    (store, run)
}

/// `namespace/name` of an object (cluster-scoped objects: `name`).
pub fn name_of<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or("");
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}
