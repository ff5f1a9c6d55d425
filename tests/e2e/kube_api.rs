//! The Kubernetes API as the source, against a real kube-apiserver (v1.20.2 over etcd, built
//! by scripts/kube-apiserver.sh; EndpointSlice v1 by a CRD stand-in): Services and
//! EndpointSlices written through the API take effect on real nodePorts; the API server
//! killed, changed behind the daemon's back and etcd compacted (the next watch gets 410 Gone)
//! under a steady stream of connections fails none of them, and the changes apply when it is
//! back; plugins come by ConfigMap and are swapped; a refused plugin config becomes an Event
//! on the Service; and all of it works with the deploy/ ClusterRole's permissions only,
//! which refuse what nodeportd does not need.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeportd_e2e::*;

/// An EndpointSlice `name` of Service `svc` with one ready endpoint, the backend `b`.
fn slice_to(name: &str, svc: &str, b: &TcpBackend) -> String {
    let a = b.addr();
    slice(name, svc, "http", "TCP", a.port(), &[Ep::ready(a.ip())])
}

/// The ids of the backends that answered `n` new connections.
fn answers(np: u16, n: usize) -> Vec<String> {
    (0..n).filter_map(|_| who(lo(np)).ok()).collect()
}

/// An API server holding Service web (its nodePort returned) with one slice, web-a, to
/// backend a; backend b is up but not in it.
fn web_on_a() -> (ApiServer, u16, TcpBackend, TcpBackend) {
    let api = ApiServer::start();
    let (a, b) = (TcpBackend::local("a"), TcpBackend::local("b"));
    let np = node_port();
    api.apply(
        Kind::Service,
        "web",
        &Service::new("web").tcp("http", np).yaml(),
    );
    api.apply(Kind::EndpointSlice, "web-a", &slice_to("web-a", "web", &a));
    (api, np, a, b)
}

fn start_daemon(api: &ApiServer, token: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--nodeport-addresses", "127.0.0.0/8"];
    args.extend_from_slice(extra);
    Daemon::start_kube(&api.kubeconfig(token), &args)
}

#[test]
fn services_and_slices_written_through_the_api_take_effect_on_real_node_ports() {
    let (api, np, a, b) = web_on_a();
    // Another proxy's Service is not ours (kube-proxy's service-proxy-name rule).
    let theirs = node_port();
    let labelled = Service::new("theirs").tcp("http", theirs).yaml().replace(
        "  namespace: e2e\n",
        "  namespace: e2e\n  labels:\n    service.kubernetes.io/service-proxy-name: other\n",
    );
    api.apply(Kind::Service, "theirs", &labelled);
    api.apply(
        Kind::EndpointSlice,
        "theirs-a",
        &slice_to("theirs-a", "theirs", &a),
    );

    let d = start_daemon(&api, ADMIN_TOKEN, &[]);
    assert_eq!(answers(np, 5), ["a"; 5], "{}", d.log());
    assert!(
        refused(&who(lo(theirs))),
        "a Service of another proxy is served"
    );

    // A second slice, then the first deleted: the endpoint set follows the API.
    api.apply(Kind::EndpointSlice, "web-b", &slice_to("web-b", "web", &b));
    wait_for(Duration::from_secs(10), "b takes flows too", || {
        answers(np, 20).iter().any(|id| id == "b")
    });
    api.delete(Kind::EndpointSlice, "web-a");
    wait_for(Duration::from_secs(10), "only b takes flows", || {
        answers(np, 10) == ["b"; 10]
    });

    // The Service moves to another nodePort, then goes.
    let moved = node_port();
    api.apply(
        Kind::Service,
        "web",
        &Service::new("web").tcp("http", moved).yaml(),
    );
    wait_for(
        Duration::from_secs(10),
        "served on the new nodePort only",
        || who(lo(moved)).is_ok_and(|id| id == "b") && refused(&who(lo(np))),
    );
    api.delete(Kind::Service, "web");
    wait_for(Duration::from_secs(10), "the nodePort closes", || {
        refused(&who(lo(moved)))
    });
    let (status, body) = http_get(d.health(), "/healthz").expect("/healthz");
    assert_eq!(status, 200);
    let h: serde_json::Value = serde_json::from_str(&body).expect("kube-proxy's JSON");
    assert!(
        h["lastUpdated"].is_string() && h["currentTime"].is_string(),
        "{body}"
    );
    assert_eq!(d.metric("nodeportd_source_connected"), 1.0);
}

