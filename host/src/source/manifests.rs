//! A directory of Kubernetes manifests (multi-document YAML or JSON) as a source. A change to
//! manifest files re-reads just those files after a short quiet period; any other change in
//! the directory (a ConfigMap volume's symlink swap, a rename from a temporary name) rescans
//! it. Either way only files whose content changed are parsed and sent.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use notify::{RecursiveMode, Watcher};
use serde::Deserialize;

use super::SourceEvent;
use crate::model::store::Object;

/// Quiet time after the last change before files are read: coalesces an editor's or a
/// copy's bursts of writes.
const SETTLE: Duration = Duration::from_millis(20);

/// True for files this source reads: *.yaml, *.yml, *.json, not hidden.
pub fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

/// Parses a manifest file. Kinds other than Service and EndpointSlice are skipped; `List`
/// items are read. Errors name the file, the document and the object.
pub fn parse(origin: &str, text: &str) -> Result<Vec<Object>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| format!("{origin}: document {}: not valid YAML: {e}", i + 1))?;
        collect(origin, i + 1, value, &mut out)?;
    }
    Ok(out)
}

fn collect(
    origin: &str,
    doc: usize,
    value: serde_yaml::Value,
    out: &mut Vec<Object>,
) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let kind = field("kind").unwrap_or_default();
    let api = field("apiVersion").unwrap_or_default();
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("<unnamed>");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let what = format!("{origin}: document {doc} ({kind} {ns}/{name})");
    match (api.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = value
                .get("items")
                .and_then(|v| v.as_sequence())
                .cloned()
                .unwrap_or_default();
            for item in items {
                collect(origin, doc, item, out)?;
            }
        }
        ("v1", "Service") => {
            let svc = serde_yaml::from_value(value).map_err(|e| format!("{what}: {e}"))?;
            out.push(Object::Service(Box::new(svc)));
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let slice = serde_yaml::from_value(value).map_err(|e| format!("{what}: {e}"))?;
            out.push(Object::EndpointSlice(Box::new(slice)));
        }
        (_, "") => return Err(format!("{origin}: document {doc}: no kind")),
        _ => tracing::debug!(%origin, doc, %kind, "object kind not used by nodeportd; skipped"),
    }
    Ok(())
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Watches `dir` and feeds `tx` until `tx` is closed. The first scan is complete when
/// `SourceEvent::Synced` is sent.
pub struct ManifestDir {
    dir: PathBuf,
    seen: HashMap<PathBuf, u64>,
    tx: Sender<SourceEvent>,
}

impl ManifestDir {
    /// Starts the watcher thread. Fails when the directory cannot be watched.
    pub fn spawn(
        dir: PathBuf,
        tx: Sender<SourceEvent>,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let (ntx, nrx) = crossbeam_channel::unbounded();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // An error (queue overflow) is an empty list: it forces a full rescan.
            let _ = ntx.send(ev.map(|e| e.paths).unwrap_or_default());
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| {
                anyhow::anyhow!("cannot watch manifest directory {}: {e}", dir.display())
            })?;
        let mut me = Self {
            dir,
            seen: HashMap::new(),
            tx,
        };
        Ok(std::thread::Builder::new()
            .name("nodeportd-manifests".into())
            .spawn(move || {
                let _watcher = watcher; // lives as long as the thread
                me.scan();
                if me.tx.send(SourceEvent::Synced).is_err() {
                    return;
                }
                me.watch(nrx);
            })?)
    }

    fn watch(&mut self, changes: Receiver<Vec<PathBuf>>) {
        while let Ok(first) = changes.recv() {
            let mut paths = first;
            let mut full = paths.is_empty();
            // Let a burst of writes (editors, kubectl cp, symlink swaps) settle.
            while let Ok(more) = changes.recv_timeout(SETTLE) {
                full |= more.is_empty();
                paths.extend(more);
            }
            full |= paths
                .iter()
                .any(|p| !is_manifest(p) || p.parent() != Some(self.dir.as_path()));
            let alive = if full {
                self.scan()
            } else {
                paths.sort();
                paths.dedup();
                paths.iter().all(|p| self.refresh(p))
            };
            if !alive {
                return;
            }
        }
    }

    /// Re-reads one manifest file (or reports it gone). False once nobody listens.
    fn refresh(&mut self, path: &Path) -> bool {
        if path.is_file() {
            return self.read(path);
        }
        if self.seen.remove(path).is_some() {
            let origin = path.display().to_string();
            return self.tx.send(SourceEvent::Removed { origin }).is_ok();
        }
        true
    }

    /// Reads a file and sends its objects if its content changed. False once nobody listens.
    fn read(&mut self, path: &Path) -> bool {
        let origin = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                let error = format!("{origin}: cannot read: {e}");
                return self.tx.send(SourceEvent::Failed { origin, error }).is_ok();
            }
        };
        let d = digest(&bytes);
        if self.seen.get(path) == Some(&d) {
            return true;
        }
        self.seen.insert(path.to_path_buf(), d);
        let ev = match std::str::from_utf8(&bytes).map_err(|e| format!("{origin}: not UTF-8: {e}"))
        {
            Ok(text) => match parse(&origin, text) {
                Ok(objects) => SourceEvent::Objects { origin, objects },
                Err(error) => SourceEvent::Failed { origin, error },
            },
            Err(error) => SourceEvent::Failed { origin, error },
        };
        self.tx.send(ev).is_ok()
    }

    /// Rescans the directory; sends what changed. False once nobody listens.
    fn scan(&mut self) -> bool {
        let mut present = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let p = e.path();
                    if is_manifest(&p) && p.is_file() {
                        present.push(p);
                    }
                }
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot list manifest directory");
                return true;
            }
        }
        present.sort();
        for path in &present {
            if !self.read(path) {
                return false;
            }
        }
        let gone: Vec<PathBuf> = self
            .seen
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            self.seen.remove(&path);
            if self
                .tx
                .send(SourceEvent::Removed {
                    origin: path.display().to_string(),
                })
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services_slices_and_lists() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: ["198.18.1.2"]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns}
  spec: {type: NodePort, ports: [{port: 53, protocol: UDP, nodePort: 30053}]}
"#;
        let objs = parse("f.yaml", text).unwrap();
        assert_eq!(objs.len(), 3);
        assert!(
            matches!(&objs[0], Object::Service(s) if s.metadata.name.as_deref() == Some("web"))
        );
        assert!(matches!(&objs[1], Object::EndpointSlice(_)));
    }

    #[test]
    fn errors_name_file_document_and_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: shop}\nspec: {ports: 7}\n";
        let e = parse("dir/bad.yaml", text).unwrap_err();
        assert!(
            e.contains("dir/bad.yaml")
                && e.contains("document 1")
                && e.contains("Service shop/bad"),
            "{e}"
        );
        let e = parse("dir/x.yaml", "a: [unclosed").unwrap_err();
        assert!(
            e.contains("dir/x.yaml") && e.contains("not valid YAML"),
            "{e}"
        );
    }
}
