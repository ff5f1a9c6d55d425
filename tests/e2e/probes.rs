//! Plugin loads and config probes through the daemon's library, with the real components: a
//! plugin is loaded, and a `configure` that never returns is probed, off the caller
//! (resolution answers "pending" at once); a probe runs once per (plugin version, config),
//! and its outcome is remembered until the file or the config changes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nodeportd::metrics::Metrics;
use nodeportd::plugin::{Directory, Runtime, RuntimeConfig, Unresolved};
use nodeportd_e2e::{rig, wait_for, PluginDir, SETTLE};

#[test]
fn a_hanging_configure_is_probed_once_per_config_and_version_and_remembered() {
    let pd = PluginDir::with(&["hostile/hang-configure", "consistent-hash"]);
    let metrics = Arc::new(Metrics::new());
    let rt = Runtime::new(
        RuntimeConfig::default(),
        metrics.plugin_logs_dropped.clone(),
    )
    .expect("runtime");
    let probed = Arc::new(AtomicUsize::new(0));
    let count = probed.clone();
    let mut dir = Directory::new(
        rt,
        pd.path().to_path_buf(),
        metrics,
        Arc::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .expect("probe threads");
    // Loads and probes that ended (each ends with the callback).
    let told = || probed.load(Ordering::SeqCst);
    let b = rig::backends(2);

    // The first resolution starts the load and answers at once; the next one, the probe.
    let fe = rig::frontend("hang-configure", "a", &b);
    assert_eq!(dir.resolve(&fe, None).map(|_| ()), Err(Unresolved::Pending));
    wait_for(SETTLE, "the load to report", || told() == 1);
    assert_eq!(dir.resolve(&fe, None).map(|_| ()), Err(Unresolved::Pending));
    wait_for(SETTLE, "the probe to report", || told() == 2);
    match dir.resolve(&fe, None) {
        Err(Unresolved::Refused(e)) => {
            assert!(e.contains("hang-configure failed in configure"), "{e}");
            assert!(e.contains("deadline"), "{e}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // Remembered: 30 more Services with that config cost no probe.
    for _ in 0..30 {
        assert!(matches!(
            dir.resolve(&fe, None),
            Err(Unresolved::Refused(_))
        ));
    }
    assert!(dir.wait_idle(std::time::Duration::ZERO), "no probe runs");
    assert_eq!(told(), 2);

    // Another config is a probe of its own.
    let other = rig::frontend("hang-configure", "b", &b);
    assert_eq!(
        dir.resolve(&other, None).map(|_| ()),
        Err(Unresolved::Pending)
    );
    wait_for(SETTLE, "the second probe to report", || told() == 3);

    // A new file under the same name is a new version: loaded off the caller, named by the
    // refresh after its load, probed again, and it accepts.
    let first = dir.refresh();
    assert_eq!(
        first,
        ["hang-configure".to_string()],
        "the first version loaded"
    );
    pd.install("consistent-hash", "hang-configure");
    assert!(dir.refresh().is_empty(), "the new version is still loading");
    wait_for(SETTLE, "the new version's load to report", || told() == 4);
    assert_eq!(dir.refresh(), ["hang-configure".to_string()]);
    assert_eq!(dir.resolve(&fe, None).map(|_| ()), Err(Unresolved::Pending));
    wait_for(SETTLE, "the new version's probe to report", || told() == 5);
    let chain = dir.resolve(&fe, None).expect("accepted").expect("a chain");
    assert_eq!(&*chain.links[0].plugin.name, "hang-configure");
}