/// Opens connections to `np` one after another until told to stop (bounded: 3 minutes and
/// 200,000 connections), counting successes and failures.
struct Steady {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    last_error: Arc<std::sync::Mutex<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Steady {
    fn start(target: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let last_error = Arc::new(std::sync::Mutex::new(String::new()));
        let (s, o, f, e) = (stop.clone(), ok.clone(), failed.clone(), last_error.clone());
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(180);
            for _ in 0..200_000 {
                if s.load(Ordering::Relaxed) || Instant::now() > until {
                    return;
                }
                match who(target) {
                    Ok(_) => o.fetch_add(1, Ordering::Relaxed),
                    Err(err) => {
                        *e.lock().unwrap_or_else(|p| p.into_inner()) = err.to_string();
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            ok,
            failed,
            last_error,
            thread: Some(thread),
        }
    }

    /// Stops and returns (succeeded, failed, last error).
    fn finish(mut self) -> (usize, usize, String) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let e = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            e,
        )
    }
}

impl Drop for Steady {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_api_outage_with_compaction_fails_no_connection_and_changes_made_meanwhile_apply() {
    let (mut api, np, _a, b) = web_on_a(); // a serves until the change
    let d = start_daemon(&api, ADMIN_TOKEN, &[]);
    assert_eq!(answers(np, 3), ["a"; 3], "{}", d.log());
    let steady = Steady::start(lo(np));
    wait_for(Duration::from_secs(10), "steady connections flow", || {
        steady.ok.load(Ordering::Relaxed) >= 20
    });

    // The daemon's API server goes away; a second one over the same etcd takes the changes.
    api.start_second();
    api.kill_apiserver();
    wait_for(Duration::from_secs(15), "the outage is seen", || {
        d.metric("nodeportd_source_connected") == 0.0
    });
    assert_eq!(http_get(d.health(), "/readyz").expect("/readyz").0, 200);
    api.apply(Kind::EndpointSlice, "web-b", &slice_to("web-b", "web", &b));
    api.delete(Kind::EndpointSlice, "web-a");
    let other = node_port();
    api.apply(
        Kind::Service,
        "late",
        &Service::new("late").tcp("http", other).yaml(),
    );
    api.apply(
        Kind::EndpointSlice,
        "late-b",
        &slice_to("late-b", "late", &b),
    );
    api.compact();
    // Still the last known state: a keeps taking flows, the new Service is not served yet.
    assert_eq!(answers(np, 5), ["a"; 5]);
    assert!(refused(&who(lo(other))));
    let (_, body) = http_get(d.health(), "/healthz").expect("/healthz");
    wait_for(
        Duration::from_secs(10),
        "/healthz shows the data growing stale",
        || {
            http_get(d.health(), "/healthz")
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|h| h["stale"].as_u64())
                .is_some_and(|s| s >= 2)
        },
    );

    api.start_apiserver();
    wait_for(
        Duration::from_secs(90),
        "the changes apply once it is back",
        || answers(np, 10) == ["b"; 10] && who(lo(other)).is_ok_and(|id| id == "b"),
    );
    wait_for(Duration::from_secs(10), "connected again", || {
        d.metric("nodeportd_source_connected") == 1.0
    });
    // The compaction made the watches list again (410 Gone), not just resume.
    let log = d.log();
    assert!(
        log.contains("watch listed again"),
        "no re-list after the outage:\n{log}"
    );
    let (ok, failed, last) = steady.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed (last: {last})\n/healthz during the outage: {body}\n{}",
        ok + failed,
        d.log()
    );
    assert!(ok > 100, "only {ok} connections ran");
}

