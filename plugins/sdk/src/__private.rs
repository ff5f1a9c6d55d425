//! Support for the code that [`crate::export!`] writes into a plugin crate. Not a public API:
//! it is `pub` only because macro expansions in other crates must reach it.

#![allow(missing_docs)]

use crate::{Admission, Affinity, Plugin, Selection};
use bindings::exports::nodeport::plugin::{admission, affinity, lifecycle, selection};
use bindings::nodeport::plugin::types as wit;

/// Bindings for the full contract, generated once. With `pub_export_macro` wit-bindgen puts
/// only the contract's imports in this crate's metadata; the exports come from the world that
/// `export!` embeds in the plugin crate (see `worlds`).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "nodeport:plugin/plugin@0.1.0",
        pub_export_macro: true,
    });
}

/// The component-type metadata of each world in ../wit/worlds.wit, encoded by build.rs.
#[allow(non_upper_case_globals)]
pub mod worlds {
    macro_rules! world {
        ($name:ident, $file:literal) => {
            pub const $name: [u8; include_bytes!(concat!(env!("OUT_DIR"), "/", $file)).len()] =
                *include_bytes!(concat!(env!("OUT_DIR"), "/", $file));
        };
    }
    world!(lifecycle_only, "lifecycle-only.bin");
    world!(admission, "admission.bin");
    world!(selection, "selection.bin");
    world!(affinity, "affinity.bin");
    world!(admission_selection, "admission-selection.bin");
    world!(admission_affinity, "admission-affinity.bin");
    world!(selection_affinity, "selection-affinity.bin");
    world!(
        admission_selection_affinity,
        "admission-selection-affinity.bin"
    );
}

/// Access to the one plugin value of the instance; implemented by `export!` for a local type
/// that owns a `thread_local` (wasm instances are single-threaded).
pub trait Instance: 'static {
    type Plugin: Plugin;
    fn with<R>(f: impl FnOnce(&mut Self::Plugin) -> R) -> R;
}

/// Creates the plugin value, first routing panic messages to the host log: without WASI a
/// panic would otherwise trap with no word of why.
pub fn new_instance<P: Plugin>() -> P {
    std::panic::set_hook(Box::new(|info| {
        crate::log::write(
            crate::log::Level::Error,
            &format!("plugin panicked: {info}"),
        );
    }));
    P::default()
}

pub fn assert_admission<P: Admission>() {}
pub fn assert_selection<P: Selection>() {}
pub fn assert_affinity<P: Affinity>() {}

impl<I: Instance> lifecycle::Guest for I {
    fn configure(service: wit::Service, config: String) -> Result<(), String> {
        let service = crate::Service::from(service);
        I::with(|p| p.configure(&service, &config))
    }

    fn forget(handle: u32) {
        I::with(|p| p.forget(handle))
    }
}

impl<I: Instance> admission::Guest for I
where
    I::Plugin: Admission,
{
    fn admit(flow: wit::Flow) -> wit::Verdict {
        let flow = crate::Flow::from(flow);
        I::with(|p| p.admit(&flow)).into()
    }
}

impl<I: Instance> selection::Guest for I
where
    I::Plugin: Selection,
{
    fn set_backends(handle: u32, backends: Vec<wit::Backend>) {
        let backends = backends.into_iter().map(crate::Backend::from).collect();
        I::with(|p| p.set_backends(handle, backends))
    }

    fn select(flow: wit::Flow, excluded: Option<u32>) -> Option<u32> {
        let flow = crate::Flow::from(flow);
        I::with(|p| p.select(&flow, excluded))
    }
}

impl<I: Instance> affinity::Guest for I
where
    I::Plugin: Affinity,
{
    fn affinity_key(flow: wit::Flow) -> Option<wit::Affinity> {
        let flow = crate::Flow::from(flow);
        I::with(|p| p.affinity_key(&flow)).map(Into::into)
    }
}
