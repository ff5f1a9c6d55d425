//! The control plane stays responsive and quiet: a plugin whose `configure` never returns,
//! named by many Services, plus anyone listing and reading the plugin directory, does not
//! hold up an unrelated Service's endpoint change; an idle daemon (one manifest file, or the
//! whole nodePort range as 2,768 files, or plugins in use) uses no measurable CPU while
//! others read its files.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeportd_e2e::*;

/// Services that name the hostile plugin, each with its own config (so each is a probe of
/// its own: 30 x the 100 ms setup deadline, 3 s, if they ran one after another in the way).
const HOSTILE: usize = 30;
/// An endpoint change must apply within this: far below 30 x 100 ms, so it proves that the
/// change did not wait behind the probes (it is not a speed measurement: it applies in
/// milliseconds when nothing is in its way).
const PROMPT: Duration = Duration::from_millis(1000);

/// Lists and reads every file of `dir` (what `ls`, `cat` or a monitoring agent do).
fn read_all(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::read(e.path());
        }
    }
}

/// A thread that reads `dir` in rounds (bounded: `rounds`, 20 ms apart) until stopped.
struct Reader {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(dir: &Path, rounds: usize) -> Reader {
        let (stop, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, n, dir) = (stop.clone(), done.clone(), dir.to_path_buf());
        let thread = std::thread::spawn(move || {
            for _ in 0..rounds {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                read_all(&dir);
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(STEP);
            }
        });
        Reader {
            stop,
            done,
            thread: Some(thread),
        }
    }

