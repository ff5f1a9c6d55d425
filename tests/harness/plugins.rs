//! Built WASM plugins (from `scripts/build-plugins.sh`) and a test's own plugin directory
//! that it can fill, swap and break, and start the daemon on.

use std::path::{Path, PathBuf};

use crate::{Daemon, Manifests};

/// Where `scripts/build-plugins.sh` put the components: `$NODEPORTD_PLUGINS`, else
/// `target/plugins` of this workspace.
pub fn built_plugins() -> PathBuf {
    let dir = std::env::var_os("NODEPORTD_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    assert!(
        dir.join("consistent-hash.wasm").is_file(),
        "plugins not built in {}: run scripts/build-plugins.sh first (or set NODEPORTD_PLUGINS)",
        dir.display()
    );
    dir
}

/// The path of a built plugin (`hostile/<name>` for the test suite's hostile ones).
pub fn built_plugin(name: &str) -> PathBuf {
    let p = built_plugins().join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

/// A plugin directory of the test's own (so it can add, swap and break files).
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    /// Holds copies of the named built plugins (`hostile/spin` is installed as `spin.wasm`).
    pub fn with(names: &[&str]) -> Self {
        let d = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for n in names {
            d.install(n, n.rsplit('/').next().unwrap_or(n));
        }
        d
    }

    /// The directory, for `--plugin-dir`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies built plugin `built` in as `<name>.wasm` (atomically: written aside, renamed).
    pub fn install(&self, built: &str, name: &str) {
        let bytes = std::fs::read(built_plugin(built)).expect("read built plugin");
        self.write(name, &bytes);
    }

    /// Writes `<name>.wasm` atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).expect("write plugin");
        std::fs::rename(&tmp, self.dir.path().join(format!("{name}.wasm"))).expect("rename plugin");
    }

    /// Starts the daemon on `manifests`, loopback only, with this plugin directory and
    /// `extra` arguments.
    pub fn start(&self, manifests: &Manifests, extra: &[&str]) -> Daemon {
        let dir = self.path().display().to_string();
        let mut args = vec!["--nodeport-addresses", "127.0.0.0/8", "--plugin-dir", &dir];
        args.extend_from_slice(extra);
        Daemon::start(manifests.path(), &args)
    }
}
