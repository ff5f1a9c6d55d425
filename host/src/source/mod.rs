//! Sources fill the model: a directory of manifests today, the Kubernetes API later. Each
//! reports whole sets of objects per origin and says when its first listing is complete.

pub mod manifests;

use crate::model::store::Object;

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
    /// The first complete listing has been delivered.
    Synced,
}
