//! Bad manifests are reported (log names the file and the object, config_errors_total counts)
//! while every other Service keeps serving; fixing a file is picked up live.

use nodeportd_e2e::*;

fn log_line_with<'a>(log: &'a str, needles: &[&str]) -> Option<&'a str> {
    log.lines().find(|l| needles.iter().all(|n| l.contains(n)))
}

#[test]
fn bad_manifests_are_reported_and_others_keep_serving() {
    let good = TcpBackend::local("good");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "web.yaml",
        &docs(&[
            Service::new("web").tcp("http", np).yaml(),
            slices("web", "http", "TCP", &[good.addr()]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);
    assert_eq!(who(lo(np)).unwrap(), "good");
    assert_eq!(d.metric("nodeportd_config_errors_total"), 0.0);

    // 1. Not YAML at all.
    m.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n",
    );
    // 2. nodePort outside the allowed range.
    let fixed_b = TcpBackend::local("fixed");
    m.write(
        "low.yaml",
        &docs(&[
            Service::new("low").port("http", "TCP", 80).yaml(),
            slices("low", "http", "TCP", &[fixed_b.addr()]),
        ]),
    );
    // 3. A nodePort another Service already has.
    let dup_b = TcpBackend::local("dup");
    m.write(
        "dup.yaml",
        &docs(&[
            Service::new("dup").tcp("http", np).yaml(),
            slices("dup", "http", "TCP", &[dup_b.addr()]),
        ]),
    );

    let broken = m.file("broken.yaml").display().to_string();
    let low = m.file("low.yaml").display().to_string();
    wait_for(SETTLE, "all three errors to be logged", || {
        let log = d.log();
        log_line_with(&log, &[&broken, "not valid YAML"]).is_some()
            && log_line_with(&log, &[&low, "Service e2e/low", "nodePort 80", "outside"]).is_some()
            && log_line_with(
                &log,
                &["Service e2e/dup", "already used by Service e2e/web"],
            )
            .is_some()
    });
    assert!(
        d.metric("nodeportd_config_errors_total") >= 3.0,
        "config_errors_total = {}",
        d.metric("nodeportd_config_errors_total")
    );
    // The first Service keeps its port and its backend.
    for _ in 0..10 {
        assert_eq!(who(lo(np)).unwrap(), "good");
    }
    assert_eq!(dup_b.accepted(), 0);

    // Fix the files: each is picked up.
    let np_broken = node_port();
    let np_low = node_port();
    let np_dup = node_port();
    let healed = TcpBackend::local("healed");
    m.write(
        "broken.yaml",
        &docs(&[
            Service::new("healed").tcp("http", np_broken).yaml(),
            slices("healed", "http", "TCP", &[healed.addr()]),
        ]),
    );
    m.write(
        "low.yaml",
        &docs(&[
            Service::new("low").tcp("http", np_low).yaml(),
            slices("low", "http", "TCP", &[fixed_b.addr()]),
        ]),
    );
    m.write(
        "dup.yaml",
        &docs(&[
            Service::new("dup").tcp("http", np_dup).yaml(),
            slices("dup", "http", "TCP", &[dup_b.addr()]),
        ]),
    );
    wait_for(SETTLE, "the fixed invalid-YAML file to serve", || {
        who(lo(np_broken)).is_ok_and(|id| id == "healed")
    });
    wait_for(SETTLE, "the fixed out-of-range Service to serve", || {
        who(lo(np_low)).is_ok_and(|id| id == "fixed")
    });
    wait_for(SETTLE, "the fixed duplicate Service to serve", || {
        who(lo(np_dup)).is_ok_and(|id| id == "dup")
    });
    assert_eq!(who(lo(np)).unwrap(), "good");
}

/// A conflict is reported with the Service names; an operator must also learn which file the
/// losing Service came from (every other manifest error names its file).
#[test]
fn node_port_conflict_names_the_file() {
    let a = TcpBackend::local("a");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "first.yaml",
        &docs(&[
            Service::new("first").tcp("http", np).yaml(),
            slices("first", "http", "TCP", &[a.addr()]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);
    m.write(
        "second.yaml",
        &Service::new("second").tcp("http", np).yaml(),
    );
    wait_for(SETTLE, "the conflict to be logged", || {
        d.log().contains("Service e2e/second")
    });
    let log = d.log();
    let line = log_line_with(&log, &["Service e2e/second"]).unwrap();
    assert!(
        line.contains("second.yaml"),
        "the conflict does not name the file: {line}"
    );
}

#[test]
fn invalid_object_keeps_its_last_good_version() {
    let a = TcpBackend::local("a");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("keep").tcp("http", np).yaml(),
            slices("keep", "http", "TCP", &[a.addr()]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);
    assert_eq!(who(lo(np)).unwrap(), "a");
    // Same Service, now with an invalid affinity timeout: rejected, the old one stays.
    let bad = Service::new("keep").tcp("http", np).affinity(0).yaml();
    m.write(
        "svc.yaml",
        &docs(&[bad, slices("keep", "http", "TCP", &[a.addr()])]),
    );
    wait_for(SETTLE, "the rejection to be logged", || {
        d.log().contains("timeoutSeconds 0")
    });
    assert!(d.metric("nodeportd_config_errors_total") >= 1.0);
    for _ in 0..5 {
        assert_eq!(who(lo(np)).unwrap(), "a");
    }
}