#[test]
fn a_plugin_delivered_by_configmap_is_used_and_swapped() {
    let api = ApiServer::start();
    let (a, b) = (TcpBackend::local("a"), TcpBackend::local("b"));
    let np = node_port();
    let pin = std::fs::read(built_plugin("fixtures/pin")).expect("pin");
    let hash = std::fs::read(built_plugin("consistent-hash")).expect("consistent-hash");
    api.apply_in(
        "kube-system",
        Kind::ConfigMap,
        "plugins",
        &plugin_configmap("plugins", &[("policy", &pin)]),
    );
    let svc = Service::new("web")
        .tcp("http", np)
        .plugins("policy")
        .plugin_config("policy", &format!("port={}", a.addr().port()));
    api.apply(Kind::Service, "web", &svc.yaml());
    api.apply(Kind::EndpointSlice, "web-a", &slice_to("web-a", "web", &a));
    api.apply(Kind::EndpointSlice, "web-b", &slice_to("web-b", "web", &b));
    let dir = tempfile::tempdir().expect("plugin dir");
    let d = start_daemon(
        &api,
        ADMIN_TOKEN,
        &["--plugin-dir", dir.path().to_str().expect("utf-8")],
    );
    // Ready means the plugin from the ConfigMap is in force: pin sends every flow to a.
    assert_eq!(answers(np, 20), ["a"; 20], "{}", d.log());

    // Swapped in the ConfigMap for consistent-hash (no config): flows spread over a and b.
    api.apply_in(
        "kube-system",
        Kind::ConfigMap,
        "plugins",
        &plugin_configmap("plugins", &[("policy", &hash)]),
    );
    wait_for(
        Duration::from_secs(20),
        "the swapped plugin spreads flows",
        || {
            let ids = answers(np, 30);
            ids.iter().any(|i| i == "a") && ids.iter().any(|i| i == "b")
        },
    );
    assert!(dir.path().join("policy.wasm").is_file());

    // A second ConfigMap's plugin, then the daemon dies and that ConfigMap is deleted while
    // it is down (the directory, an emptyDir, outlives the container): the restarted daemon
    // removes its file, and keeps the live one's and a file placed by hand.
    api.apply_in(
        "kube-system",
        Kind::ConfigMap,
        "extra",
        &plugin_configmap("extra", &[("extra", &pin)]),
    );
    let extra = dir.path().join("extra.wasm");
    wait_for(SETTLE, "the second ConfigMap's plugin file", || {
        extra.is_file()
    });
    let hand = dir.path().join("hand.wasm");
    std::fs::write(&hand, &pin).expect("write a plugin by hand");
    drop(d);
    api.delete_in("kube-system", Kind::ConfigMap, "extra");
    let d = start_daemon(
        &api,
        ADMIN_TOKEN,
        &["--plugin-dir", dir.path().to_str().expect("utf-8")],
    );
    wait_for(
        SETTLE,
        "the file of the ConfigMap deleted while the daemon was down to go",
        || !extra.exists(),
    );
    assert!(hand.is_file(), "a file placed by hand is never touched");
    assert!(dir.path().join("policy.wasm").is_file(), "{}", d.log());
    assert!(answers(np, 30).iter().any(|i| i == "b"), "{}", d.log());

    // The ConfigMap deleted: its file goes (the Service keeps the loaded version).
    api.delete_in("kube-system", Kind::ConfigMap, "plugins");
    wait_for(
        Duration::from_secs(10),
        "the plugin file goes with its ConfigMap",
        || !dir.path().join("policy.wasm").exists(),
    );
}

/// The first Event of the test namespace with `reason`, waited for (bounded) while `meanwhile`
/// runs between polls.
fn event(api: &ApiServer, reason: &str, mut meanwhile: impl FnMut()) -> serde_json::Value {
    let mut found = None;
    wait_for(Duration::from_secs(20), reason, || {
        meanwhile();
        let list: serde_json::Value =
            serde_json::from_str(&api.get("/apis/events.k8s.io/v1/namespaces/e2e/events").1)
                .unwrap_or_default();
        found = list["items"]
            .as_array()
            .and_then(|items| items.iter().find(|e| e["reason"] == reason).cloned());
        found.is_some()
    });
    found.expect("the event")
}

