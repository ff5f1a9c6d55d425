//! Notices: why a Service's policy is not in force, told to whoever reports it to the
//! Service's owner. The sync loop sends one when a Service's plugins cannot be loaded or are
//! refused by `configure`; a worker sends one when backoff disables a plugin. The Kubernetes
//! API source turns them into Events on the Service (`kubectl describe service` shows them);
//! with the manifests directory nobody listens and the logs are the record.
//!
//! Like metrics, this sits below everything: it knows Services only by name, and sending
//! never blocks or fails (a worker sends from its loop; an unbounded channel, rare messages;
//! the receiver is async, read by a task on the control plane's runtime).

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Why a notice is sent; its `reason` is what `kubectl describe` shows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The plugins a Service names did not load, or `configure` refused its config.
    PluginNotApplied,
    /// Backoff disabled a plugin of the Service on a worker.
    PluginDisabled,
}

impl Reason {
    /// The Event reason (PascalCase, as Kubernetes reasons are).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PluginNotApplied => "PluginNotApplied",
            Self::PluginDisabled => "PluginDisabled",
        }
    }
}

/// One notice about one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Why.
    pub reason: Reason,
    /// What happened and what serves the Service meanwhile.
    pub message: String,
}

/// Where notices go. The default sends them nowhere.
#[derive(Clone, Debug, Default)]
pub struct Notices {
    tx: Option<UnboundedSender<Notice>>,
}

impl Notices {
    /// A handle and the receiver that reads what is sent through it (and its clones).
    pub fn channel() -> (Self, UnboundedReceiver<Notice>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self { tx: Some(tx) }, rx)
    }

    /// Sends `notice` if anyone listens; never blocks.
    pub fn send(&self, notice: Notice) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(notice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notice {
        Notice {
            namespace: "shop".into(),
            name: "web".into(),
            reason: Reason::PluginDisabled,
            message: "m".into(),
        }
    }

    #[test]
    fn notices_reach_the_receiver_and_nowhere_by_default() {
        let (notices, mut rx) = Notices::channel();
        notices.clone().send(notice());
        assert_eq!(rx.try_recv().ok(), Some(notice()));
        drop(rx);
        notices.send(notice());
        Notices::default().send(notice());
    }
}
