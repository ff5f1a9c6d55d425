//! Per-frontend series (flows, bytes, refusals of one Service port on one nodePort). Handles
//! are made once, when the frontend is programmed, so workers only touch atomics.

use std::marker::PhantomData;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::LabelValue;

/// Labels of per-frontend series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontendLabels {
    /// namespace/name.
    pub service: String,
    /// Service port name.
    pub port: String,
    /// tcp or udp.
    pub protocol: String,
    /// The nodePort.
    pub node_port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DirectionLabels {
    service: String,
    port: String,
    protocol: String,
    node_port: u16,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    service: String,
    port: String,
    protocol: String,
    node_port: u16,
    reason: &'static str,
}

impl FrontendLabels {
    pub(super) fn direction(&self, direction: &'static str) -> DirectionLabels {
        DirectionLabels {
            service: self.service.clone(),
            port: self.port.clone(),
            protocol: self.protocol.clone(),
            node_port: self.node_port,
            direction,
        }
    }

    pub(super) fn reason(&self, reason: &'static str) -> ReasonLabels {
        ReasonLabels {
            service: self.service.clone(),
            port: self.port.clone(),
            protocol: self.protocol.clone(),
            node_port: self.node_port,
            reason,
        }
    }
}

/// A frontend's metric handles (atomics shared with the registry). `R` is the dataplane's
/// closed set of refusal reasons; one counter per reason is made up front.
#[derive(Clone, Debug)]
pub struct FrontendMetrics<R> {
    /// Flows open now.
    pub active: Gauge,
    /// Flows started.
    pub flows: Counter,
    /// Bytes client -> endpoint.
    pub bytes_in: Counter,
    /// Bytes endpoint -> client.
    pub bytes_out: Counter,
    pub(super) refused: Box<[Counter]>,
    pub(super) reasons: PhantomData<R>,
}

impl<R: LabelValue> Default for FrontendMetrics<R> {
    /// Handles registered nowhere (tests, benches).
    fn default() -> Self {
        Self {
            active: Gauge::default(),
            flows: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            refused: R::ALL.iter().map(|_| Counter::default()).collect(),
            reasons: PhantomData,
        }
    }
}

impl<R: LabelValue> FrontendMetrics<R> {
    /// Counts a refused flow or dropped datagram.
    pub fn refuse(&self, why: R) {
        if let Some(c) = self.refused.get(why.index()) {
            c.inc();
        }
    }

    /// Refusals of one reason so far.
    pub fn refused(&self, why: R) -> u64 {
        self.refused.get(why.index()).map_or(0, |c| c.get())
    }
}
