//! The plugin runtime through the daemon's library, with the real components: containment
//! (each failure kind, disable with backoff and probation, instance replacement), endpoint
//! updates reaching `set-backends`, the contract check and the on-disk compile cache. Time is
//! passed in (`now`), so backoff is checked without sleeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeportd::metrics::Metrics;
use nodeportd::model::{Backend, Family};
use nodeportd::plugin::wire::types;
use nodeportd::plugin::{Chain, Directory, FailureKind, Runtime, RuntimeConfig, WorkerInstances};
use nodeportd_e2e::{built_plugin, rig, PluginDir};

struct Rig {
    rt: Arc<Runtime>,
    dir: Directory,
    _pd: PluginDir,
}

fn setup(plugins: &[&str], cfg: RuntimeConfig) -> Rig {
    let pd = PluginDir::with(plugins);
    let metrics = Arc::new(Metrics::new());
    let rt = Runtime::new(cfg, metrics.plugin_logs_dropped.clone()).expect("runtime");
    let dir = Directory::new(
        rt.clone(),
        pd.path().to_path_buf(),
        metrics,
        Arc::new(|| {}),
    )
    .expect("probe threads");
    Rig { rt, dir, _pd: pd }
}

fn chain(r: &mut Rig, plugin: &str, config: &str, b: &Arc<[Backend]>) -> Arc<Chain> {
    r.dir
        .resolve_wait(
            &rig::frontend(plugin, config, b),
            None,
            Duration::from_secs(10),
        )
        .expect("resolves")
        .expect("a chain")
}

fn flow(chain: &Chain, i: u64) -> types::Flow {
    rig::record(chain, &rig::flow(i))
}

fn failures(chain: &Chain, kind: FailureKind) -> u64 {
    chain.links[0].metrics.failures(kind)
}

#[test]
fn trap_disables_with_backoff_and_probation_doubles_it() {
    let mut r = setup(&["hostile/trap"], RuntimeConfig::default());
    let b = rig::backends(3);
    let ch = chain(&mut r, "trap", "", &b);
    let mut w = WorkerInstances::new(Some(r.rt.clone()), 0);
    w.attach(&ch);
    let t0 = Instant::now();
    for i in 0..3 {
        assert_eq!(
            w.select(&ch, Family::V4, flow(&ch, i), &b, &[], t0),
            Err(FailureKind::Trap)
        );
    }
    assert_eq!(failures(&ch, FailureKind::Trap), 3);
    assert_eq!(w.instances(), 0, "a trapped instance is dropped");
    // Disabled: no call is made for 1 s.
    assert_eq!(
        w.select(
            &ch,
            Family::V4,
            flow(&ch, 9),
            &b,
            &[],
            t0 + Duration::from_millis(900)
        ),
        Err(FailureKind::Disabled)
    );
    assert_eq!(failures(&ch, FailureKind::Trap), 3);
    // After the backoff one call is tried; it fails, so the next period is 2 s.
    let t1 = t0 + Duration::from_millis(1100);
    assert_eq!(
        w.select(&ch, Family::V4, flow(&ch, 10), &b, &[], t1),
        Err(FailureKind::Trap)
    );
    assert_eq!(
        w.select(
            &ch,
            Family::V4,
            flow(&ch, 11),
            &b,
            &[],
            t1 + Duration::from_millis(1500)
        ),
        Err(FailureKind::Disabled)
    );
    assert_eq!(
        w.select(
            &ch,
            Family::V4,
            flow(&ch, 12),
            &b,
            &[],
            t1 + Duration::from_millis(2100)
        ),
        Err(FailureKind::Trap)
    );
    assert_eq!(failures(&ch, FailureKind::Trap), 5);
    assert_eq!(failures(&ch, FailureKind::Disabled), 2);
}

#[test]
fn endless_loop_is_cut_at_the_deadline_and_memory_at_the_cap() {
    let cfg = RuntimeConfig {
        deadline: Duration::from_millis(20),
        memory_limit: 4 << 20,
        ..Default::default()
    };
    let mut r = setup(&["hostile/spin", "hostile/grow"], cfg);
    let b = rig::backends(2);
    let spin = chain(&mut r, "spin", "", &b);
    let grow = chain(&mut r, "grow", "", &b);
    let mut w = WorkerInstances::new(Some(r.rt.clone()), 0);
    w.attach(&spin);
    w.attach(&grow);
    let t = Instant::now();
    assert!(
        matches!(
            w.admit(&spin, 0, Family::V4, flow(&spin, 1), Instant::now()),
            Err(FailureKind::Deadline)
        ),
        "reported to the caller, which applies the policy"
    );
    let took = t.elapsed();
    assert_eq!(failures(&spin, FailureKind::Deadline), 1);
    assert!(
        took < Duration::from_secs(2),
        "interrupted near its 20 ms deadline, took {took:?}"
    );
    assert!(matches!(
        w.admit(&grow, 0, Family::V4, flow(&grow, 1), Instant::now()),
        Err(FailureKind::Memory)
    ));
    assert_eq!(
        failures(&grow, FailureKind::Memory),
        1,
        "growth stopped by the 4 MiB cap"
    );
}