    fn rounds(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the daemon with `web` (endpoint a) and 30 Services that name `plugin` (each its
/// own config), lets someone read the plugin directory over and over, moves `web` to
/// endpoint b and returns how long until new connections went to b, with the daemon.
fn endpoint_change_beside(built: &str) -> (Duration, Daemon) {
    let plugin = built.rsplit('/').next().unwrap_or(built);
    let (a, b) = (TcpBackend::local("a"), TcpBackend::local("b"));
    let web = node_port();
    let m = Manifests::new();
    let mut parts = vec![
        Service::new("web").tcp("http", web).yaml(),
        slices("web", "http", "TCP", &[a.addr()]),
    ];
    for i in 0..HOSTILE {
        let name = format!("named-{i}");
        parts.push(
            Service::new(&name)
                .tcp("http", node_port())
                .plugins(plugin)
                .plugin_config(plugin, &format!("config {i}"))
                .yaml(),
        );
        parts.push(slices(&name, "http", "TCP", &[a.addr()]));
    }
    m.write("named.yaml", &docs(&parts[2..]));
    m.write("web.yaml", &docs(&parts[..2]));
    let pd = PluginDir::with(&[built]);
    let d = pd.start(&m, &[]);
    wait_for(SETTLE, "web to serve from a", || {
        who(lo(web)).is_ok_and(|id| id == "a")
    });

    // Someone lists and reads the plugin directory over and over meanwhile.
    let reader = Reader::start(pd.path(), 500);
    wait_for(SETTLE, "a few rounds of reading the plugin dir", || {
        reader.rounds() >= 3
    });
    m.write(
        "web.yaml",
        &docs(&[parts[0].clone(), slices("web", "http", "TCP", &[b.addr()])]),
    );
    let t0 = Instant::now();
    let applied = wait_until(SETTLE, || who(lo(web)).is_ok_and(|id| id == "b"));
    let took = t0.elapsed();
    assert!(applied, "the endpoint change never applied");
    (took, d)
}

#[test]
fn a_hanging_configure_and_readers_of_the_plugin_dir_do_not_delay_an_endpoint_change() {
    let (took, d) = endpoint_change_beside("hostile/hang-configure");
    eprintln!("hanging configure: endpoint change applied after {took:?} (bound {PROMPT:?})");
    assert!(
        took < PROMPT,
        "the endpoint change waited behind plugin probes: {took:?}"
    );
    // The Services naming it are refused (and keep the native default), reported by name.
    wait_for(SETTLE, "the hanging configure to be reported", || {
        let log = d.log();
        log.contains("named-0") && log.contains("failed in configure")
    });
}

/// The same with a plugin that accepts every config: the baseline (printed, not compared:
/// no assertion on speed beyond the functional bound).
#[test]
fn a_valid_plugin_beside_an_endpoint_change_is_the_baseline() {
    let (took, d) = endpoint_change_beside("consistent-hash");
    eprintln!("valid plugin: endpoint change applied after {took:?} (bound {PROMPT:?})");
    assert!(took < PROMPT, "the endpoint change took {took:?}");
    assert!(!d.log().contains("not applied"), "{}", d.log());
}

/// The daemon's CPU time (user + system) in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Waits (bounded) until the daemon has been idle for a half second, then returns the CPU
/// ticks it used over `window` while the test reads `dir` every 100 ms.
fn idle_ticks(d: &Daemon, dir: &Path, window: Duration) -> u64 {
    let mut last = cpu_ticks(d.pid());
    let settled = wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = cpu_ticks(d.pid());
        std::mem::replace(&mut last, now) == now
    });
    assert!(settled, "the daemon never went idle after start");
    let start = cpu_ticks(d.pid());
    let t0 = Instant::now();
    while t0.elapsed() < window {
        read_all(dir);
        std::thread::sleep(Duration::from_millis(100));
    }
    cpu_ticks(d.pid()) - start
}

/// 5 s of idling; a tick is 10 ms, so 2 ticks are 0.4% of a core (the daemon woke on its own
/// reads before: 6 ticks in 10 s with one file, 233 with 2,768).
const WINDOW: Duration = Duration::from_secs(5);

#[test]
fn an_idle_daemon_with_one_manifest_uses_no_cpu_while_others_read_it() {
    let b = TcpBackend::local("b");
    let np = node_port();
    let m = one_tcp_service("idle", np, &b);
    let d = Daemon::start(m.path(), &LO_ONLY);
    let ticks = idle_ticks(&d, m.path(), WINDOW);
    eprintln!("one manifest: {ticks} ticks of CPU in {WINDOW:?}");
    assert!(
        ticks <= 2,
        "an idle daemon used {ticks} ticks in {WINDOW:?}"
    );
}

#[test]
fn an_idle_daemon_with_2768_manifests_uses_no_cpu_while_others_read_them() {
    // The whole range as its own 2,768 nodePorts, outside the range tests take nodePorts
    // from: one Service per file, TCP and UDP, four endpoints never contacted.
    const BASE: u16 = 20000;
    const FILES: u16 = 2768;
    let m = Manifests::new();
    for i in 0..FILES {
        let name = format!("s{i}");
        let eps: Vec<Ep> = (0..4)
            .map(|j| Ep::ready(format!("198.18.254.{}", j + 1).parse().expect("ip")))
            .collect();
        m.write(
            &format!("{name}.yaml"),
            &docs(&[
                Service::new(&name)
                    .tcp("tcp", BASE + i)
                    .udp("udp", BASE + i)
                    .yaml(),
                slice(&format!("{name}-t"), &name, "tcp", "TCP", 8080, &eps),
                slice(&format!("{name}-u"), &name, "udp", "UDP", 8080, &eps),
            ]),
        );
    }
    let range = format!("{BASE}-{}", BASE + FILES - 1);
    let d = Daemon::start(
        m.path(),
        &[
            "--nodeport-addresses",
            "127.0.0.0/8",
            "--nodeport-range",
            &range,
        ],
    );
    let ticks = idle_ticks(&d, m.path(), WINDOW);
    eprintln!("2,768 manifests: {ticks} ticks of CPU in {WINDOW:?}");
    assert!(
        ticks <= 5,
        "an idle daemon used {ticks} ticks in {WINDOW:?}"
    );
}

/// With plugins in use the daemon idles too: the epoch clock that enforces plugin deadlines
/// parks once no plugin runs (it ticked 1,000 times a second before, 43 ticks of CPU in 20 s,
/// 2% of a core, all day). A plugin that loops is still interrupted at its deadline on the
/// first flow after the idle spell: the flow wakes the clock.
#[test]
fn an_idle_daemon_with_plugins_uses_no_cpu_and_wakes_for_the_next_flow() {
    let b = TcpBackend::local("b");
    let (hashed, spinning) = (node_port(), node_port());
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("hashed")
                .tcp("http", hashed)
                .plugins("consistent-hash")
                .yaml(),
            slices("hashed", "http", "TCP", &[b.addr()]),
            Service::new("spinning")
                .tcp("http", spinning)
                .plugins("spin")
                .yaml(),
            slices("spinning", "http", "TCP", &[b.addr()]),
        ]),
    );
    let pd = PluginDir::with(&["consistent-hash", "hostile/spin"]);
    let d = pd.start(&m, &LO_ONLY);
    let deadlines = || {
        d.metric_with(
            "nodeportd_plugin_failures_total",
            &["service=\"e2e/spinning\"", "kind=\"deadline\""],
        )
    };
    // Instances made and called, then left alone.
    for i in 0..10 {
        who(lo(hashed)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    assert_eq!(who(lo(spinning)).expect("served after the deadline"), "b");
    wait_for(SETTLE, "the first deadline counted", || deadlines() >= 1.0);
    let ticks = idle_ticks(&d, pd.path(), WINDOW);
    eprintln!("plugins in use: {ticks} ticks of CPU in {WINDOW:?}");
    assert!(
        ticks <= 2,
        "an idle daemon with plugins used {ticks} ticks in {WINDOW:?}"
    );
    // After the idle spell the spinning plugin's call (its instance is live: no setup runs
    // first) is interrupted at its deadline, and the failure policy, open, serves the flow
    // natively; a clock left asleep would hang the call and the worker with it.
    assert_eq!(who(lo(spinning)).expect("served after the deadline"), "b");
    wait_for(SETTLE, "the second deadline counted", || deadlines() >= 2.0);
    assert_eq!(who(lo(hashed)).expect("the good plugin still serves"), "b");
}
