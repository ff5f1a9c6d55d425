//! Host-side bindings generated from `wit/plugin.wit`, the single source of truth of the
//! contract. Everything else in `plugin` uses these types; nothing is hand-written glue.

#![allow(missing_docs)] // generated code; the WIT file documents every item

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use self::nodeport::plugin::types;
pub use exports::nodeport::plugin::{admission, affinity, lifecycle, selection};
pub use nodeport::plugin::host;

/// The interface names a component is checked against.
pub mod names {
    /// The host functions a plugin may import.
    pub const HOST: &str = "nodeport:plugin/host@0.1.0";
    /// The shared types (an import of type definitions only, no functions).
    pub const TYPES: &str = "nodeport:plugin/types@0.1.0";
    /// Required export.
    pub const LIFECYCLE: &str = "nodeport:plugin/lifecycle@0.1.0";
    /// Role exports.
    pub const ADMISSION: &str = "nodeport:plugin/admission@0.1.0";
    /// Role export.
    pub const SELECTION: &str = "nodeport:plugin/selection@0.1.0";
    /// Role export.
    pub const AFFINITY: &str = "nodeport:plugin/affinity@0.1.0";
}
