//! A hot UDP nodePort with several clients (not criterion): the release daemon with 1 worker,
//! then with 2 workers and the Service annotated `nodeportd.dev/spread-udp: "true"`, each fed
//! by the same senders for the same time. Reports datagrams delivered per second to the
//! endpoint, loss, the daemon's CPU per delivered datagram and how that CPU splits over the
//! worker threads.
//!
//! `cargo bench -p nodeportd-benches --bench udp_spread -- [seconds [datagrams/s offered]]`
//! (defaults 5 and 200,000; build the release
//! daemon first). Senders, daemon and endpoint share this machine's cores, as on a node where
//! the endpoints run beside the proxy; traffic stays on 127.0.0.0/8.

#[allow(dead_code)] // shared by the benches
mod daemon;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SENDERS: u8 = 4;
const PAYLOAD: usize = 64;
const NODE_PORT: u16 = 30053;

fn set_rcvbuf(s: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: setsockopt with a valid c_int on an open socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn manifests(dir: &Path, endpoint: u16, spread: bool) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("manifests dir");
    let annotations = if spread {
        "  annotations:\n    nodeportd.dev/spread-udp: \"true\"\n"
    } else {
        ""
    };
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: hot\n  namespace: bench\n{annotations}spec:\n  type: NodePort\n  ports:\n  - {{name: dns, protocol: UDP, port: 53, targetPort: {endpoint}, nodePort: {NODE_PORT}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: hot-1\n  namespace: bench\n  labels: {{kubernetes.io/service-name: hot}}\naddressType: IPv4\nports:\n- {{name: dns, protocol: UDP, port: {endpoint}}}\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
    );
    std::fs::write(dir.join("hot.yaml"), text).expect("write manifests");
}

/// Client addresses 127.0.0.x, half steered to each of two workers, so both runs see the
/// same clients and the spread run can use both workers.
fn clients() -> Vec<Ipv4Addr> {
    let mut per = [Vec::new(), Vec::new()];
    for x in 2..=250u8 {
        let ip = Ipv4Addr::new(127, 0, 0, x);
        let w = nodeportd::dataplane::steer::member_of(ip.into(), 2) as usize;
        if per[w].len() < usize::from(SENDERS) / 2 {
            per[w].push(ip);
        }
    }
    per.concat()
}

/// utime + stime of every thread of `pid` named like a worker (in thread-id order, so worker
/// 0 first), and of the whole process, in clock ticks.
fn cpu_ticks(pid: u32) -> (Vec<u64>, u64) {
    let fields = |stat: &str| -> Option<(String, u64)> {
        let (comm, rest) = stat.split_once(") ")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((comm.rsplit_once('(')?.1.to_string(), t))
    };
    let mut tasks: Vec<(u32, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let tid: u32 = e.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                    let (comm, t) = fields(&stat)?;
                    comm.starts_with("nodeportd-work").then_some((tid, t))
                })
                .collect()
        })
        .unwrap_or_default();
    tasks.sort_unstable();
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| fields(&s))
        .map_or(0, |(_, t)| t);
    (tasks.into_iter().map(|(_, t)| t).collect(), total)
}

struct Outcome {
    sent: u64,
    delivered: u64,
    secs: f64,
    worker_ticks: Vec<u64>,
    total_ticks: u64,
}

fn run(workers: usize, spread: bool, seconds: u64, offered: u64) -> Outcome {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("sink");
    set_rcvbuf(&sink, 16 << 20);
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let endpoint = sink.local_addr().unwrap().port();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (delivered, stop) = (delivered.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if sink.recv(&mut buf).is_ok() {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let dir = std::env::temp_dir().join(format!("nodeportd-udp-spread-{}", std::process::id()));
    manifests(&dir, endpoint, spread);
    let admin = "127.0.0.1:10393";
    let w = workers.to_string();
    let d = daemon::Daemon::start(&dir, admin, &["--workers", &w], Duration::from_secs(60))
        .expect("daemon");
    let target = SocketAddr::from(([127, 0, 0, 1], NODE_PORT));
    // Each client's flow exists before the clock starts.
    let socks: Vec<UdpSocket> = clients()
        .into_iter()
        .map(|ip| {
            let s = UdpSocket::bind((ip, 0)).expect("bind client");
            s.connect(target).expect("connect");
            s.send(&[0u8; PAYLOAD]).expect("first datagram");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    delivered.store(0, Ordering::Relaxed);
    let (wb, before) = cpu_ticks(d.pid());
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(seconds);
    // Each sender paces itself to its share of `offered`, in bursts of 32 every so often.
    let gap = Duration::from_secs_f64(32.0 * f64::from(SENDERS) / offered.max(1) as f64);
    let senders: Vec<_> = socks
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                let buf = [7u8; PAYLOAD];
                let mut sent = 0u64;
                let mut next = Instant::now();
                // Bounded in time and in count.
                while sent < 50_000_000 && Instant::now() < deadline {
                    for _ in 0..32 {
                        sent += u64::from(s.send(&buf).is_ok());
                    }
                    next += gap;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                sent
            })
        })
        .collect();
    let sent: u64 = senders.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    let secs = t0.elapsed().as_secs_f64();
    // Let what is queued drain into the sink before counting.
    std::thread::sleep(Duration::from_millis(500));
    let (wa, after) = cpu_ticks(d.pid());
    let got = delivered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = counter.join();
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        sent,
        delivered: got,
        secs,
        // The workers exist from the start: the same threads in the same order.
        worker_ticks: wa.iter().zip(&wb).map(|(a, b)| a - b).collect(),
        total_ticks: after - before,
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(5).clamp(1, 60);
    let offered = args
        .get(1)
        .copied()
        .unwrap_or(200_000)
        .clamp(1_000, 2_000_000);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    println!(
        "udp spread: {SENDERS} clients x {PAYLOAD}-byte datagrams to one UDP nodePort, {offered}/s offered, {seconds} s per run, release daemon"
    );
    let mut rates = Vec::new();
    for (workers, spread) in [(1, false), (2, true), (1, false), (2, true)] {
        let o = run(workers, spread, seconds, offered);
        let rate = o.delivered as f64 / o.secs;
        let loss = 100.0 * (1.0 - o.delivered as f64 / o.sent.max(1) as f64);
        let cpu_us = o.total_ticks as f64 / hz * 1e6 / o.delivered.max(1) as f64;
        let split: Vec<String> = o
            .worker_ticks
            .iter()
            .map(|t| format!("{:.0}%", *t as f64 / hz / o.secs * 100.0))
            .collect();
        println!(
            "workers {workers} spread {spread:<5}  delivered {rate:>10.0}/s  offered {:>10.0}/s  loss {loss:>5.1}%  daemon CPU {cpu_us:.2} us/datagram  per worker [{}] of a core",
            o.sent as f64 / o.secs,
            split.join(", ")
        );
        rates.push((workers, rate));
    }
    let mean = |w: usize| {
        let r: Vec<f64> = rates
            .iter()
            .filter(|(n, _)| *n == w)
            .map(|(_, r)| *r)
            .collect();
        r.iter().sum::<f64>() / r.len().max(1) as f64
    };
    println!(
        "delivered, 2 workers spread / 1 worker: {:.2}x",
        mean(2) / mean(1)
    );
}