/// The deploy/ RBAC objects, applied one by one.
fn apply_deploy_rbac(api: &ApiServer) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml"))
        .expect("deploy/rbac.yaml");
    for doc in text.split("\n---").filter(|d| d.contains("kind:")) {
        api.create_any(doc);
    }
}

#[test]
fn with_the_deploy_cluster_role_only_it_serves_and_events_name_refused_and_disabled_plugins() {
    let api = ApiServer::start();
    apply_deploy_rbac(&api);
    let a = TcpBackend::local("a");
    let np = node_port();
    let refused_np = node_port();
    let trapped_np = node_port();
    // A plugin that traps on every select: disabled by backoff (failure policy open).
    let trapped = Service::new("trapped")
        .tcp("http", trapped_np)
        .plugins("trap");
    api.apply(Kind::Service, "trapped", &trapped.yaml());
    api.apply(
        Kind::EndpointSlice,
        "trapped-a",
        &slice_to("trapped-a", "trapped", &a),
    );
    api.apply(
        Kind::Service,
        "web",
        &Service::new("web").tcp("http", np).yaml(),
    );
    api.apply(Kind::EndpointSlice, "web-a", &slice_to("web-a", "web", &a));
    let bad = Service::new("strict")
        .tcp("http", refused_np)
        .plugins("source-ranges")
        .plugin_config("source-ranges", "198.18.0.0/33");
    api.apply(Kind::Service, "strict", &bad.yaml());
    api.apply(
        Kind::EndpointSlice,
        "strict-a",
        &slice_to("strict-a", "strict", &a),
    );
    api.apply_in(
        "kube-system",
        Kind::ConfigMap,
        "plugins",
        &plugin_configmap(
            "plugins",
            &[
                (
                    "source-ranges",
                    &std::fs::read(built_plugin("source-ranges")).expect("source-ranges"),
                ),
                (
                    "trap",
                    &std::fs::read(built_plugin("hostile/trap")).expect("trap"),
                ),
            ],
        ),
    );
    let dir = tempfile::tempdir().expect("plugin dir");
    let d = start_daemon(
        &api,
        SA_TOKEN,
        &["--plugin-dir", dir.path().to_str().expect("utf-8")],
    );
    assert_eq!(answers(np, 5), ["a"; 5], "{}", d.log());
    // The refused config leaves the native default serving, and says so on the Service.
    assert_eq!(answers(refused_np, 3), ["a"; 3]);
    let ev = event(&api, "PluginNotApplied", || ());
    assert_eq!(ev["regarding"]["kind"], "Service");
    assert_eq!(ev["regarding"]["name"], "strict");
    assert!(
        ev["regarding"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "{ev}"
    );
    assert_eq!(ev["type"], "Warning");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("source-ranges") && note.contains("198.18.0.0/33"),
        "{note}"
    );
    // Every flow of the trapping plugin's Service is still served (open policy) until the
    // plugin is disabled, which the Service's Events say.
    let ev = event(&api, "PluginDisabled", || {
        assert_eq!(answers(trapped_np, 5), ["a"; 5]);
    });
    assert_eq!(ev["regarding"]["name"], "trapped");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(note.contains("plugin trap disabled"), "{note}");
    assert!(!d.log().contains("cannot publish the Event"), "{}", d.log());

    // The same identity is refused what nodeportd does not need.
    for (method, path) in [
        ("DELETE", "/api/v1/namespaces/e2e/services/web"),
        ("GET", "/api/v1/namespaces/kube-system/secrets"),
        ("GET", "/api/v1/namespaces/e2e/configmaps"),
        ("POST", "/api/v1/namespaces/e2e/pods"),
    ] {
        let (code, body) = api.request_as(SA_TOKEN, method, path, "application/json", "{}");
        assert_eq!(
            code, 403,
            "{method} {path} allowed to nodeportd's ServiceAccount: {body}"
        );
    }
}
