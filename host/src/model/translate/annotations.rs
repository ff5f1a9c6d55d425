//! The nodeportd annotations of a Service: the plugin chain (`nodeportd.dev/plugins` and
//! friends, read by [`PluginSpec`](crate::model::PluginSpec)) and the PROXY protocol to
//! endpoints. A wrong annotation rejects the Service, named.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::plugins::PluginSpec;
use crate::model::service::ServiceKey;

/// The plugin chain the annotations name (None: the native default decides).
pub(super) fn plugins(
    key: &ServiceKey,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Arc<PluginSpec>>, String> {
    match PluginSpec::from_annotations(annotations) {
        Ok(spec) => Ok(spec.map(Arc::new)),
        Err(e) => Err(format!("Service {key}: {e}")),
    }
}

/// Asks for a PROXY protocol header on connections to the Service's endpoints.
pub const PROXY_PROTOCOL_ANNOTATION: &str = "nodeportd.dev/proxy-protocol";

/// Whether TCP connections to endpoints start with a PROXY protocol v2 header (HAProxy's
/// `send-proxy-v2`): for endpoints that want the client's address under any traffic policy.
/// UDP ports are forwarded unchanged (no endpoint software expects a header per datagram).
pub(super) fn proxy_protocol(
    key: &ServiceKey,
    annotations: &BTreeMap<String, String>,
) -> Result<bool, String> {
    switch(key, annotations, PROXY_PROTOCOL_ANNOTATION, "v2", None)
        .map_err(|e| format!("{e} is not supported (the value is \"v2\")"))
}

/// An on/off annotation: absent or empty is off, `on` is on, `off` (when there is one) is off;
/// anything else is an error naming the Service, the annotation and the value.
fn switch(
    key: &ServiceKey,
    annotations: &BTreeMap<String, String>,
    name: &str,
    on: &str,
    off: Option<&str>,
) -> Result<bool, String> {
    match annotations.get(name).map(|v| v.trim()) {
        None | Some("") => Ok(false),
        Some(v) if v == on => Ok(true),
        Some(v) if Some(v) == off => Ok(false),
        Some(other) => Err(format!("Service {key}: annotation {name}: {other:?}")),
    }
}

/// Asks for a Service's UDP nodePorts to be served by every worker.
pub const SPREAD_UDP_ANNOTATION: &str = "nodeportd.dev/spread-udp";

/// Whether each UDP nodePort is a group of one socket per worker, a client's datagrams
/// steered to one of them by its address, instead of one socket on one worker: for busy UDP
/// Services (DNS, QUIC, game servers) that one core cannot carry. Costs a socket per worker per
/// port, so it is asked for per Service; TCP ports are placed on every worker already.
pub(super) fn spread_udp(
    key: &ServiceKey,
    annotations: &BTreeMap<String, String>,
) -> Result<bool, String> {
    switch(
        key,
        annotations,
        SPREAD_UDP_ANNOTATION,
        "true",
        Some("false"),
    )
    .map_err(|e| format!("{e} is not \"true\" or \"false\""))
}

#[cfg(test)]
mod tests {
    use crate::model::fixtures::{invalid, served, service, tcp};
    use crate::model::plugins::{FailurePolicy, FAILURE_POLICY_ANNOTATION, PLUGINS_ANNOTATION};

    fn annotated(pairs: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Service {
        let mut svc = service("x", vec![tcp("http", 30080)]);
        svc.metadata.annotations = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        svc
    }

    #[test]
    fn the_chain_and_the_annotations_are_kept() {
        let s = served(&annotated(&[
            (PLUGINS_ANNOTATION, "source-ranges"),
            ("nodeportd.dev/config.source-ranges", "198.18.0.0/24"),
            ("team", "web"),
        ]));
        let spec = s.plugins.expect("a plugin chain");
        assert_eq!(spec.chain.len(), 1);
        assert_eq!(spec.chain[0].name, "source-ranges");
        assert_eq!(spec.chain[0].config, "198.18.0.0/24");
        assert_eq!(spec.failure_policy, FailurePolicy::Open);
        assert_eq!(s.annotations.get("team").map(String::as_str), Some("web"));
    }

    #[test]
    fn proxy_protocol_v2_is_asked_for_tcp_ports_only() {
        use crate::model::fixtures::port;
        let on = super::PROXY_PROTOCOL_ANNOTATION;
        assert!(served(&annotated(&[(on, "v2")])).proxy_protocol);
        assert!(!served(&annotated(&[])).proxy_protocol);
        let mut svc = annotated(&[(on, " v2 ")]);
        let spec = svc.spec.as_mut().expect("spec");
        spec.ports = Some(vec![
            tcp("http", 30080),
            port("dns", "UDP", 53, Some(30053)),
        ]);
        let s = served(&svc);
        let node = crate::model::NodeInfo {
            name: "n".into(),
            zone: None,
        };
        let (fes, _) = crate::model::frontend::build(&s, &[], &node);
        let by_port: Vec<(u16, bool)> = fes
            .iter()
            .map(|f| (f.key.node_port, f.proxy_protocol))
            .collect();
        assert_eq!(by_port, vec![(30080, true), (30053, false)]);
        let e = invalid(&annotated(&[(on, "v1")]));
        assert!(
            e.starts_with("Service ns/x: annotation nodeportd.dev/proxy-protocol: \"v1\""),
            "{e}"
        );
    }

    #[test]
    fn spread_udp_is_asked_for_udp_ports_only() {
        use crate::model::fixtures::port;
        let on = super::SPREAD_UDP_ANNOTATION;
        assert!(served(&annotated(&[(on, "true")])).spread_udp);
        assert!(!served(&annotated(&[(on, "false")])).spread_udp);
        assert!(!served(&annotated(&[])).spread_udp);
        let mut svc = annotated(&[(on, " true ")]);
        let spec = svc.spec.as_mut().expect("spec");
        spec.ports = Some(vec![
            tcp("http", 30080),
            port("dns", "UDP", 53, Some(30053)),
        ]);
        let node = crate::model::NodeInfo {
            name: "n".into(),
            zone: None,
        };
        let (fes, _) = crate::model::frontend::build(&served(&svc), &[], &node);
        let by_port: Vec<(u16, bool)> = fes.iter().map(|f| (f.key.node_port, f.spread)).collect();
        assert_eq!(by_port, vec![(30080, false), (30053, true)]);
        let e = invalid(&annotated(&[(on, "yes")]));
        assert!(
            e.starts_with("Service ns/x: annotation nodeportd.dev/spread-udp: \"yes\""),
            "{e}"
        );
    }

    #[test]
    fn without_plugin_annotations_there_is_no_chain() {
        assert_eq!(served(&annotated(&[("team", "web")])).plugins, None);
    }

    #[test]
    fn a_wrong_annotation_rejects_the_service_naming_it() {
        let e = invalid(&annotated(&[(FAILURE_POLICY_ANNOTATION, "maybe")]));
        assert!(
            e.starts_with("Service ns/x: annotation nodeportd.dev/failure-policy"),
            "{e}"
        );
        let e = invalid(&annotated(&[(PLUGINS_ANNOTATION, "Bad Name")]));
        assert!(
            e.starts_with("Service ns/x: annotation nodeportd.dev/plugins"),
            "{e}"
        );
    }
}
