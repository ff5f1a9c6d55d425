//! Why the dataplane refused a flow or dropped a datagram: the reasons a policy gives, plus
//! the dataplane's own (connects that failed, a full conntrack shard, undeliverable
//! datagrams). Counted per frontend in `flows_refused_total{reason}`.

use crate::metrics::LabelValue;
use crate::policy::Refused;

/// Why a flow was refused or dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No usable endpoint.
    NoEndpoint,
    /// Every connect attempt failed or timed out.
    ConnectFailed,
    /// The conntrack shard is full.
    TableFull,
    /// A datagram could not be delivered (socket buffer full, endpoint unreachable).
    Dropped,
    /// An admission plugin refused the flow.
    Denied,
    /// A plugin failed and the Service's failure policy is closed.
    PluginFailed,
}

impl LabelValue for Refusal {
    const ALL: &'static [Self] = &[
        Self::NoEndpoint,
        Self::ConnectFailed,
        Self::TableFull,
        Self::Dropped,
        Self::Denied,
        Self::PluginFailed,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::NoEndpoint => "no_endpoint",
            Self::ConnectFailed => "connect_failed",
            Self::TableFull => "table_full",
            Self::Dropped => "dropped",
            Self::Denied => "denied",
            Self::PluginFailed => "plugin_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Self {
        match r {
            Refused::NoEndpoint => Self::NoEndpoint,
            Refused::Denied => Self::Denied,
            // A flow is only refused as Pending where it could not wait: the plugin's setup
            // did not come back in time, which the Service's failure policy calls a failure.
            Refused::PluginFailed | Refused::Pending => Self::PluginFailed,
        }
    }
}
