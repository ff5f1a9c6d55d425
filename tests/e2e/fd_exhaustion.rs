//! Out of descriptors: accept fails (EMFILE) and connections wait in the kernel's queue. With
//! edge-triggered readiness no new event comes for them; nodeportd must retry on its own and
//! serve them once descriptors are free again, without a new connection arriving.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use nodeportd_e2e::*;

/// Sends the greeting and waits up to `wait` for the backend's id line: Ok(None) when no
/// answer came in time (the connection waits in the accept queue), Err when it was reset
/// (accepted, but no descriptor was left for the endpoint side).
fn greet(s: &TcpStream, wait: Duration) -> std::io::Result<Option<String>> {
    s.set_read_timeout(Some(wait))?;
    (&*s).write_all(b"hello\n")?;
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Ok(0) => Err(std::io::ErrorKind::ConnectionReset.into()),
        Ok(_) => Ok(Some(line.trim().to_string())),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn set_limit(pid: u32, limit: usize) {
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .output()
        .expect("prlimit");
    assert!(out.status.success(), "prlimit: {out:?}");
}

#[test]
fn queued_connections_are_served_once_descriptors_free_up() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("SKIP: prlimit (util-linux) not found");
        return;
    }
    let b = TcpBackend::local("b");
    let np = node_port();
    let m = one_tcp_service("fd", np, &b);
    let d = Daemon::start(m.path(), &LO_ONLY);
    let pid = d.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    // Room for a handful of flows (two sockets each) beyond what the daemon holds now.
    let mut limit = open + 12;
    set_limit(pid, limit);

    let target: SocketAddr = lo(np);
    let mut held = Vec::new();
    let mut pending = None;
    for _ in 0..40 {
        let Ok(s) = TcpStream::connect_timeout(&target, IO_TIMEOUT) else {
            limit -= 1; // reset during the handshake: one descriptor was left, take it away
            set_limit(pid, limit);
            continue;
        };
        match greet(&s, Duration::from_millis(700)) {
            Ok(Some(id)) => {
                assert_eq!(id, "b");
                held.push(s);
            }
            Ok(None) => {
                pending = Some(s);
                break;
            }
            Err(_) => {
                limit -= 1;
                set_limit(pid, limit);
            }
        }
    }
    let pending = pending.expect("the descriptor limit was never reached");
    assert!(!held.is_empty(), "no flow fitted under the limit at all");
    // Free descriptors; no new connection arrives, yet the queued one must be served.
    held.truncate(held.len().saturating_sub(3));
    let mut line = String::new();
    pending
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    BufReader::new(&pending)
        .read_line(&mut line)
        .expect("queued connection served after descriptors freed");
    assert_eq!(line.trim(), "b");
    assert!(
        d.log().contains("accept failed; retrying"),
        "the failure is logged"
    );
}
