//! Backend selection for new flows: the native default (kube-proxy's uniform random, plus
//! ClientIP affinity). One algorithm per module; WASM plugins plug in at the same seam.

pub mod affinity;
pub mod random;

use std::net::SocketAddr;

use crate::model::{Backend, FrontendKey};

/// What a selector may know about a new flow: fixed-size data only.
#[derive(Copy, Clone, Debug)]
pub struct FlowInfo {
    /// The frontend the flow came in on.
    pub frontend: FrontendKey,
    /// Client address and port.
    pub client: SocketAddr,
    /// Node address and nodePort.
    pub node: SocketAddr,
}

/// Picks an endpoint for a new flow among `backends`, never one in `exclude` (endpoints that
/// already failed to connect for this flow). None when nothing is left.
pub trait Selector {
    /// Index into `backends`.
    fn select(
        &mut self,
        flow: &FlowInfo,
        backends: &[Backend],
        exclude: &[SocketAddr],
    ) -> Option<usize>;
}
