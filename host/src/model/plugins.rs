//! The plugin annotations of a Service: which WASM plugins decide its flows, in what order,
//! with what configuration, and what happens when a plugin fails.
//!
//! ```yaml
//! nodeportd.dev/plugins: "source-ranges, consistent-hash"
//! nodeportd.dev/config.source-ranges: "198.18.0.0/24"
//! nodeportd.dev/failure-policy: closed
//! ```

use std::collections::BTreeMap;

/// Annotation naming the chain.
pub const PLUGINS_ANNOTATION: &str = "nodeportd.dev/plugins";
/// Prefix of the per-plugin configuration annotations.
pub const CONFIG_ANNOTATION_PREFIX: &str = "nodeportd.dev/config.";
/// Annotation choosing the failure policy.
pub const FAILURE_POLICY_ANNOTATION: &str = "nodeportd.dev/failure-policy";

/// What a failed plugin call means for the flow.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum FailurePolicy {
    /// The native default decides instead (admission allows, kube-proxy's selection picks).
    #[default]
    Open,
    /// The flow is refused (TCP reset, datagram dropped).
    Closed,
}

impl FailurePolicy {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// One plugin of a chain and the string its `configure` receives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PluginRef {
    /// Name: the file `<name>.wasm` in the plugin directory.
    pub name: String,
    /// `nodeportd.dev/config.<name>`, empty when absent.
    pub config: String,
}

/// A Service's plugin chain, as its annotations say.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PluginSpec {
    /// In call order.
    pub chain: Vec<PluginRef>,
    /// Failure policy for every plugin of the chain.
    pub failure_policy: FailurePolicy,
}

/// A plugin name must be usable as a file name and a metric label.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

impl PluginSpec {
    /// Reads the annotations. Ok(None) when the Service names no plugin; Err says which
    /// annotation is wrong and why (the Service is then rejected, as the API would).
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, String> {
        let failure_policy = match annotations.get(FAILURE_POLICY_ANNOTATION).map(|s| s.trim()) {
            None | Some("") | Some("open") => FailurePolicy::Open,
            Some("closed") => FailurePolicy::Closed,
            Some(other) => {
                return Err(format!(
                    "annotation {FAILURE_POLICY_ANNOTATION}: {other:?} is neither \"open\" nor \"closed\""
                ))
            }
        };
        let Some(list) = annotations.get(PLUGINS_ANNOTATION) else {
            return Ok(None);
        };
        let mut chain: Vec<PluginRef> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !valid_name(name) {
                return Err(format!(
                    "annotation {PLUGINS_ANNOTATION}: {name:?} is not a plugin name (lowercase letters, digits, '-' and '_', at most 63)"
                ));
            }
            if chain.iter().any(|p| p.name == name) {
                return Err(format!(
                    "annotation {PLUGINS_ANNOTATION}: plugin {name:?} is named twice"
                ));
            }
            let config = annotations
                .get(&format!("{CONFIG_ANNOTATION_PREFIX}{name}"))
                .cloned()
                .unwrap_or_default();
            chain.push(PluginRef {
                name: name.to_string(),
                config,
            });
        }
        if chain.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            chain,
            failure_policy,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_chain_config_and_policy() {
        let spec = PluginSpec::from_annotations(&ann(&[
            (PLUGINS_ANNOTATION, " source-ranges ,consistent-hash,"),
            ("nodeportd.dev/config.source-ranges", "198.18.0.0/24"),
            (FAILURE_POLICY_ANNOTATION, "closed"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(spec.failure_policy, FailurePolicy::Closed);
        assert_eq!(spec.chain.len(), 2);
        assert_eq!(spec.chain[0].name, "source-ranges");
        assert_eq!(spec.chain[0].config, "198.18.0.0/24");
        assert_eq!(spec.chain[1].name, "consistent-hash");
        assert_eq!(spec.chain[1].config, "");
    }

    #[test]
    fn no_plugins_is_none_and_bad_values_are_errors() {
        assert_eq!(PluginSpec::from_annotations(&ann(&[])).unwrap(), None);
        assert_eq!(
            PluginSpec::from_annotations(&ann(&[(PLUGINS_ANNOTATION, " , ")])).unwrap(),
            None
        );
        let e = PluginSpec::from_annotations(&ann(&[(FAILURE_POLICY_ANNOTATION, "maybe")]))
            .unwrap_err();
        assert!(e.contains("failure-policy") && e.contains("maybe"), "{e}");
        let e = PluginSpec::from_annotations(&ann(&[(PLUGINS_ANNOTATION, "../etc/passwd")]))
            .unwrap_err();
        assert!(e.contains("not a plugin name"), "{e}");
        let e = PluginSpec::from_annotations(&ann(&[(PLUGINS_ANNOTATION, "a, a")])).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }
}
