//! A bounded fuzz pass over everything a user feeds in through manifests: random YAML and
//! JSON documents shaped like Services, EndpointSlices and Lists (plausible and wrong values,
//! wrong types, random annotations), some of them mangled byte-wise, go through parsing,
//! translation and frontend building. Nothing may panic; every error must name where it came
//! from (the file for parse errors, the Service for a rejected Service).
//!
//! Seeded and bounded in count and time, so a failure reproduces with its printed seed. It is
//! not coverage-guided: a structured generator standing in for cargo-fuzz, which needs a
//! nightly toolchain CI does not have.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::manifests;
use crate::model::store::Object;
use crate::model::translate::{self, ServiceOutcome};
use crate::model::NodeInfo;

/// Documents per run, and the wall-clock bound of the run.
const CASES: usize = 20_000;
const BUDGET: Duration = Duration::from_secs(20);

struct Gen(fastrand::Rng);

impl Gen {
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.0.usize(..from.len())]
    }

    fn chance(&mut self, percent: u8) -> bool {
        self.0.u8(..100) < percent
    }

    /// A scalar a user might write anywhere: numbers at the edges, strings Kubernetes gives
    /// meaning to, garbage.
    fn scalar(&mut self) -> Value {
        const STRINGS: &[&str] = &[
            "",
            "TCP",
            "UDP",
            "SCTP",
            "tcp",
            "http",
            "8080",
            "-1",
            "65536",
            "IPv4",
            "IPv6",
            "ClientIP",
            "None",
            "Local",
            "Cluster",
            "NodePort",
            "LoadBalancer",
            "ClusterIP",
            "ExternalName",
            "v2",
            "open",
            "closed",
            "198.18.0.2",
            "::1",
            "2001:db8::1",
            "198.18.0.0/15",
            "a, b,, c",
            "Bad Name",
            "\u{0}",
            "ü☃",
            "${x}",
            "0x10",
            "1e3",
        ];
        match self.0.u8(..6) {
            0 => json!(*self.pick(&[0i64, 1, -1, 80, 30000, 32767, 65535, 65536, i64::MAX])),
            1 => json!(self.0.i64(-70_000..70_000)),
            2 => json!(self.pick(&[true, false])),
            3 => Value::Null,
            4 => json!(self.0.f64() * 1e6),
            _ => json!(*self.pick(STRINGS)),
        }
    }

    /// A string from the scalars.
    fn string(&mut self) -> Value {
        loop {
            if let v @ Value::String(_) = self.scalar() {
                return v;
            }
        }
    }

    /// An integer from the scalars.
    fn int(&mut self) -> Value {
        loop {
            let v = self.scalar();
            if v.is_i64() {
                return v;
            }
        }
    }

    /// One of the values Kubernetes accepts, or now and then any string.
    fn usually(&mut self, valid: &[&str]) -> Value {
        if self.chance(80) {
            json!(*self.pick(valid))
        } else {
            self.string()
        }
    }

    fn flag(&mut self) -> Value {
        json!(self.chance(70))
    }

    /// A value for a field: usually of the right shape `good`, rarely anything at all (one
    /// wrong type rejects the whole file, which only exercises the parser's error path).
    fn field(&mut self, good: impl FnOnce(&mut Self) -> Value) -> Value {
        if self.chance(98) {
            good(self)
        } else if self.chance(50) {
            self.scalar()
        } else {
            json!([self.scalar(), {"x": self.scalar()}])
        }
    }

    fn object(&mut self, fields: Vec<(&str, Value)>) -> Value {
        let mut m = Map::new();
        for (k, v) in fields {
            if self.chance(90) {
                m.insert(k.to_string(), v);
            }
        }
        Value::Object(m)
    }

    fn metadata(&mut self, service: &str) -> Value {
        const ANNOTATIONS: &[&str] = &[
            "nodeportd.dev/plugins",
            "nodeportd.dev/config.pin",
            "nodeportd.dev/failure-policy",
            "nodeportd.dev/proxy-protocol",
            "nodeportd.dev/spread-udp",
            "service.kubernetes.io/topology-mode",
        ];
        let mut annotations = Map::new();
        for _ in 0..self.0.usize(..4) {
            let k = self.pick(ANNOTATIONS).to_string();
            annotations.insert(k, self.field(|g| g.string()));
        }
        let mut labels = json!({"kubernetes.io/service-name": service});
        if self.chance(10) {
            labels["service.kubernetes.io/headless"] = self.string();
        }
        let fields = vec![
            ("name", self.field(|_| json!(service))),
            (
                "namespace",
                self.field(|g| json!(*g.pick(&["fz", "", "Bad_NS"]))),
            ),
            ("annotations", Value::Object(annotations)),
            ("labels", labels),
        ];
        self.object(fields)
    }

    fn service(&mut self) -> Value {
        let ports: Vec<Value> = (0..self.0.usize(..4))
            .map(|_| {
                let fields = vec![
                    ("name", self.field(|g| g.string())),
                    (
                        "protocol",
                        self.field(|g| json!(*g.pick(&["TCP", "UDP", "SCTP"]))),
                    ),
                    ("port", self.field(|g| json!(g.0.i64(-2..70_000)))),
                    (
                        "targetPort",
                        self.field(|g| if g.chance(50) { g.int() } else { g.string() }),
                    ),
                    ("nodePort", self.field(|g| json!(g.0.i64(29_990..32_800)))),
                ];
                self.object(fields)
            })
            .collect();
        let spec = vec![
            (
                "type",
                self.field(|g| json!(*g.pick(&["NodePort", "LoadBalancer", "ClusterIP"]))),
            ),
            ("ports", json!(ports)),
            (
                "externalTrafficPolicy",
                self.field(|g| g.usually(&["Local", "Cluster"])),
            ),
            (
                "sessionAffinity",
                self.field(|g| g.usually(&["ClientIP", "None"])),
            ),
            (
                "sessionAffinityConfig",
                json!({"clientIP": {"timeoutSeconds": self.int()}}),
            ),
            (
                "ipFamilies",
                self.field(|g| json!([g.usually(&["IPv4", "IPv6"]), g.usually(&["IPv6"])])),
            ),
            ("healthCheckNodePort", self.field(|g| g.int())),
        ];
        let spec = self.object(spec);
        json!({"apiVersion": "v1", "kind": "Service", "metadata": self.metadata("svc"), "spec": spec})
    }

    fn slice(&mut self) -> Value {
        let endpoints: Vec<Value> = (0..self.0.usize(..4))
            .map(|_| {
                let fields = vec![
                    ("addresses", self.field(|g| json!([g.string()]))),
                    (
                        "conditions",
                        json!({"ready": self.flag(), "serving": self.flag(),
                        "terminating": self.flag()}),
                    ),
                    ("nodeName", self.field(|g| g.string())),
                    ("zone", self.field(|g| g.string())),
                ];
                self.object(fields)
            })
            .collect();
        let ports = json!([{"name": self.string(), "port": self.int(), "protocol": self.string()}]);
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": self.metadata("svc"), "addressType": self.field(|g| json!(*g.pick(&["IPv4", "IPv6", "FQDN"]))),
            "endpoints": endpoints, "ports": ports})
    }

    /// One manifest file: a few documents, as YAML or JSON, sometimes mangled.
    fn file(&mut self) -> String {
        let docs: Vec<Value> = (0..self.0.usize(1..4))
            .map(|_| match self.0.u8(..10) {
                0..=4 => self.service(),
                5..=8 => self.slice(),
                _ => json!({"apiVersion": "v1", "kind": "List", "items": [self.service(), self.slice()]}),
            })
            .collect();
        let mut text = if self.chance(70) {
            let yaml: Vec<String> = docs
                .iter()
                .filter_map(|d| serde_saphyr::to_string(d).ok())
                .collect();
            yaml.join("---\n")
        } else {
            docs.iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        if self.chance(20) && !text.is_empty() {
            let mut bytes = text.into_bytes();
            for _ in 0..self.0.usize(1..6) {
                let at = self.0.usize(..bytes.len());
                bytes[at] = *self.pick(b":-{}[]\"' \n\t#&*!|>%@`0");
            }
            if self.chance(30) {
                bytes.truncate(self.0.usize(..bytes.len()));
            }
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }
}

#[test]
fn random_manifests_never_panic_and_every_error_names_its_object() {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6e70_6431);
    let mut g = Gen(fastrand::Rng::with_seed(seed));
    let node = NodeInfo {
        name: "node-a".into(),
        zone: None,
    };
    let range = 30000..=32767;
    let (start, mut cases, mut parsed, mut served) = (Instant::now(), 0, 0, 0);
    while cases < CASES && start.elapsed() < BUDGET {
        cases += 1;
        let text = g.file();
        let objects = match manifests::parse("fuzz.yaml", &text) {
            Ok(objects) => objects,
            Err(e) => {
                assert!(
                    e.starts_with("fuzz.yaml: "),
                    "seed {seed} case {cases}: {e}"
                );
                continue;
            }
        };
        parsed += 1;
        let mut slices = Vec::new();
        let mut services = Vec::new();
        for o in &objects {
            match o {
                Object::Service(s) => services.push(translate::service(s, &range)),
                Object::EndpointSlice(s) => {
                    if let Ok(Some(slice)) = translate::endpoint_slice(s) {
                        slices.push(slice);
                    }
                }
            }
        }
        for outcome in services {
            match outcome {
                ServiceOutcome::Serve(svc, _) => {
                    served += 1;
                    let all: Vec<_> = slices.iter().collect();
                    let _ = crate::model::frontend::build(&svc, &all, &node);
                }
                ServiceOutcome::Invalid(e) => {
                    // Named, or (without a name) said to be the nameless one of its file.
                    let named = e.starts_with("Service ") || e.contains("has no metadata.name");
                    if std::env::var("FUZZ_VERBOSE").is_ok() {
                        eprintln!("invalid: {e}");
                    }
                    assert!(named, "seed {seed} case {cases}: {e}\n{text}");
                }
                ServiceOutcome::Ignore(why) => {
                    if std::env::var("FUZZ_VERBOSE").is_ok() {
                        eprintln!("ignored: {why}");
                    }
                }
            }
        }
    }
    eprintln!(
        "fuzz: seed {seed}: {cases} files in {:.1?}, {parsed} parsed, {served} Services served",
        start.elapsed()
    );
    assert!(
        parsed > cases / 4,
        "the generator must mostly make parseable files"
    );
    assert!(served > 0, "and some servable Services");
}
