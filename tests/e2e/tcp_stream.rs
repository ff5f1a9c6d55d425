//! Byte stream semantics through the relay: half-close and large transfers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use nodeportd_e2e::*;

/// Half-close with every step acknowledged, so each FIN reaches the proxy on its own: the
/// client sends, then shuts its sending half; the backend sees EOF, answers, then closes.
#[test]
fn half_close_lets_the_backend_answer_after_eof() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let (got_tx, got_rx) = mpsc::channel::<Vec<u8>>();
    let (eof_tx, eof_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (read_tx, read_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut body = [0u8; 12];
        s.read_exact(&mut body).unwrap();
        got_tx.send(body.to_vec()).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap(); // returns only at the client's FIN
        assert!(rest.is_empty(), "unexpected bytes {rest:?}");
        eof_tx.send(()).unwrap();
        go_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut reply = format!("got {} bytes: ", body.len()).into_bytes();
        reply.extend(body.iter().rev());
        s.write_all(&reply).unwrap();
        // Close only once the client has the reply: the FIN then travels alone.
        read_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    });

    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("half").tcp("http", np).yaml(),
            slices("half", "http", "TCP", &[backend]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);

    let mut c = connect(None, lo(np)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"request body").unwrap();
    assert_eq!(
        got_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the backend got nothing"),
        b"request body"
    );
    c.shutdown(Shutdown::Write).unwrap();
    eof_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the backend never saw the client's EOF");
    // Half-closed: the flow is tracked as FIN_WAIT while the reply is pending.
    let me = c.local_addr().unwrap().to_string();
    wait_for(SETTLE, "the flow to be FIN_WAIT", || {
        rows(&d.conntrack(), "tcp")
            .iter()
            .any(|r| r["client"] == me && r["state"] == "FIN_WAIT")
    });
    go_tx.send(()).unwrap();
    let want = "got 12 bytes: ydob tseuqer";
    let mut reply = vec![0u8; want.len()];
    c.read_exact(&mut reply)
        .expect("the reply after the half-close");
    assert_eq!(String::from_utf8_lossy(&reply), want);
    read_tx.send(()).unwrap();
    server.join().unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("EOF after the backend closed");
    assert!(rest.is_empty());
    wait_for(SETTLE, "the finished flow to leave conntrack", || {
        rows(&d.conntrack(), "tcp").is_empty()
    });
}

/// The usual request/response-and-close pattern, with no pause anywhere: a client that sends
/// its request and shuts down at once, a backend that answers and closes at once. Each side's
/// last data and its FIN may then reach the proxy together (the request's always do: both
/// are queued while the proxy is still connecting to the endpoint). The copy relay (every
/// direction starts by copy since 15a7a36) returns after a short read assuming "more data will
/// raise a new edge", but the FIN's edge was that same edge, so EOF is never read: the FIN is
/// not passed on and the backend waits for the end of the request forever (24 h idle timeout).
#[test]
fn fin_right_after_data_is_relayed_both_ways() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = Vec::new();
            let r = s.read_to_end(&mut got).map_err(|e| e.kind());
            outcomes.push(r.map(|_| got.clone()));
            let _ = s.write_all(b"response");
            // drop: the response and the FIN leave together
        }
        outcomes
    });
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("fin").tcp("http", np).yaml(),
            slices("fin", "http", "TCP", &[backend]),
        ]),
    );
    let _d = Daemon::start(m.path(), &LO_ONLY);
    let mut replies = Vec::new();
    for _ in 0..3 {
        let mut c = connect(None, lo(np)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(b"request").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        replies.push(
            c.read_to_end(&mut reply)
                .map(|_| reply)
                .map_err(|e| e.kind()),
        );
    }
    let outcomes = server.join().unwrap();
    let ok_requests = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(b) if b == b"request"))
        .count();
    let ok_replies = replies
        .iter()
        .filter(|r| matches!(r, Ok(b) if b == b"response"))
        .count();
    assert_eq!(
        (ok_requests, ok_replies),
        (3, 3),
        "requests whose FIN reached the backend, replies whose FIN reached the client:\n{outcomes:?}\n{replies:?}"
    );
}

