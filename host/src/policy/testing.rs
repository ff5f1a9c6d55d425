//! Test fixtures for policies: endpoints, flows, a worker state, and scripted plugin calls
//! (what each plugin role answers), so the seam is tested without sockets or WASM.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::plugins::PluginCalls;
use super::{FlowInfo, PolicyState};
use crate::model::{Backend, FailurePolicy, Family, FrontendKey, Protocol};
use crate::plugin::wire::types;
use crate::plugin::{Chain, FailureKind};

/// `n` ready endpoints 198.19.0.i:8080.
pub fn backends(n: u8) -> Arc<[Backend]> {
    (0..n)
        .map(|i| Backend::ready(SocketAddr::from(([198, 19, 0, i + 1], 8080))))
        .collect()
}

/// Flow number `i` from client 198.18.0.i:40000 on TCP nodePort 30080.
pub fn flow(i: u8) -> FlowInfo {
    FlowInfo::new(
        0,
        i as u64,
        FrontendKey {
            protocol: Protocol::Tcp,
            node_port: 30080,
        },
        SocketAddr::from(([198, 18, 0, i], 40000)),
        SocketAddr::from(([198, 18, 255, 1], 30080)),
    )
}

impl FlowInfo {
    /// The same client from another source port (a new flow of the same client).
    pub fn from_port(mut self, port: u16) -> Self {
        self.client.set_port(port);
        self
    }
}

/// A worker's policy state without plugins.
pub fn state() -> PolicyState {
    scripted(Script::default()).0
}

/// What the scripted plugins answer, and what they were asked.
#[derive(Default)]
pub struct Script {
    /// Per admission link index: its answer (Allow when absent).
    pub admit: Vec<(usize, Result<types::Verdict, FailureKind>)>,
    /// The affinity link's answer.
    pub key: Option<Result<Option<types::Affinity>, FailureKind>>,
    /// The selection link's answers, in call order (then None).
    pub select: Vec<Result<Option<usize>, FailureKind>>,
    /// Links asked to admit, in order.
    pub asked: Vec<usize>,
    /// `tried` lists selection was called with.
    pub select_tried: Vec<Vec<SocketAddr>>,
    /// attach minus detach calls.
    pub attached: i32,
    /// How many of the first `prepare` calls answer Pending (then Ok).
    pub pending: usize,
    /// `prepare` calls, each with whether the list of the next pick came along.
    pub prepared: Vec<bool>,
}

struct Scripted(Arc<Mutex<Script>>);

fn lock(s: &Mutex<Script>) -> std::sync::MutexGuard<'_, Script> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl PluginCalls for Scripted {
    fn prepare(
        &mut self,
        _: &Arc<Chain>,
        _: Family,
        picks: Option<&Arc<[Backend]>>,
        _: Instant,
    ) -> Result<(), FailureKind> {
        let mut s = lock(&self.0);
        s.prepared.push(picks.is_some());
        if s.pending == 0 {
            return Ok(());
        }
        s.pending -= 1;
        Err(FailureKind::Pending)
    }
    fn admit(
        &mut self,
        _: &Arc<Chain>,
        link: usize,
        _: Family,
        _: types::Flow,
        _: Instant,
    ) -> Result<types::Verdict, FailureKind> {
        let mut s = lock(&self.0);
        s.asked.push(link);
        let answer = s.admit.iter().find(|(l, _)| *l == link).map(|(_, a)| *a);
        answer.unwrap_or(Ok(types::Verdict::Allow))
    }
    fn affinity_key(
        &mut self,
        chain: &Arc<Chain>,
        _: Family,
        _: types::Flow,
        _: Instant,
    ) -> Result<Option<types::Affinity>, FailureKind> {
        match chain.affinity {
            Some(_) => lock(&self.0).key.unwrap_or(Ok(None)),
            None => Ok(None),
        }
    }
    fn select(
        &mut self,
        _: &Arc<Chain>,
        _: Family,
        _: types::Flow,
        _: &Arc<[Backend]>,
        tried: &[SocketAddr],
        _: Instant,
    ) -> Result<Option<usize>, FailureKind> {
        let mut s = lock(&self.0);
        s.select_tried.push(tried.to_vec());
        if s.select.is_empty() {
            Ok(None)
        } else {
            s.select.remove(0)
        }
    }
    fn attach(&mut self, _: &Chain) {
        lock(&self.0).attached += 1;
    }
    fn detach(&mut self, _: &Chain) {
        lock(&self.0).attached -= 1;
    }
    fn instances(&self) -> usize {
        0
    }
    fn done(&mut self, _: crate::plugin::setup::Done, _: Instant) {}
    fn settled(&mut self) {}
}

/// A worker state whose plugins follow `script`; the handle reads what they were asked.
pub fn scripted(script: Script) -> (PolicyState, Arc<Mutex<Script>>) {
    let shared = Arc::new(Mutex::new(script));
    let calls = Box::new(Scripted(shared.clone()));
    (PolicyState::new(0, calls, Instant::now()), shared)
}

/// A chain of `links` plugins (none loaded: the scripted calls stand in for them) with the
/// given roles by link index and failure policy.
pub fn chain(
    policy: FailurePolicy,
    affinity: Option<usize>,
    selection: Option<usize>,
) -> Arc<Chain> {
    Arc::new(Chain {
        links: Vec::new(),
        policy,
        handle: 1,
        namespace: "ns".into(),
        name: "svc".into(),
        port_name: "http".into(),
        node_port: 30080,
        protocol: Protocol::Tcp,
        local: false,
        affinity,
        selection,
        admission: true,
    })
}

/// What the shared script says now.
pub fn read(s: &Arc<Mutex<Script>>) -> std::sync::MutexGuard<'_, Script> {
    lock(s)
}
