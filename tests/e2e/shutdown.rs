//! SIGTERM: listeners close at once, open flows may finish within --shutdown-grace, and the
//! process exits 0 as soon as they have (or when the grace runs out).

use std::time::{Duration, Instant};

use nodeportd_e2e::*;

#[test]
fn sigterm_drains_open_flows_then_exits_zero() {
    let b = TcpBackend::local("b");
    let np = node_port();
    let m = one_tcp_service("bye", np, &b);
    let mut d = Daemon::start(
        m.path(),
        &[
            "--nodeport-addresses",
            "127.0.0.0/8",
            "--shutdown-grace",
            "3s",
        ],
    );

    let mut open = Conn::open(lo(np)).expect("connect");
    assert_eq!(open.echo(b"before\n").unwrap(), b"before\n");

    d.sigterm();
    wait_for(
        SETTLE,
        "new connections to be refused after SIGTERM",
        || refused(&who(lo(np))),
    );
    assert_eq!(d.get("/readyz").0, 503, "still ready while draining");
    // The open flow still relays during the grace period.
    assert_eq!(
        open.echo(b"during the grace\n").unwrap(),
        b"during the grace\n"
    );
    assert!(d.alive(), "exited while a flow was open");

    let closed = Instant::now();
    drop(open);
    let status = d
        .wait_exit(Duration::from_secs(10))
        .expect("nodeportd did not exit");
    let took = closed.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_millis(2500),
        "exit took {took:?} after the last flow closed (grace is 3 s)"
    );
}

#[test]
fn sigterm_grace_period_ends_stuck_flows() {
    let b = TcpBackend::local("b");
    let np = node_port();
    let m = one_tcp_service("stuck", np, &b);
    let mut d = Daemon::start(
        m.path(),
        &[
            "--nodeport-addresses",
            "127.0.0.0/8",
            "--shutdown-grace",
            "1s",
        ],
    );
    let mut open = Conn::open(lo(np)).expect("connect");
    assert_eq!(open.echo(b"x\n").unwrap(), b"x\n");
    let sent = Instant::now();
    d.sigterm();
    let status = d
        .wait_exit(Duration::from_secs(10))
        .expect("nodeportd did not exit after its grace");
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the 1 s grace"
    );
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?} with a 1 s grace"
    );
    assert!(
        d.log().contains("grace period over"),
        "the cut flows are not logged"
    );
    // The flow is gone with the process.
    assert!(
        open.echo(b"y\n").is_err(),
        "the relayed connection outlived the daemon"
    );
}