fn bulk(relay: &str) {
    const SIZE: usize = 8 << 20;
    let b = TcpBackend::local("bulk");
    let np = node_port();
    let m = one_tcp_service("bulk", np, &b);
    let d = Daemon::start(
        m.path(),
        &["--nodeport-addresses", "127.0.0.0/8", "--relay", relay],
    );

    let data = pattern(SIZE, 0x5eed);
    let c = connect(None, lo(np)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = c.try_clone().unwrap();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(b"bulk\n").unwrap();
        w.write_all(&to_send).unwrap();
    });
    let mut got = vec![0u8; SIZE + 5];
    (&c).read_exact(&mut got).expect("read the echo");
    writer.join().expect("writer");
    assert!(got.starts_with(b"bulk\n"), "no backend id first");
    let echo = &got[5..];
    if let Some(i) = echo.iter().zip(&data).position(|(a, b)| a != b) {
        panic!("echo differs from what was sent at byte {i}");
    }
    // Close only now (see fin_right_after_data_is_relayed_both_ways): FIN both ways, nothing more.
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    (&c).read_to_end(&mut rest).expect("EOF after the echo");
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
    let labels = format!("service=\"{NS}/bulk\",port=\"http\",protocol=\"tcp\",node_port=\"{np}\"");
    let bytes_in = format!("nodeportd_bytes_total{{{labels},direction=\"in\"}}");
    let bytes_out = format!("nodeportd_bytes_total{{{labels},direction=\"out\"}}");
    wait_for(SETTLE, "byte counters to settle", || {
        d.metric(&bytes_in) == (SIZE + 5) as f64 && d.metric(&bytes_out) == (SIZE + 5) as f64
    });
}

#[test]
fn bulk_transfer_8mib_both_ways_splice() {
    bulk("splice");
}

#[test]
fn bulk_transfer_8mib_both_ways_copy() {
    bulk("copy");
}

#[test]
fn client_reset_resets_the_endpoint_side() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(&buf[..n]).unwrap();
        // Next: what the proxy does when the client aborts.
        s.read(&mut buf).map_err(|e| e.kind())
    });
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("rst").tcp("http", np).yaml(),
            slices("rst", "http", "TCP", &[backend]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);
    let mut c = connect(None, lo(np)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    // SO_LINGER 0: close() sends RST.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger struct on our own socket.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&c),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(c);
    let r = server.join().unwrap();
    assert_eq!(
        r,
        Err(std::io::ErrorKind::ConnectionReset),
        "the endpoint side was not reset"
    );
    wait_for(SETTLE, "the aborted flow to leave conntrack", || {
        rows(&d.conntrack(), "tcp").is_empty()
    });
    let active = format!("nodeportd_flows_active{{service=\"{NS}/rst\"");
    assert_eq!(d.metric(&active), 0.0);
}

#[test]
fn many_concurrent_flows_relay_correctly() {
    const CLIENTS: usize = 64;
    const SIZE: usize = 128 * 1024;
    let backends: Vec<TcpBackend> = ["a", "b"].iter().map(|id| TcpBackend::local(id)).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("many").tcp("http", np).yaml(),
            slices("many", "http", "TCP", &addrs),
        ]),
    );
    let d = Daemon::start(
        m.path(),
        &["--nodeport-addresses", "127.0.0.0/8", "--workers", "3"],
    );
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let data = pattern(SIZE, i as u64 + 1);
                let mut c = Conn::open(lo(np)).unwrap_or_else(|e| panic!("client {i}: {e}"));
                barrier.wait(); // all flows open at once
                let echo = c.echo(&data).unwrap_or_else(|e| panic!("client {i}: {e}"));
                assert!(echo == data, "client {i}: echo differs");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let series = format!("nodeportd_flows_total{{service=\"{NS}/many\"");
    assert_eq!(d.metric(&series), CLIENTS as f64);
    wait_for(SETTLE, "all flows to close", || {
        rows(&d.conntrack(), "tcp").is_empty()
    });
}
