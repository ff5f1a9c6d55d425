//! Plugin chains: resolves the chain each frontend's annotations ask for against the plugin
//! directory. When that fails (a plugin that does not load, a refused config, no
//! `--plugin-dir`), the frontend keeps the chain it runs now and the reason is logged once;
//! while a probe of its config runs, it keeps that chain too (the previous one, or the native
//! default for a new frontend) and is resolved again when the probe's result comes in
//! (`Event::PluginsChanged`). Metric series are the dataplane's to forget.
//!
//! The chain a frontend runs now is the dataplane's (`Dataplane::chain`); this module keeps
//! only what the dataplane cannot know: why a frontend does not run what it asks for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::Metrics;
use crate::model::{Frontend, FrontendKey, ServiceKey};
use crate::notice::{Notice, Notices, Reason};
use crate::plugin::{Chain, Directory, Unresolved};

/// Resolves chains and remembers the refusals.
pub struct Chains {
    metrics: Arc<Metrics>,
    /// Loaded plugins (None: started without --plugin-dir).
    directory: Option<Directory>,
    /// Why a frontend does not run the chain its annotations ask for (logged once).
    errors: HashMap<FrontendKey, String>,
    /// Frontends waiting for a probe of their config.
    pending: HashSet<FrontendKey>,
    /// Where refusals are told (an Event on the Service with the API source).
    notices: Notices,
}

