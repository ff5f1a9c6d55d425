//! A directory of Kubernetes manifests (multi-document YAML or JSON) as a source. It is
//! watched for content changes only ([`crate::fswatch`]: never opens, reads or attributes, so
//! an idle daemon reads nothing). A change to manifest files re-reads just those files after
//! a short quiet period; a ConfigMap volume's symlink swap (`..data`, its `..<timestamp>`
//! directories), any directory change or lost events rescan it. Other files (an editor's
//! swap file, a `.tmp` written before a rename) are ignored: the rename names the manifest.
//! Either way only files whose content changed are parsed and sent.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{Sink, Source, SourceEvent};
use crate::fswatch::{Burst, DirWatch};
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
    // serde-saphyr (the YAML parser kube-rs uses) reads every document into JSON values;
    // its errors give the line and column, which name the document.
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("{origin}: not valid YAML: {e}"))?;
    let mut out = Vec::new();
    for (i, value) in docs.into_iter().enumerate() {
        collect(origin, i + 1, value, &mut out)?;
    }
    Ok(out)
}

fn collect(origin: &str, doc: usize, value: Value, out: &mut Vec<Object>) -> Result<(), String> {
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
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            for item in items {
                collect(origin, doc, item, out)?;
            }
        }
        ("v1", "Service") => {
            let svc = serde_json::from_value(value).map_err(|e| format!("{what}: {e}"))?;
            out.push(Object::Service(Box::new(svc)));
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let slice = serde_json::from_value(value).map_err(|e| format!("{what}: {e}"))?;
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

/// Whether a burst of changes needs the whole directory read again: events were lost, a
/// directory changed, or a ConfigMap volume swapped its `..data` link (its files are links
/// through it, so every one of them may have changed).
fn needs_rescan(burst: &Burst) -> bool {
    burst.overflow
        || burst.dirs
        || burst.paths.iter().any(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".."))
        })
}

/// A directory of manifests as a `Source`: a thread watches it and sends every manifest
/// file's objects (its origin is the file's path); the first scan is complete when
/// `SourceEvent::Synced` is sent.
pub struct ManifestDir {
    dir: PathBuf,
}

impl ManifestDir {
    /// The source for `dir` (watched once started).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl Source for ManifestDir {
    /// Starts the watcher thread. Fails when the directory cannot be watched.
    fn start(self: Box<Self>, sink: Sink) -> anyhow::Result<()> {
        let dir = self.dir;
        let watch = DirWatch::new(&dir).map_err(|e| {
            anyhow::anyhow!("cannot watch manifest directory {}: {e}", dir.display())
        })?;
        let mut reader = Reader {
            dir,
            seen: HashMap::new(),
            sink,
        };
        // Detached: the thread ends when the sync loop is gone (its sink closes).
        std::thread::Builder::new()
            .name("nodeportd-manifests".into())
            .spawn(move || {
                reader.scan();
                if !reader.sink.send(SourceEvent::Synced) {
                    return;
                }
                reader.watch(watch);
            })?;
        Ok(())
    }
}

/// The watcher thread's state: what each file held when last sent.
struct Reader {
    dir: PathBuf,
    /// Digest of each manifest file's content as last sent.
    seen: HashMap<PathBuf, u64>,
    sink: Sink,
}

