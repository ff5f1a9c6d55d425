//! The plugin annotations of a Service (`nodeportd.dev/plugins` and friends, read by
//! [`PluginSpec`](crate::model::PluginSpec)): a wrong annotation rejects the Service, named.

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