impl Chains {
    /// No plugin directory: a frontend that names plugins is served natively (and told so).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            directory: None,
            errors: HashMap::new(),
            pending: HashSet::new(),
            notices: Notices::default(),
        }
    }

    /// Tells refusals to `notices` from now on.
    pub fn set_notices(&mut self, notices: Notices) {
        self.notices = notices;
    }

    /// Resolves chains against `directory` from now on.
    pub fn set_directory(&mut self, directory: Directory) {
        self.directory = Some(directory);
    }

    /// Re-reads the plugin directory; the names of the plugins that changed (None without
    /// a directory: nothing can have changed).
    pub fn refresh(&mut self) -> Option<Vec<String>> {
        self.directory.as_mut().map(Directory::refresh)
    }

    /// Whether a failed probe's backoff is over (the frontends it refused should be resolved
    /// again).
    pub fn retry_due(&mut self) -> bool {
        self.directory.as_mut().is_some_and(Directory::retry_due)
    }

    /// Waits, until `deadline` at most, for the plugin loads and probes that frontends wait
    /// for; true when they ended and some frontend waited (it should then be resolved again,
    /// which may start its next step). Only for the initial sync, before readiness: a
    /// Service's plugins are then in force once the daemon reports ready.
    pub fn settle(&mut self, deadline: Instant) -> bool {
        let (Some(dir), false) = (&mut self.directory, self.pending.is_empty()) else {
            return false;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !dir.wait_idle(left) {
            tracing::warn!(
                ports = self.pending.len(),
                "plugin loads or config probes still running; their Services are resolved when they end"
            );
            return false;
        }
        true
    }

    /// Whether `fe` must be resolved again after `changed` plugins changed: it names one of
    /// them, it waits for a probe, or it does not run what it asks for (the change may be
    /// what it waits for).
    pub fn needs_resolve(&self, fe: &Frontend, changed: &[String]) -> bool {
        self.pending.contains(&fe.key)
            || self.errors.contains_key(&fe.key)
            || fe
                .plugins
                .as_ref()
                .is_some_and(|spec| spec.chain.iter().any(|r| changed.contains(&r.name)))
    }

    /// The chain `fe` should run: what its annotations ask for, or, when that cannot be
    /// loaded or configured, `previous` (what it runs now; None: the native default).
    pub fn resolve(
        &mut self,
        service: &ServiceKey,
        fe: &Frontend,
        previous: Option<&Arc<Chain>>,
    ) -> Option<Arc<Chain>> {
        let wanted = match (&fe.plugins, &mut self.directory) {
            (None, _) => Ok(None),
            (Some(_), None) => Err(Unresolved::Refused(
                "it names plugins but nodeportd runs without --plugin-dir".to_string(),
            )),
            (Some(_), Some(dir)) => dir.resolve(fe, previous),
        };
        if matches!(wanted, Err(Unresolved::Pending)) {
            self.pending.insert(fe.key);
            return previous.cloned();
        }
        self.pending.remove(&fe.key);
        match wanted {
            Ok(chain) => {
                if self.errors.remove(&fe.key).is_some() {
                    tracing::info!(service = %service, port = %fe.port_name, "Service now runs the plugins it names");
                }
                chain
            }
            Err(Unresolved::Pending) => previous.cloned(),
            Err(Unresolved::Refused(e)) => {
                if self.errors.get(&fe.key) != Some(&e) {
                    self.report(service, fe, &e, previous);
                    self.errors.insert(fe.key, e);
                }
                previous.cloned()
            }
        }
    }

    fn report(&self, service: &ServiceKey, fe: &Frontend, e: &str, kept: Option<&Arc<Chain>>) {
        self.metrics.plugin_load_errors.inc();
        let keeps = match kept {
            Some(c) => format!(
                "it keeps its previous plugins ({})",
                c.links
                    .iter()
                    .map(|l| &*l.plugin.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "the native default serves it".to_string(),
        };
        tracing::error!(service = %service, port = %fe.port_name, error = %e, "Service's plugins not applied; {keeps}");
        self.notices.send(Notice {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            reason: Reason::PluginNotApplied,
            message: format!("port {}: {e}; {keeps}", fe.port_name),
        });
    }

    /// `fe` is gone: forgets why it did not run its chain (the dataplane forgets its series).
    pub fn removed(&mut self, fe: &Frontend) {
        self.errors.remove(&fe.key);
        self.pending.remove(&fe.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FailurePolicy, PluginRef, PluginSpec};
    use crate::sync::changes::tests::frontend;

    fn with_plugins(mut fe: Frontend) -> Frontend {
        fe.plugins = Some(Arc::new(PluginSpec {
            chain: vec![PluginRef {
                name: "consistent-hash".into(),
                config: String::new(),
            }],
            failure_policy: FailurePolicy::Open,
        }));
        fe
    }

    #[test]
    fn without_a_plugin_directory_a_chain_is_refused_once_and_the_native_default_serves() {
        let metrics = Arc::new(Metrics::new());
        let mut chains = Chains::new(metrics.clone());
        let service = ServiceKey::new(Some("shop"), "web");
        let fe = with_plugins(frontend(30080, &["198.18.0.2:80"]));
        let (notices, mut told) = Notices::channel();
        chains.set_notices(notices);
        assert!(chains.resolve(&service, &fe, None).is_none());
        assert!(chains.resolve(&service, &fe, None).is_none());
        assert_eq!(metrics.plugin_load_errors.get(), 1);
        let notice = told.try_recv().expect("the refusal is told");
        assert_eq!(
            (notice.namespace.as_str(), notice.name.as_str()),
            ("shop", "web")
        );
        assert_eq!(notice.reason, Reason::PluginNotApplied);
        assert!(
            notice.message.contains("--plugin-dir"),
            "{}",
            notice.message
        );
        assert!(told.try_recv().is_err(), "told once, not on every resolve");
        assert!(chains.needs_resolve(&fe, &[]));
        assert_eq!(chains.refresh(), None);

        // The annotation is dropped: the refusal is over.
        let native = frontend(30080, &["198.18.0.2:80"]);
        assert!(chains.resolve(&service, &native, None).is_none());
        assert!(!chains.needs_resolve(&native, &[]));
    }

    #[test]
    fn a_frontend_is_resolved_again_when_a_plugin_it_names_changes() {
        let chains = Chains::new(Arc::new(Metrics::new()));
        let fe = with_plugins(frontend(30080, &[]));
        assert!(chains.needs_resolve(&fe, &["consistent-hash".to_string()]));
        assert!(!chains.needs_resolve(&fe, &["other".to_string()]));
        assert!(!chains.needs_resolve(&frontend(30080, &[]), &["consistent-hash".into()]));
    }
}