impl Reader {
    fn watch(&mut self, mut watch: DirWatch) {
        loop {
            let burst = match watch.next(SETTLE) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "manifest directory no longer watched; its last objects stay in force");
                    return;
                }
            };
            if burst.gone {
                tracing::error!(dir = %self.dir.display(), "manifest directory removed or moved; its last objects stay in force");
                return;
            }
            let alive = if needs_rescan(&burst) {
                self.scan()
            } else {
                burst
                    .paths
                    .iter()
                    .filter(|p| is_manifest(p))
                    .all(|p| self.refresh(p))
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
            return self.sink.send(SourceEvent::Removed { origin });
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
                return self.sink.send(SourceEvent::Failed { origin, error });
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
        self.sink.send(ev)
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
            if !self.sink.send(SourceEvent::Removed {
                origin: path.display().to_string(),
            }) {
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
    fn a_started_directory_sends_its_files_then_synced_straight_into_the_sink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 30080}]}\n";
        std::fs::write(dir.path().join("web.yaml"), text).expect("write");
        std::fs::write(dir.path().join(".hidden.yaml"), "not: read").expect("write");
        let (tx, rx) = crossbeam_channel::unbounded();
        Box::new(ManifestDir::new(dir.path().to_path_buf()))
            .start(Sink::new(tx))
            .expect("start");
        let next = || rx.recv_timeout(Duration::from_secs(10)).expect("event");
        match next() {
            crate::sync::Event::Source(SourceEvent::Objects { origin, objects }) => {
                assert!(origin.ends_with("web.yaml"), "{origin}");
                assert_eq!(objects.len(), 1);
            }
            _ => panic!("expected the file's objects first"),
        }
        assert!(matches!(
            next(),
            crate::sync::Event::Source(SourceEvent::Synced)
        ));
    }

    #[test]
    fn configmap_swaps_directories_and_lost_events_rescan_and_other_files_do_not() {
        let burst = |names: &[&str]| Burst {
            paths: names.iter().map(|n| Path::new("/m").join(n)).collect(),
            ..Burst::default()
        };
        assert!(needs_rescan(&burst(&["..data"])));
        assert!(needs_rescan(&burst(&["..data_tmp", "web.yaml"])));
        assert!(!needs_rescan(&burst(&["web.yaml", "db.yml"])));
        assert!(!needs_rescan(&burst(&[".web.yaml.swp", "notes.txt"])));
        assert!(needs_rescan(&Burst {
            overflow: true,
            ..Burst::default()
        }));
        assert!(needs_rescan(&Burst {
            dirs: true,
            ..burst(&["sub"])
        }));
    }

    #[test]
    fn a_configmap_volume_swap_sends_the_swapped_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = |port: u16| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{type: NodePort, ports: [{{port: 80, nodePort: {port}}}]}}\n")
        };
        // A ConfigMap volume: web.yaml -> ..data/web.yaml, ..data -> ..ts1
        let ts1 = dir.path().join("..ts1");
        std::fs::create_dir(&ts1).expect("mkdir");
        std::fs::write(ts1.join("web.yaml"), svc(30080)).expect("write");
        std::os::unix::fs::symlink("..ts1", dir.path().join("..data")).expect("link");
        std::os::unix::fs::symlink("..data/web.yaml", dir.path().join("web.yaml")).expect("link");
        let (tx, rx) = crossbeam_channel::unbounded();
        Box::new(ManifestDir::new(dir.path().to_path_buf()))
            .start(Sink::new(tx))
            .expect("start");
        let next = |t| rx.recv_timeout(Duration::from_millis(t));
        assert!(matches!(
            next(10_000),
            Ok(crate::sync::Event::Source(SourceEvent::Objects { .. }))
        ));
        assert!(matches!(
            next(10_000),
            Ok(crate::sync::Event::Source(SourceEvent::Synced))
        ));
        // The swap: a new data directory, ..data_tmp renamed over ..data.
        let ts2 = dir.path().join("..ts2");
        std::fs::create_dir(&ts2).expect("mkdir");
        std::fs::write(ts2.join("web.yaml"), svc(30081)).expect("write");
        std::os::unix::fs::symlink("..ts2", dir.path().join("..data_tmp")).expect("link");
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap");
        match next(10_000) {
            Ok(crate::sync::Event::Source(SourceEvent::Objects { origin, objects })) => {
                assert!(origin.ends_with("web.yaml"), "{origin}");
                assert_eq!(objects.len(), 1);
            }
            _ => panic!("expected the swapped file's objects"),
        }
    }

    #[test]
    fn a_directory_that_cannot_be_watched_fails_at_start() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let missing = PathBuf::from("/nonexistent/nodeportd-manifests");
        let e = Box::new(ManifestDir::new(missing))
            .start(Sink::new(tx))
            .expect_err("start");
        assert!(e.to_string().contains("/nonexistent"), "{e}");
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
