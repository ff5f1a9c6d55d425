//! Plugins delivered by ConfigMap: every `binaryData` key `<name>.wasm` of a selected
//! ConfigMap is written into `--plugin-dir`, where the plugin directory picks it up as it
//! picks up any file (written beside it, then renamed into place, so a reader never sees half
//! a component). A key removed from its ConfigMap, or a ConfigMap deleted, removes the file.
//! Files placed in the directory by other means are never touched; a name claimed by two
//! ConfigMaps keeps the first one's and the other is named in the log.
//!
//! Which files are the daemon's own is kept in a ledger in the directory itself
//! ([`LEDGER`]): the directory (an emptyDir) outlives a restart of the container, so a file
//! whose ConfigMap was deleted while the daemon was down is still known as a ConfigMap's, and
//! the first listing removes it. Without the ledger it stayed until the pod was replaced.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;

use super::watch::{name_of, Handler};

/// The ledger's file name: one line per file written from a ConfigMap, `<file> <configmap>`.
/// Hidden, and not `<name>.wasm`, so no Service can name it as a plugin.
pub const LEDGER: &str = ".configmap-plugins";

/// Writes the plugins of the selected ConfigMaps into a directory.
pub struct PluginFiles {
    dir: PathBuf,
    /// File name -> (owning ConfigMap, content digest).
    files: HashMap<String, (String, u64)>,
    /// The ledger lags `files`: a file was added or removed since it was last written.
    dirty: bool,
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
    /// Writes into `dir`, taking over the files an earlier run wrote there (its ledger):
    /// those whose ConfigMap or key is gone go once the first listing is complete.
    pub fn new(dir: PathBuf) -> Self {
        let mut files = HashMap::new();
        // A line left out (a file gone meanwhile, a name this daemon never writes) is
        // dropped from the ledger with the next record.
        let mut dirty = false;
        let ledger = std::fs::read_to_string(dir.join(LEDGER));
        for line in ledger.as_deref().unwrap_or_default().lines() {
            let Some((file, owner)) = line.split_once(' ').filter(|(f, _)| plugin_file(f)) else {
                dirty = true; // malformed, or not a name this daemon writes: never touched
                continue;
            };
            // The digest of what is there now, so an unchanged key is not written again.
            match std::fs::read(dir.join(file)) {
                Ok(bytes) => {
                    files.insert(file.to_string(), (owner.to_string(), digest(&bytes)));
                }
                Err(_) => dirty = true,
            }
        }
        if !files.is_empty() {
            tracing::info!(dir = %dir.display(), files = files.len(), "plugin files from ConfigMaps of an earlier run taken over");
        }
        Self { dir, files, dirty }
    }

    fn write(&self, file: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.dir.join(file))
    }

    /// Records which files are the ConfigMaps', if that changed since the last record
    /// (written beside, then renamed into place). A record that fails is tried again with the
    /// next change.
    fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        let mut lines: Vec<String> = (self.files.iter())
            .map(|(f, (o, _))| format!("{f} {o}\n"))
            .collect();
        lines.sort();
        let tmp = self.dir.join(format!("{LEDGER}.tmp"));
        let saved = std::fs::write(&tmp, lines.concat())
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(LEDGER)));
        self.dirty = saved.is_err();
        if let Err(e) = saved {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot record the plugin files written from ConfigMaps; after a restart, a file whose ConfigMap went meanwhile stays");
        }
    }

    fn remove(&mut self, file: &str) {
        self.dirty |= self.files.remove(file).is_some();
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
                        let new = self.files.insert(key.clone(), (owner.clone(), d));
                        self.dirty |= new.is_none();
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
        self.flush();
        true
    }

    fn delete(&mut self, cm: &ConfigMap) -> bool {
        for file in self.owned_by(&name_of(cm)) {
            self.remove(&file);
        }
        self.flush();
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
        self.flush();
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
        let mut names: Vec<String> = (std::fs::read_dir(dir.path()).expect("ls"))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [LEDGER, "one.wasm"],
            "only the valid key, and the ledger"
        );
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

    #[test]
    fn a_restarted_daemon_removes_files_whose_configmap_went_while_it_was_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let read = |f: &str| std::fs::read(dir.path().join(f)).ok();
        let mut h = PluginFiles::new(dir.path().to_path_buf());
        h.apply(&cm("a", &[("one.wasm", b"1")]));
        h.apply(&cm("b", &[("two.wasm", b"2"), ("three.wasm", b"3")]));
        std::fs::write(dir.path().join("hand.wasm"), b"h").expect("write");
        drop(h); // the daemon stops; meanwhile b goes and a loses nothing
        let mut h = PluginFiles::new(dir.path().to_path_buf());
        let before = std::fs::metadata(dir.path().join("one.wasm")).expect("one");
        h.apply(&cm("a", &[("one.wasm", b"1")]));
        h.relisted(&[Arc::new(cm("a", &[("one.wasm", b"1")]))]);
        assert_eq!(
            read("two.wasm"),
            None,
            "b's files go after the first listing"
        );
        assert_eq!(read("three.wasm"), None);
        assert_eq!(read("one.wasm").as_deref(), Some(&b"1"[..]));
        let after = std::fs::metadata(dir.path().join("one.wasm")).expect("one");
        assert_eq!(
            before.modified().ok(),
            after.modified().ok(),
            "an unchanged key is not written again"
        );
        assert!(read("hand.wasm").is_some(), "a file placed by hand stays");
        // The ledger now lists only a's file; a third run finds nothing else to take over.
        let ledger = String::from_utf8(read(LEDGER).expect("ledger")).expect("utf-8");
        assert_eq!(ledger, "one.wasm kube-system/a\n");
        // A ledger line naming something the daemon never writes is ignored.
        std::fs::write(dir.path().join(LEDGER), "../etc.wasm x\nhand.txt x\n").expect("write");
        let mut h = PluginFiles::new(dir.path().to_path_buf());
        h.relisted(&[]);
        assert!(read("hand.wasm").is_some());
        assert_eq!(read(LEDGER).as_deref(), Some(&b""[..]), "and dropped");
        // So is a line whose file went while the daemon was down.
        std::fs::write(dir.path().join(LEDGER), "gone.wasm kube-system/a\n").expect("write");
        let mut h = PluginFiles::new(dir.path().to_path_buf());
        h.relisted(&[Arc::new(cm("a", &[]))]);
        assert_eq!(read(LEDGER).as_deref(), Some(&b""[..]));
    }
}
