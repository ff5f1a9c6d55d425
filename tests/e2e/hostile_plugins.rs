//! Hostile plugins, built with the test suite (plugins/hostile): an endless loop (in a
//! per-flow call and in `set-backends`), unbounded memory growth, a trap, an out-of-range
//! answer, a flood of log calls, a component with the wrong exports, a 4 MiB refusal of its
//! config, and a file too large to load. Each must be caught, counted by kind, logged with the
//! Service and plugin name and handled by the failure policy (open: the native default serves;
//! closed: the flow is refused), while the daemon keeps serving a Service without plugins.

use std::net::SocketAddr;
use std::time::Duration;

use nodeportd_e2e::*;

struct Setup {
    d: Daemon,
    open: u16,
    closed: u16,
    good: u16,
    _backends: Vec<TcpBackend>,
    m: Manifests,
    pd: PluginDir,
}

/// Services `open` and `closed` (failure policies) use `plugin`; `good` uses none.
fn setup(plugin: &str, extra: &[&str]) -> Setup {
    let backends: Vec<TcpBackend> = ["a", "b"].iter().map(|id| TcpBackend::local(id)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let (open, closed, good) = (node_port(), node_port(), node_port());
    let name = plugin.rsplit('/').next().unwrap();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("open").tcp("http", open).plugins(name).yaml(),
            slices("open", "http", "TCP", &addrs),
            Service::new("closed")
                .tcp("http", closed)
                .plugins(name)
                .fail_closed()
                .yaml(),
            slices("closed", "http", "TCP", &addrs),
            Service::new("good").tcp("http", good).yaml(),
            slices("good", "http", "TCP", &addrs),
        ]),
    );
    let pd = PluginDir::with(&[plugin]);
    let d = pd.start(&m, extra);
    Setup {
        d,
        open,
        closed,
        good,
        _backends: backends,
        m,
        pd,
    }
}

/// The containment contract for a plugin that fails with `kind` on every call.
fn contained(plugin: &str, kind: &str, extra: &[&str]) -> Setup {
    let mut s = setup(plugin, extra);
    let name = plugin.rsplit('/').next().unwrap();
    // Policy open: every flow is still served (by the native default).
    for i in 0..20 {
        who(lo(s.open))
            .unwrap_or_else(|e| panic!("open policy, connection {i}: {e}\n{}", s.d.log()));
    }
    // Policy closed: every flow is refused (reset after accept).
    for i in 0..5 {
        assert!(
            who(lo(s.closed)).is_err(),
            "closed policy served connection {i}"
        );
    }
    wait_for(Duration::from_secs(5), "failures counted", || {
        s.d.metric_with(
            "nodeportd_plugin_failures_total",
            &[
                "service=\"e2e/open\"",
                &format!("plugin=\"{name}\""),
                &format!("kind=\"{kind}\""),
            ],
        ) >= 1.0
            && s.d.metric_with(
                "nodeportd_flows_refused_total",
                &["service=\"e2e/closed\"", "reason=\"plugin_failed\""],
            ) >= 5.0
    });
    // Repeated failures disable the plugin (calls are then skipped, counted as disabled).
    let disabled = s.d.metric_with(
        "nodeportd_plugin_failures_total",
        &["service=\"e2e/open\"", "kind=\"disabled\""],
    );
    assert!(
        disabled >= 1.0,
        "a plugin failing on every call is disabled: {disabled}"
    );
    let disables = s.d.metric_with(
        "nodeportd_plugin_disables_total",
        &["service=\"e2e/open\"", "cause=\"streak\""],
    );
    assert!(
        disables >= 1.0,
        "the disable is counted with its cause: {disables}"
    );
    let log = s.d.log();
    assert!(
        log.contains("e2e/open") && log.contains(&format!("plugin=\"{name}\""))
            || log.contains(&format!("plugin={name}")),
        "failures are logged with Service and plugin:\n{log}"
    );
    assert!(
        log.contains("disabled on this worker"),
        "disable is logged:\n{log}"
    );
    // Other Services are untouched.
    for i in 0..200 {
        who(lo(s.good)).unwrap_or_else(|e| panic!("Service without plugins, connection {i}: {e}"));
    }
    assert!(s.d.alive(), "daemon died");
    s
}

#[test]
fn endless_loop_is_interrupted_at_the_deadline() {
    contained("hostile/spin", "deadline", &[]);
}

/// A plugin spinning in `set-backends` (run on a setup thread, its flows parked meanwhile):
/// the flows that waited for it get the failure policy once the setup deadline passes.
/// tests/e2e/plugin_setup.rs shows that other Services on its worker do not wait.
#[test]
fn endless_loop_in_set_backends_is_interrupted_at_the_setup_deadline() {
    contained(
        "hostile/spin-set-backends",
        "deadline",
        &["--plugin-setup-deadline", "50ms"],
    );
}