#[test]
fn bad_answers_are_failures_but_keep_the_instance() {
    let mut r = setup(&["hostile/bad-index"], RuntimeConfig::default());
    let b = rig::backends(3);
    let ch = chain(&mut r, "bad-index", "", &b);
    let mut w = WorkerInstances::new(Some(r.rt.clone()), 0);
    w.attach(&ch);
    assert_eq!(
        w.select(&ch, Family::V4, flow(&ch, 1), &b, &[], Instant::now()),
        Err(FailureKind::BadAnswer)
    );
    assert_eq!(
        w.instances(),
        1,
        "a wrong answer does not poison the instance"
    );
    // "excluded" mode answers the index that just failed: also out of contract.
    let ch = chain(&mut r, "bad-index", "excluded", &b);
    w.attach(&ch);
    let tried = [b[1].addr];
    assert_eq!(
        w.select(&ch, Family::V4, flow(&ch, 2), &b, &tried, Instant::now()),
        Err(FailureKind::BadAnswer)
    );
}

#[test]
fn endpoint_changes_reach_the_plugin_and_retries_exclude_failures() {
    let mut r = setup(&["consistent-hash"], RuntimeConfig::default());
    let b3 = rig::backends(3);
    let ch = chain(&mut r, "consistent-hash", "", &b3);
    let mut w = WorkerInstances::new(Some(r.rt.clone()), 0);
    w.attach(&ch);
    let now = Instant::now();
    let mut first = Vec::new();
    for i in 0..50 {
        let got = w
            .select(&ch, Family::V4, flow(&ch, i), &b3, &[], now)
            .expect("select")
            .expect("an index");
        assert!(got < 3);
        first.push(got);
    }
    // Deterministic per flow hash, and spread.
    for i in 0..50 {
        assert_eq!(
            w.select(&ch, Family::V4, flow(&ch, i), &b3, &[], now),
            Ok(Some(first[i as usize]))
        );
    }
    assert!(
        first
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 3
    );
    // Retries never return an endpoint that failed.
    for i in 0..20 {
        let f = flow(&ch, i);
        let a = w
            .select(&ch, Family::V4, f, &b3, &[], now)
            .unwrap()
            .unwrap();
        let tried = [b3[a].addr];
        let b = w
            .select(&ch, Family::V4, f, &b3, &tried, now)
            .unwrap()
            .unwrap();
        assert_ne!(a, b);
        let tried = [b3[a].addr, b3[b].addr];
        let c = w
            .select(&ch, Family::V4, f, &b3, &tried, now)
            .unwrap()
            .unwrap();
        assert!(c != a && c != b);
    }
    // New endpoint list (a new Arc): set-backends runs again before the next select.
    let b1: Arc<[Backend]> = b3[2..].to_vec().into();
    for i in 0..10 {
        assert_eq!(
            w.select(&ch, Family::V4, flow(&ch, i), &b1, &[], now),
            Ok(Some(0))
        );
    }
}

#[test]
fn contract_errors_say_what_is_wrong() {
    let mut r = setup(&["hostile/wrong-exports"], RuntimeConfig::default());
    let e = r
        .dir
        .get("wrong-exports", Duration::from_secs(10))
        .unwrap_err();
    assert!(
        e.contains("does not export nodeport:plugin/lifecycle@0.1.0"),
        "{e}"
    );
    let e = r.rt.load("junk", b"\0asm\x01\0\0\0").unwrap_err();
    assert!(
        e.contains("implements no role")
            || e.contains("does not export")
            || e.contains("not a valid"),
        "{e}"
    );
    let e = r.rt.load("junk", b"definitely not wasm").unwrap_err();
    assert!(e.contains("not a valid WebAssembly component"), "{e}");
    let e = r.dir.get("absent", Duration::from_secs(10)).unwrap_err();
    assert!(e.contains("absent.wasm"), "{e}");
}

#[test]
fn compiled_code_is_cached_on_disk_and_a_bad_cache_file_is_replaced() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let bytes = std::fs::read(built_plugin("consistent-hash")).unwrap();
    let rt = Runtime::new(cfg.clone(), Default::default()).unwrap();
    let p = rt.load("consistent-hash", &bytes).expect("load");
    let file = cache.path().join(format!("{}.cwasm", p.digest));
    assert!(
        file.is_file(),
        "precompiled code written to {}",
        file.display()
    );
    // A fresh runtime (a restart) loads from the cache; a corrupt file is recompiled.
    let rt2 = Runtime::new(cfg.clone(), Default::default()).unwrap();
    assert_eq!(
        rt2.load("consistent-hash", &bytes)
            .expect("from cache")
            .roles,
        p.roles
    );
    std::fs::write(&file, b"garbage").unwrap();
    let rt3 = Runtime::new(cfg, Default::default()).unwrap();
    assert!(
        rt3.load("consistent-hash", &bytes).is_ok(),
        "a bad cache file is not fatal"
    );
    assert!(
        std::fs::metadata(&file).unwrap().len() > 1000,
        "and it is replaced"
    );
}
