//! Checking a component against the contract (`wit/plugin.wit`): it may import only
//! `host`, must export `lifecycle`, and exports the roles it implements, each with exactly the
//! contract's signatures. What passes becomes a [`Plugin`]: a pre-instantiated template that
//! workers instantiate cheaply, proven by one trial instantiation at load. A `select` answer
//! is checked against the contract here too ([`checked_index`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use wasmtime::component::{Component, InstancePre};

use super::bindings::{admission, affinity, lifecycle, names, selection};
use super::failure::{Failure, FailureKind};
use super::host_state::HostState;
use super::runtime::Runtime;
use crate::metrics::Role;
use crate::model::Backend;

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

/// `answer` of `select` over `backends` if it keeps the contract: in range and not `tried`.
pub(super) fn checked_index(
    answer: Option<u32>,
    backends: &[Backend],
    tried: &[SocketAddr],
) -> Result<Option<usize>, Failure> {
    let n = backends.len();
    match answer.map(|i| (i, i as usize)) {
        None => Ok(None),
        Some((_, i)) if i < n && !tried.contains(&backends[i].addr) => Ok(Some(i)),
        Some((idx, i)) => Err(Failure::new(
            FailureKind::BadAnswer,
            if i < n {
                format!("select returned {idx}, an endpoint that already failed for this flow")
            } else {
                format!("select returned {idx} but there are {n} endpoints")
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_answers_are_checked_against_the_contract() {
        let b: Vec<Backend> = (1..=3)
            .map(|i| Backend::ready(SocketAddr::from(([198, 19, 0, i], 8080))))
            .collect();
        assert!(matches!(checked_index(None, &b, &[]), Ok(None)));
        assert!(matches!(checked_index(Some(2), &b, &[]), Ok(Some(2))));
        let out = checked_index(Some(3), &b, &[]).unwrap_err();
        assert_eq!(out.kind, FailureKind::BadAnswer);
        assert!(
            out.detail.contains("there are 3 endpoints"),
            "{}",
            out.detail
        );
        let again = checked_index(Some(1), &b, &[b[1].addr]).unwrap_err();
        assert_eq!(again.kind, FailureKind::BadAnswer);
        assert!(again.detail.contains("already failed"), "{}", again.detail);
    }
}
