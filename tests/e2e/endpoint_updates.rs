//! Live changes of the manifest directory: slice edits move new flows, open flows survive;
//! deleting a Service releases its port.

use std::net::TcpListener;

use nodeportd_e2e::*;

#[test]
fn slice_edit_moves_new_flows_and_keeps_open_ones() {
    let a = TcpBackend::local("a");
    let b = TcpBackend::local("b");
    let np = node_port();
    let m = Manifests::new();
    m.write("svc.yaml", &Service::new("move").tcp("http", np).yaml());
    m.write(
        "slice.yaml",
        &slice(
            "move-1",
            "move",
            "http",
            "TCP",
            a.addr().port(),
            &[Ep::ready(a.addr().ip())],
        ),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);

    let mut open = Conn::open(lo(np)).expect("connect");
    assert_eq!(open.backend, "a");
    assert_eq!(open.echo(b"before\n").unwrap(), b"before\n");

    m.write(
        "slice.yaml",
        &slice(
            "move-1",
            "move",
            "http",
            "TCP",
            b.addr().port(),
            &[Ep::ready(b.addr().ip())],
        ),
    );
    wait_for(SETTLE, "new connections to reach backend b", || {
        who(lo(np)).is_ok_and(|id| id == "b")
    });
    for i in 0..10 {
        assert_eq!(who(lo(np)).unwrap(), "b", "connection {i} after the edit");
    }
    let a_before = a.accepted();

    // The flow opened before the edit still relays, both ways, to a.
    assert_eq!(open.echo(b"after the edit\n").unwrap(), b"after the edit\n");
    let ct = d.conntrack();
    let mine: Vec<_> = rows(&ct, "tcp")
        .into_iter()
        .filter(|r| r["client"] == open.local_addr().to_string())
        .collect();
    assert_eq!(mine.len(), 1, "the open flow is tracked once: {ct:#}");
    assert_eq!(mine[0]["endpoint"], a.addr().to_string());
    assert_eq!(
        a.accepted(),
        a_before,
        "backend a got new connections after the edit"
    );
    assert!(
        d.metric(&format!(
            "nodeportd_endpoint_changes_total{{service=\"{NS}/move\"}}"
        )) >= 1.0
    );
}

#[test]
fn deleting_a_service_releases_its_port() {
    let a = TcpBackend::local("a");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "gone.yaml",
        &docs(&[
            Service::new("gone").tcp("http", np).yaml(),
            slices("gone", "http", "TCP", &[a.addr()]),
        ]),
    );
    // A second Service that must not be disturbed.
    let other = TcpBackend::local("other");
    let np2 = node_port();
    m.write(
        "stay.yaml",
        &docs(&[
            Service::new("stay").tcp("http", np2).yaml(),
            slices("stay", "http", "TCP", &[other.addr()]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);

    let mut open = Conn::open(lo(np)).expect("connect");
    assert_eq!(open.backend, "a");
    let series = format!("nodeportd_flows_total{{service=\"{NS}/gone\"");
    assert!(d.metric_opt(&series).is_some());

    m.remove("gone.yaml");
    wait_for(
        SETTLE,
        "connections to the deleted Service to be refused",
        || refused(&who(lo(np))),
    );
    // Its established flow finishes normally.
    assert_eq!(open.echo(b"still here\n").unwrap(), b"still here\n");
    drop(open);
    // The port is free: this process can listen on it.
    let mut mine = None;
    wait_for(SETTLE, "the nodePort to be bindable", || {
        mine = TcpListener::bind(lo(np)).ok();
        mine.is_some()
    });
    drop(mine);
    assert!(
        refused(&who(lo(np))),
        "connection through the released port was not refused"
    );
    assert_eq!(
        d.metric_opt(&series),
        None,
        "metrics of the deleted Service remain"
    );
    assert_eq!(
        who(lo(np2)).unwrap(),
        "other",
        "the other Service stopped serving"
    );
}

#[test]
fn changing_the_node_port_moves_the_listener() {
    let a = TcpBackend::local("a");
    let np1 = node_port();
    let np2 = node_port();
    let m = Manifests::new();
    let eps = slices("hop", "http", "TCP", &[a.addr()]);
    m.write(
        "svc.yaml",
        &docs(&[Service::new("hop").tcp("http", np1).yaml(), eps.clone()]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);
    let mut open = Conn::open(lo(np1)).unwrap();

    m.write(
        "svc.yaml",
        &docs(&[Service::new("hop").tcp("http", np2).yaml(), eps]),
    );
    wait_for(SETTLE, "the new nodePort to serve", || {
        who(lo(np2)).is_ok_and(|id| id == "a")
    });
    wait_for(SETTLE, "the old nodePort to refuse", || {
        refused(&who(lo(np1)))
    });
    assert_eq!(open.echo(b"old port flow\n").unwrap(), b"old port flow\n");
    assert_eq!(
        d.metric_opt(&format!("node_port=\"{np1}\"")),
        None,
        "series of the old nodePort remain"
    );
}

#[test]
fn hidden_and_non_manifest_files_are_ignored() {
    let a = TcpBackend::local("a");
    let (np_hidden, np_txt, np_seen) = (node_port(), node_port(), node_port());
    let m = Manifests::new();
    let d = Daemon::start(m.path(), &LO_ONLY);
    let svc = |name: &str, np: u16| {
        docs(&[
            Service::new(name).tcp("http", np).yaml(),
            slices(name, "http", "TCP", &[a.addr()]),
        ])
    };
    std::fs::write(m.file(".hidden.yaml"), svc("hidden", np_hidden)).unwrap();
    std::fs::write(m.file("notes.txt"), svc("txt", np_txt)).unwrap();
    m.write("seen.yml", &svc("seen", np_seen));
    wait_for(SETTLE, "the .yml manifest to serve", || {
        who(lo(np_seen)).is_ok()
    });
    assert!(refused(&who(lo(np_hidden))), "a hidden file was read");
    assert!(refused(&who(lo(np_txt))), "a .txt file was read");
    assert_eq!(d.metric("nodeportd_config_errors_total"), 0.0);
}