/// A plugin that fails every third call: each success ends a failure streak, so only the
/// failure rate (10 among the last 100 calls on a worker) disables it, and the disable is
/// counted with that cause. Before the rate rule it failed a third of its flows forever.
#[test]
fn a_plugin_failing_every_third_call_is_disabled_by_its_failure_rate() {
    let s = setup("hostile/every-third", &["--workers", "1"]);
    let of_open = |name: &str, label: &str| s.d.metric_with(name, &["service=\"e2e/open\"", label]);
    for i in 0..45 {
        who(lo(s.open))
            .unwrap_or_else(|e| panic!("open policy, connection {i}: {e}\n{}", s.d.log()));
    }
    wait_for(SETTLE, "a disable by rate counted", || {
        of_open("nodeportd_plugin_disables_total", "cause=\"rate\"") >= 1.0
    });
    assert_eq!(
        of_open("nodeportd_plugin_disables_total", "cause=\"streak\""),
        0.0,
        "never three failures in a row"
    );
    let bad = of_open("nodeportd_plugin_failures_total", "kind=\"bad_answer\"");
    assert!(
        (10.0..=15.0).contains(&bad),
        "disabled at the 10th failure (30th call), not before, not much later: {bad} failures"
    );
    assert!(
        of_open("nodeportd_plugin_failures_total", "kind=\"disabled\"") >= 1.0,
        "calls are skipped while disabled"
    );
    let log = s.d.log();
    assert!(
        log.contains("cause=rate") || log.contains("cause=\"rate\""),
        "the disable is logged with its cause:\n{log}"
    );
}

#[test]
fn unbounded_memory_growth_stops_at_the_cap() {
    contained(
        "hostile/grow",
        "memory",
        &["--plugin-memory-mib", "4", "--plugin-deadline", "200ms"],
    );
}

#[test]
fn trap_is_caught() {
    contained("hostile/trap", "trap", &[]);
}

#[test]
fn out_of_range_answer_is_a_failure() {
    contained("hostile/bad-index", "bad_answer", &[]);
}

#[test]
fn log_flood_is_rate_limited() {
    let started = std::time::Instant::now();
    let mut s = setup(
        "hostile/log-flood",
        &["--plugin-deadline", "1s", "--workers", "2"],
    );
    for i in 0..10 {
        who(lo(s.open)).unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", s.d.log()));
    }
    wait_for(Duration::from_secs(5), "dropped log lines counted", || {
        s.d.metric_opt("nodeportd_plugin_log_lines_dropped_total")
            .unwrap_or(0.0)
            > 1000.0
    });
    let lines =
        s.d.log()
            .lines()
            .filter(|l| l.contains("log-flood"))
            .count();
    // The limit is 10 lines per second per instance (one per worker): a million per call
    // must not get through.
    let allowed = 10 * 2 * (started.elapsed().as_secs() as usize + 1);
    assert!(
        lines <= allowed,
        "{lines} plugin log lines reached the daemon log (limit {allowed})"
    );
    for _ in 0..100 {
        who(lo(s.good)).expect("Service without plugins");
    }
    assert!(s.d.alive());
}

#[test]
fn wrong_exports_are_rejected_at_load_and_the_service_runs_natively() {
    let mut s = setup("hostile/wrong-exports", &[]);
    for i in 0..10 {
        who(lo(s.open)).unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", s.d.log()));
        who(lo(s.closed)).unwrap_or_else(|e| {
            panic!("a plugin that never loaded does not refuse flows ({i}): {e}")
        });
    }
    let log = s.d.log();
    assert!(
        log.contains("e2e/open") && log.contains("does not export nodeport:plugin/lifecycle@0.1.0"),
        "the load error names the Service and what is wrong:\n{log}"
    );
    assert!(s.d.metric("nodeportd_plugin_load_errors_total") >= 1.0);
    for _ in 0..50 {
        who(lo(s.good)).expect("Service without plugins");
    }
    assert!(s.d.alive());
}

#[test]
fn a_plugin_file_too_large_to_load_is_refused_by_its_size() {
    // Past the 64 MiB a plugin file may be: sparse, so the test writes almost nothing.
    let mut s = setup("hostile/wrong-exports", &[]);
    let file = std::fs::File::create(s.pd.path().join("huge.wasm")).expect("huge.wasm");
    file.set_len((64 << 20) + 1).expect("size");
    let huge = node_port();
    let backend = TcpBackend::local("h");
    s.m.write(
        "huge.yaml",
        &docs(&[
            Service::new("huge")
                .tcp("http", huge)
                .plugins("huge")
                .yaml(),
            slices("huge", "http", "TCP", &[backend.addr()]),
        ]),
    );
    wait_for(Duration::from_secs(10), "the refusal logged", || {
        s.d.log()
            .contains("larger than the 64 MiB a plugin file may be")
    });
    let log = s.d.log();
    assert!(
        log.contains("e2e/huge") && log.contains("huge.wasm"),
        "the refusal names the Service and the file:\n{log}"
    );
    // It runs natively, like any Service whose plugin never loaded; the others are untouched.
    for i in 0..10 {
        who(lo(huge)).unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", s.d.log()));
        who(lo(s.good)).expect("Service without plugins");
    }
    assert!(s.d.alive());
}

#[test]
fn a_huge_refusal_is_cut_before_it_reaches_the_log() {
    // configure refuses with 4 MiB of text, on every Service and every retry.
    let mut s = setup("hostile/huge-refusal", &[]);
    wait_for(Duration::from_secs(10), "the refusal logged", || {
        s.d.log().contains("huge-refusal: xxx")
    });
    // The refused config keeps the Services on the native default, under either policy.
    for i in 0..10 {
        who(lo(s.open)).unwrap_or_else(|e| panic!("open, connection {i}: {e}\n{}", s.d.log()));
        who(lo(s.closed)).unwrap_or_else(|e| panic!("closed, connection {i}: {e}"));
        who(lo(s.good)).expect("Service without plugins");
    }
    let log = s.d.log();
    assert!(log.contains("more bytes)"), "the cut is marked:\n{log}");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 8 << 10,
        "no log line carries the plugin's megabytes: the longest has {longest} bytes"
    );
    assert!(s.d.alive());
}
