//! Plugins delivered by ConfigMap: every `binaryData` key `<name>.wasm` of a selected
//! ConfigMap is written into `--plugin-dir`, where the plugin directory picks it up as it
//! picks up any file (written beside it, then renamed into place, so a reader never sees half
//! a component). A key removed from its ConfigMap, or a ConfigMap deleted, removes the file.
//! Files placed in the directory by other means are never touched; a name claimed by two
//! ConfigMaps keeps the first one's and the other is named in the log.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;

use super::watch::{name_of, Handler};

/// Writes the plugins of the selected ConfigMaps into a directory.
pub struct PluginFiles {
    dir: PathBuf,
    /// File name -> (owning ConfigMap, content digest).
    files: HashMap<String, (String, u64)>,
}

/// A key that may become a file in the plugin directory: `<name>.wasm`, where `name` is
/// what a Service's annotation names.
fn plugin_file(key: &str) -> bool {
    key.strip_suffix(".wasm").is_some_and(|name| {
        !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    })
}

fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl PluginFiles {
    /// Writes into `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: HashMap::new(),
        }
    }

    fn write(&self, file: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.dir.join(file))
    }

    fn remove(&mut self, file: &str) {
        self.files.remove(file);
        match std::fs::remove_file(self.dir.join(file)) {
            Ok(()) => tracing::info!(file, "plugin removed with its ConfigMap key"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(file, error = %e, "cannot remove plugin file"),
        }
    }

    fn owned_by(&self, owner: &str) -> Vec<String> {
        self.files
            .iter()
            .filter(|(_, (o, _))| o == owner)
            .map(|(f, _)| f.clone())
            .collect()
    }
}

impl Handler<ConfigMap> for PluginFiles {
    fn apply(&mut self, cm: &ConfigMap) -> bool {
        let owner = name_of(cm);
        let mut keep = Vec::new();
        for (key, bytes) in cm.binary_data.iter().flatten() {
            if !plugin_file(key) {
                tracing::warn!(configmap = %owner, key, "binaryData key is not <plugin-name>.wasm; ignored");
                continue;
            }
            let d = digest(&bytes.0);
            match self.files.get(key) {
                Some((o, _)) if *o != owner => {
                    tracing::error!(configmap = %owner, key, owner = %o, "plugin already delivered by another ConfigMap; this one is ignored");
                    continue;
                }
                Some((_, old)) if *old == d => {}
                _ => match self.write(key, &bytes.0) {
                    Ok(()) => {
                        tracing::info!(configmap = %owner, file = key, bytes = bytes.0.len(), "plugin written from ConfigMap");
                        self.files.insert(key.clone(), (owner.clone(), d));
                    }
                    Err(e) => {
                        tracing::error!(configmap = %owner, key, dir = %self.dir.display(), error = %e, "cannot write plugin into --plugin-dir");
                        continue;
                    }
                },
            }
            keep.push(key.clone());
        }
        for file in self.owned_by(&owner) {
            if !keep.contains(&file) {
                self.remove(&file);
            }
        }
        true
    }

    fn delete(&mut self, cm: &ConfigMap) -> bool {
        for file in self.owned_by(&name_of(cm)) {
            self.remove(&file);
        }
        true
    }

    fn relisted(&mut self, live: &[Arc<ConfigMap>]) -> bool {
        let live: Vec<String> = live.iter().map(|c| name_of(&**c)).collect();
        let gone: Vec<String> = self
            .files
            .iter()
            .filter(|(_, (o, _))| !live.contains(o))
            .map(|(f, _)| f.clone())
            .collect();
        for file in gone {
            self.remove(&file);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn cm(name: &str, files: &[(&str, &[u8])]) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.namespace = Some("kube-system".into());
        c.metadata.name = Some(name.into());
        c.binary_data = Some(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        );
        c
    }

    #[test]
    fn configmap_keys_become_plugin_files_and_go_with_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let read = |f: &str| std::fs::read(dir.path().join(f)).ok();
        let mut h = PluginFiles::new(dir.path().to_path_buf());
        h.apply(&cm(
            "a",
            &[("one.wasm", b"1"), ("../x.wasm", b"x"), ("n.txt", b"")],
        ));
        assert_eq!(read("one.wasm").as_deref(), Some(&b"1"[..]));
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
        // Another ConfigMap cannot take the name.
        h.apply(&cm("b", &[("one.wasm", b"2")]));
        assert_eq!(read("one.wasm").as_deref(), Some(&b"1"[..]));
        // Changed, then the key removed.
        h.apply(&cm("a", &[("one.wasm", b"3"), ("two.wasm", b"2")]));
        assert_eq!(read("one.wasm").as_deref(), Some(&b"3"[..]));
        h.apply(&cm("a", &[("two.wasm", b"2")]));
        assert_eq!(read("one.wasm"), None);
        // A file placed by hand stays; the ConfigMap gone while unwatched goes on relisting.
        std::fs::write(dir.path().join("hand.wasm"), b"h").expect("write");
        h.relisted(&[]);
        assert_eq!(read("two.wasm"), None);
        assert!(read("hand.wasm").is_some());
    }
}
