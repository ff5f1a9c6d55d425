//! In-process plugin rigs (the runtime through the daemon's library), shared by
//! `tests/e2e/plugin_runtime.rs` and `benches/plugins.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use nodeportd::model::{
    Backend, FailurePolicy, Family, Frontend, FrontendKey, PluginRef, PluginSpec, Protocol,
    ServiceKey, TrafficPolicy,
};
use nodeportd::plugin::wire::types;
use nodeportd::plugin::Chain;
use nodeportd::policy::FlowInfo;

/// `n` ready endpoints 198.19.x.y:8080.
pub fn backends(n: u32) -> Arc<[Backend]> {
    (0..n)
        .map(|i| {
            Backend::ready(SocketAddr::from((
                [198, 19, (i >> 8) as u8, i as u8 + 1],
                8080,
            )))
        })
        .collect()
}

/// TCP nodePort 30080 of Service `rig/svc` over `backends`, with the one-plugin chain
/// `plugin` configured with `config` (failure policy open).
pub fn frontend(plugin: &str, config: &str, backends: &Arc<[Backend]>) -> Frontend {
    Frontend {
        key: FrontendKey {
            protocol: Protocol::Tcp,
            node_port: 30080,
        },
        service: ServiceKey::new(Some("rig"), "svc"),
        port_name: "http".into(),
        families: vec![Family::V4],
        v4: backends.clone(),
        v6: Arc::from(Vec::new()),
        serving: Arc::from(Vec::new()),
        affinity: None,
        policy: TrafficPolicy::Cluster,
        plugins: Some(Arc::new(PluginSpec {
            chain: vec![PluginRef {
                name: plugin.into(),
                config: config.into(),
            }],
            failure_policy: FailurePolicy::Open,
        })),
        proxy_protocol: false,
        spread: false,
    }
}

/// New flow number `i` (from 198.18.x.y) on nodePort 30080.
pub fn flow(i: u64) -> FlowInfo {
    FlowInfo::new(
        0,
        i,
        FrontendKey {
            protocol: Protocol::Tcp,
            node_port: 30080,
        },
        SocketAddr::from((
            [198, 18, (i >> 8) as u8, i as u8],
            40000 + (i % 20000) as u16,
        )),
        SocketAddr::from(([198, 18, 255, 1], 30080)),
    )
}

/// The flow record plugins of `chain` see for `f`.
pub fn record(chain: &Chain, f: &FlowInfo) -> types::Flow {
    nodeportd::policy::plugins::record(chain, f)
}
