//! Checking a component against the contract (`wit/plugin.wit`): it may import only
//! `host`, must export `lifecycle`, and exports the roles it implements, each with exactly the
//! contract's signatures. What passes becomes a [`Plugin`]: a pre-instantiated template that
//! workers instantiate cheaply, proven by one trial instantiation at load.

use std::fmt;
use std::sync::Arc;

use wasmtime::component::{Component, InstancePre};

use super::bindings::{admission, affinity, lifecycle, names, selection};
use super::host_state::HostState;
use super::runtime::Runtime;
use crate::metrics::Role;

/// Which roles a plugin implements.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    /// Exports `admission`.
    pub admission: bool,
    /// Exports `selection`.
    pub selection: bool,
    /// Exports `affinity`.
    pub affinity: bool,
}

impl Roles {
    /// Whether the component plays `role`.
    pub fn has(&self, role: Role) -> bool {
        match role {
            Role::Admission => self.admission,
            Role::Affinity => self.affinity,
            Role::Selection => self.selection,
        }
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.admission, "admission"),
            (self.affinity, "affinity"),
            (self.selection, "selection"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        f.write_str(&names.join(", "))
    }
}

/// A loaded plugin: compiled, checked, ready to instantiate. Shared by every Service and
/// worker that uses this content; a changed file is a new `Plugin`.
pub struct Plugin {
    /// Name (file stem in the plugin directory).
    pub name: Arc<str>,
    /// SHA-256 of the component bytes.
    pub digest: String,
    /// Roles it implements.
    pub roles: Roles,
    /// Interfaces it imports, as named in the component.
    pub imports: Vec<String>,
    /// Interfaces and functions it exports.
    pub exports: Vec<String>,
    pub(super) pre: InstancePre<HostState>,
    pub(super) lifecycle: lifecycle::GuestIndices,
    pub(super) admission: Option<admission::GuestIndices>,
    pub(super) selection: Option<selection::GuestIndices>,
    pub(super) affinity: Option<affinity::GuestIndices>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("roles", &self.roles)
            .finish()
    }
}

/// Checks `component` and builds its template. A trial instantiation proves that every
/// exported function has the contract's type (and that the start-up code does not trap).
pub(super) fn check(
    runtime: &Arc<Runtime>,
    name: &str,
    component: Component,
    digest: String,
) -> Result<Plugin, String> {
    let engine = &runtime.engine;
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let foreign: Vec<&String> = imports
        .iter()
        .filter(|i| *i != names::HOST && *i != names::TYPES)
        .collect();
    if !foreign.is_empty() {
        return Err(format!(
            "imports {} which the host does not provide (a plugin may import only {} and {}; WASI and other imports are not offered)",
            list(&foreign),
            names::HOST,
            names::TYPES
        ));
    }
    if !exports.iter().any(|e| e == names::LIFECYCLE) {
        return Err(format!(
            "does not export {} (it exports: {})",
            names::LIFECYCLE,
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                list(&exports.iter().collect::<Vec<_>>())
            }
        ));
    }
    let pre = runtime
        .linker
        .instantiate_pre(&component)
        .map_err(|e| format!("cannot be linked against the host imports: {e:#}"))?;
    let has = |n: &str| exports.iter().any(|e| e == n);
    let iface =
        |n: &str, e: wasmtime::Error| format!("export {n} does not match the contract: {e:#}");
    let lifecycle = lifecycle::GuestIndices::new(&pre).map_err(|e| iface(names::LIFECYCLE, e))?;
    let admission = has(names::ADMISSION)
        .then(|| admission::GuestIndices::new(&pre).map_err(|e| iface(names::ADMISSION, e)))
        .transpose()?;
    let selection = has(names::SELECTION)
        .then(|| selection::GuestIndices::new(&pre).map_err(|e| iface(names::SELECTION, e)))
        .transpose()?;
    let affinity = has(names::AFFINITY)
        .then(|| affinity::GuestIndices::new(&pre).map_err(|e| iface(names::AFFINITY, e)))
        .transpose()?;
    let roles = Roles {
        admission: admission.is_some(),
        selection: selection.is_some(),
        affinity: affinity.is_some(),
    };
    if roles == Roles::default() {
        return Err(format!(
            "implements no role: it exports none of {}, {}, {}",
            names::ADMISSION,
            names::SELECTION,
            names::AFFINITY
        ));
    }
    let plugin = Plugin {
        name: Arc::from(name),
        digest,
        roles,
        imports,
        exports,
        pre,
        lifecycle,
        admission,
        selection,
        affinity,
    };
    // Typed lookups happen at load: a wrong signature fails here, not on the first flow.
    super::instance::Instance::new(runtime, &plugin, usize::MAX, 0)
        .map_err(|e| format!("trial instantiation failed: {e}"))?;
    Ok(plugin)
}

fn list(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
