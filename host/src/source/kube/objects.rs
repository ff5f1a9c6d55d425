//! Services and EndpointSlices from the API, told to the sync loop one object per origin
//! (`kubernetes Service ns/name`), so a change to one Service or slice reaches the store as
//! one small update, exactly as a changed manifest file does.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;

use super::watch::{name_of, Handler};
use crate::model::store::Object;
use crate::source::{Sink, SourceEvent};

/// A kind the store takes.
pub trait Stored: Resource + Clone {
    /// The kind's name in origins and messages.
    const KIND: &'static str;
    /// The store's object.
    fn object(self) -> Object;
}

impl Stored for Service {
    const KIND: &'static str = "Service";
    fn object(self) -> Object {
        Object::Service(Box::new(self))
    }
}

impl Stored for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn object(self) -> Object {
        Object::EndpointSlice(Box::new(self))
    }
}

/// Tells the sync loop each object of kind `K`, remembering which origins it told.
pub struct Objects<K> {
    sink: Sink,
    told: HashSet<String>,
    _kind: std::marker::PhantomData<fn(K)>,
}

impl<K: Stored> Objects<K> {
    /// Sends into `sink`.
    pub fn new(sink: Sink) -> Self {
        Self {
            sink,
            told: HashSet::new(),
            _kind: std::marker::PhantomData,
        }
    }

    fn origin(obj: &K) -> String {
        format!("kubernetes {} {}", K::KIND, name_of(obj))
    }
}

impl<K: Stored + Send> Handler<K> for Objects<K> {
    fn apply(&mut self, obj: &K) -> bool {
        let origin = Self::origin(obj);
        self.told.insert(origin.clone());
        self.sink.send(SourceEvent::Objects {
            origin,
            objects: vec![obj.clone().object()],
        })
    }

    fn delete(&mut self, obj: &K) -> bool {
        let origin = Self::origin(obj);
        self.told.remove(&origin);
        self.sink.send(SourceEvent::Removed { origin })
    }

    fn relisted(&mut self, live: &[Arc<K>]) -> bool {
        let live: HashSet<String> = live.iter().map(|o| Self::origin(o)).collect();
        let gone: Vec<String> = self
            .told
            .iter()
            .filter(|o| !live.contains(*o))
            .cloned()
            .collect();
        for origin in gone {
            self.told.remove(&origin);
            if !self.sink.send(SourceEvent::Removed { origin }) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Event;

    fn service(name: &str) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some("shop".into());
        s.metadata.name = Some(name.into());
        s
    }

    #[test]
    fn a_new_listing_removes_only_what_was_deleted_meanwhile() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut h = Objects::<Service>::new(Sink::new(tx));
        assert!(h.apply(&service("a")) && h.apply(&service("b")));
        assert!(h.relisted(&[Arc::new(service("b"))]));
        let origins: Vec<String> = rx
            .try_iter()
            .map(|e| match e {
                Event::Source(SourceEvent::Objects { origin, .. }) => format!("+{origin}"),
                Event::Source(SourceEvent::Removed { origin }) => format!("-{origin}"),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(
            origins,
            [
                "+kubernetes Service shop/a",
                "+kubernetes Service shop/b",
                "-kubernetes Service shop/a"
            ]
        );
        assert!(h.relisted(&[Arc::new(service("b"))]));
        assert!(rx.try_recv().is_err(), "nothing more to remove");
    }
}
