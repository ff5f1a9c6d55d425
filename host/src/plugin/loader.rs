//! Loading a plugin: its bytes are named by their SHA-256, compiled once per digest (kept in
//! memory and, with `--plugin-cache-dir`, on disk as precompiled `.cwasm`), then checked
//! against the contract ([`super::contract::check`], which also builds the template and
//! instantiates once on trial).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use super::contract::{self, Plugin};
use super::runtime::Runtime;

/// Compiled code by content digest: in memory, and on disk when a directory is given.
#[derive(Debug)]
pub(super) struct CodeCache {
    compiled: Mutex<HashMap<String, Component>>,
    dir: Option<PathBuf>,
}

impl CodeCache {
    /// A cache, on disk in `dir` (created if missing; unusable means memory only).
    pub(super) fn new(dir: Option<PathBuf>) -> Self {
        if let Some(dir) = &dir {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "plugin cache directory unusable; compiling in memory only");
            }
        }
        Self {
            compiled: Mutex::new(HashMap::new()),
            dir,
        }
    }

    /// Compiles a component, once per content digest: from memory, else from the on-disk
    /// cache of precompiled code, else with Cranelift (then written to the cache).
    pub(super) fn compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> Result<(Component, String), String> {
        let digest = hex(&Sha256::digest(bytes));
        if let Some(c) = self
            .compiled
            .lock()
            .ok()
            .and_then(|m| m.get(&digest).cloned())
        {
            return Ok((c, digest));
        }
        let cached = self.dir.as_ref().map(|d| d.join(format!("{digest}.cwasm")));
        let component = match cached.as_deref().and_then(|p| from_disk(engine, p)) {
            Some(c) => c,
            None => {
                let c = Component::new(engine, bytes)
                    .map_err(|e| format!("not a valid WebAssembly component: {e:#}"))?;
                if let Some(path) = &cached {
                    to_disk(&c, path);
                }
                c
            }
        };
        if let Ok(mut m) = self.compiled.lock() {
            m.insert(digest.clone(), component.clone());
        }
        Ok((component, digest))
    }

    /// Forgets compiled code whose digest is not in `digests` (the disk cache stays).
    pub(super) fn retain(&self, digests: &[&str]) {
        if let Ok(mut m) = self.compiled.lock() {
            m.retain(|d, _| digests.contains(&d.as_str()));
        }
    }
}

/// Precompiled code from `path`, if it is there and this engine accepts it.
fn from_disk(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.exists() {
        return None;
    }
    // Read into memory rather than mapped: a cache file truncated under a mapping would
    // fault the daemon (SIGBUS) the next time that code is touched.
    let loaded = std::fs::read(path)
        .map_err(wasmtime::Error::from)
        // SAFETY: the bytes come from `serialize` (in `to_disk`), written into the operator's
        // cache directory; wasmtime checks that they were made by this engine version and
        // config and refuses them otherwise (then we recompile and replace them).
        .and_then(|code| unsafe { Component::deserialize(engine, code) });
    match loaded {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::info!(path = %path.display(), error = %e, "cached plugin code not usable; recompiling");
            None
        }
    }
}

/// Writes `c`'s precompiled code to `path` (atomically: a temporary file, then a rename).
/// Best effort: a cache that cannot be written only costs a compile at the next start.
fn to_disk(c: &Component, path: &Path) {
    if let Ok(code) = c.serialize() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, code).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

/// Loads plugin `name` from `bytes`: compile (cached), then check it against the contract.
/// Err says exactly what does not match.
pub(super) fn load(rt: &Arc<Runtime>, name: &str, bytes: &[u8]) -> Result<Arc<Plugin>, String> {
    let (component, digest) = rt.code.compile(&rt.engine, bytes)?;
    contract::check(rt, name, component, digest).map(Arc::new)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lowercase_hex_sha256() {
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn bytes_that_are_not_a_component_are_refused_and_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CodeCache::new(Some(dir.path().join("cache")));
        let engine = Engine::default();
        let e = cache.compile(&engine, b"definitely not wasm").unwrap_err();
        assert!(e.contains("not a valid WebAssembly component"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("cache")).unwrap().count(),
            0
        );
        assert!(cache.compiled.lock().unwrap().is_empty());
    }
}
