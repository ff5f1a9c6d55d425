//! Encodes, for every set of roles a plugin may export, the component-type metadata that
//! `wasm-component-ld` reads to turn the core module into a component.
//!
//! Why a build script: `wit_bindgen::generate!` can only be invoked once per world per crate
//! with exported macros (its per-interface export macros all land at the crate root under the
//! same names), so the SDK generates bindings for the full contract once and embeds the
//! metadata of the world the plugin author picked itself, from the bytes written here.

use std::path::{Path, PathBuf};

/// World names in wit/worlds.wit; each becomes `$OUT_DIR/<name>.bin`.
const WORLDS: &[&str] = &[
    "lifecycle-only",
    "admission",
    "selection",
    "affinity",
    "admission-selection",
    "admission-affinity",
    "selection-affinity",
    "admission-selection-affinity",
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let contract = manifest.join("../../wit");
    let sdk = manifest.join("wit");
    println!("cargo:rerun-if-changed={}", contract.display());
    println!("cargo:rerun-if-changed={}", sdk.display());
    if let Err(e) = encode_all(&contract, &sdk, &out) {
        panic!("encoding the plugin worlds: {e:?}");
    }
}

fn encode_all(contract: &Path, sdk: &Path, out: &Path) -> anyhow::Result<()> {
    let mut resolve = wit_parser::Resolve::default();
    resolve.push_path(contract)?;
    let (sdk_pkg, _) = resolve.push_path(sdk)?;
    for name in WORLDS {
        let world = resolve.select_world(&[sdk_pkg], Some(name))?;
        let bytes = wit_component::metadata::encode(
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
            None,
            false,
        )?;
        std::fs::write(out.join(format!("{name}.bin")), bytes)?;
    }
    Ok(())
}
