//! Plugin setup runs off the flow path: an instance is made, configured and given its
//! endpoints on a setup thread, and the flows that need it wait (parked, bounded) while the
//! worker goes on with every other flow. A plugin spinning in `set-backends` therefore costs
//! its own Service's flows the setup deadline, and nobody else anything.

use nodeportd_e2e::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// With one worker and a 60 s setup deadline, a connection to the Service whose plugin spins
/// in `set-backends` waits, while the same worker serves a native Service and a Service with
/// another plugin (set up on the second setup thread). Set up inline on the worker, as it
/// was, the spin held every flow of the worker for the whole deadline.
#[test]
fn a_spinning_set_backends_does_not_delay_other_services_on_its_worker() {
    let backends: Vec<TcpBackend> = ["a", "b"].iter().map(|id| TcpBackend::local(id)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let (spinning, hashed, native) = (node_port(), node_port(), node_port());
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("spinning")
                .tcp("http", spinning)
                .plugins("spin-set-backends")
                .yaml(),
            slices("spinning", "http", "TCP", &addrs),
            Service::new("hashed")
                .tcp("http", hashed)
                .plugins("consistent-hash")
                .yaml(),
            slices("hashed", "http", "TCP", &addrs),
            Service::new("native").tcp("http", native).yaml(),
            slices("native", "http", "TCP", &addrs),
        ]),
    );
    let pd = PluginDir::with(&["hostile/spin-set-backends", "consistent-hash"]);
    let mut d = pd.start(&m, &["--workers", "1", "--plugin-setup-deadline", "60s"]);

    let mut stuck = TcpStream::connect(lo(spinning)).expect("connect");
    stuck.write_all(b"hello\n").expect("send");
    wait_for(SETTLE, "the plugin to spin in set-backends", || {
        d.log().contains("spinning in set-backends")
    });

    // The worker that holds the waiting connection serves everything else meanwhile.
    for i in 0..20 {
        who(lo(native)).unwrap_or_else(|e| panic!("native Service, connection {i}: {e}"));
        who(lo(hashed))
            .unwrap_or_else(|e| panic!("Service with a good plugin, connection {i}: {e}"));
    }
    assert_eq!(
        d.metric_with(
            "nodeportd_plugin_failures_total",
            &["service=\"e2e/hashed\""]
        ),
        0.0,
        "the good plugin did not fail"
    );

    // The spinning Service's connection is still waiting (not refused, not answered).
    stuck.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match stuck.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!(
            "the waiting connection was not parked: {other:?}\n{}",
            d.log()
        ),
    }
    assert!(d.alive(), "daemon died");
}

#[test]
fn a_datagram_waiting_for_its_plugin_setup_is_delivered() {
    let u1 = UdpBackend::local("u1");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("dns")
                .udp("dns", np)
                .plugins("consistent-hash")
                .fail_closed()
                .yaml(),
            slices("dns", "dns", "UDP", &[u1.addr()]),
        ]),
    );
    let pd = PluginDir::with(&["consistent-hash"]);
    let d = pd.start(&m, &[]);
    for i in 0..20 {
        // A fresh client each time: a new flow, and with a new handle on a worker that has
        // not configured it, a setup; no retries, so a lost datagram fails the test.
        let c = udp_client(lo(np), IO_TIMEOUT);
        c.send(format!("q{i}").as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = (c.recv(&mut buf)).unwrap_or_else(|e| panic!("request {i} lost: {e}\n{}", d.log()));
        assert_eq!(&buf[..n], format!("u1:q{i}").as_bytes());
    }
    assert_eq!(
        d.metric_with("nodeportd_flows_refused_total", &["service=\"e2e/dns\""]),
        0.0
    );
}

/// A flow waits for every setup its chain needs before any link decides on it, so no link
/// decides it twice. Here the rate limiter (two flows per client) comes first and the
/// selection plugin's setup spins until its deadline: datagrams that arrive meanwhile used to
/// run the rate limiter each (the third was denied, and the tuple with it); now the limiter
/// decides the flow once, after the setup failed, and every datagram is delivered (failure
/// policy open: the native default picks).
#[test]
fn a_waiting_flow_is_admitted_once_however_many_datagrams_wait() {
    let u1 = UdpBackend::local("u1");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("dns")
                .udp("dns", np)
                .plugins("rate-limit, spin-set-backends")
                .plugin_config("rate-limit", "rate=1/h,burst=2,per=client")
                .yaml(),
            slices("dns", "dns", "UDP", &[u1.addr()]),
        ]),
    );
    let pd = PluginDir::with(&["rate-limit", "hostile/spin-set-backends"]);
    let d = pd.start(&m, &["--workers", "1", "--plugin-setup-deadline", "1s"]);
    let c = udp_client(lo(np), IO_TIMEOUT);
    const SENT: usize = 6;
    for i in 0..SENT {
        c.send(format!("q{i}").as_bytes()).unwrap();
    }
    let mut got: Vec<String> = (0..SENT)
        .map(|i| {
            let mut buf = [0u8; 64];
            let n =
                (c.recv(&mut buf)).unwrap_or_else(|e| panic!("reply {i} lost: {e}\n{}", d.log()));
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .collect();
    got.sort();
    let want: Vec<String> = (0..SENT).map(|i| format!("u1:q{i}")).collect();
    assert_eq!(got, want);
    assert!(
        d.log().contains("spinning in set-backends"),
        "the selection plugin's setup was not the one waited for:\n{}",
        d.log()
    );
    assert_eq!(
        d.metric_with("nodeportd_flows_refused_total", &["service=\"e2e/dns\""]),
        0.0,
        "the rate limiter decided the flow more than once"
    );
    // The limiter counted exactly one flow: the client's second flow takes its second
    // token, the third finds the bucket empty and is refused (denied by the plugin).
    let second = udp_client(lo(np), IO_TIMEOUT);
    second.send(b"again").unwrap();
    let mut buf = [0u8; 64];
    let n = (second.recv(&mut buf)).unwrap_or_else(|e| {
        panic!(
            "the client's second flow was not admitted: {e}\n{}",
            d.log()
        )
    });
    assert_eq!(&buf[..n], b"u1:again");
    let third = udp_client(lo(np), IO_TIMEOUT);
    third.send(b"once more").unwrap();
    let denied = ["service=\"e2e/dns\"", "reason=\"denied\""];
    wait_for(SETTLE, "the client's third flow to be denied", || {
        d.metric_with("nodeportd_flows_refused_total", &denied) == 1.0
    });
}
