//! What a mio token names in a worker's poll: the waker, a nodePort socket, or one side of a
//! flow. Flow tokens carry the slot, 16 bits of its generation and the side, so an event for
//! a flow that was closed and replaced within one poll round is recognised as stale.

use mio::Token;

use super::conntrack::FlowId;
use crate::model::Protocol;

/// Token of the waker that control and hand-off messages ring.
pub(super) const WAKER: Token = Token(1 << 62);
const LISTENER: usize = 1 << 61;
const UDP: usize = 1 << 60;
/// Slots are below this (bits 1..40); the generation sits above it.
const SLOT_BITS: usize = 40;

/// One side of a flow, as its token names it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct FlowRef {
    /// Slot in the protocol's conntrack shard.
    pub(super) id: FlowId,
    /// Low 16 bits of the slot's generation.
    pub(super) generation: u16,
    /// The endpoint-side socket (else the client's).
    pub(super) upstream: bool,
}

/// What became ready.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Ready {
    /// The waker: messages are queued.
    Waker,
    /// A nodePort socket, by its index among the protocol's listeners.
    Listener(Protocol, usize),
    /// A flow's socket.
    Flow(Protocol, FlowRef),
}

fn protocol_bit(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => UDP,
    }
}

fn protocol_of(t: usize) -> Protocol {
    if t & UDP != 0 {
        Protocol::Udp
    } else {
        Protocol::Tcp
    }
}

/// The token of one side of a flow.
pub(super) fn flow(protocol: Protocol, id: FlowId, generation: u32, upstream: bool) -> Token {
    Token(
        protocol_bit(protocol)
            | ((generation as usize & 0xffff) << SLOT_BITS)
            | (id << 1)
            | upstream as usize,
    )
}

/// The token of a nodePort socket.
pub(super) fn listener(protocol: Protocol, idx: usize) -> Token {
    Token(LISTENER | protocol_bit(protocol) | idx)
}

/// What `t` names.
pub(super) fn decode(t: Token) -> Ready {
    let t = t.0;
    if t == WAKER.0 {
        return Ready::Waker;
    }
    let protocol = protocol_of(t);
    let rest = t & !(UDP | LISTENER);
    if t & LISTENER != 0 {
        return Ready::Listener(protocol, rest);
    }
    Ready::Flow(
        protocol,
        FlowRef {
            id: (rest & ((1 << SLOT_BITS) - 1)) >> 1,
            generation: (rest >> SLOT_BITS) as u16,
            upstream: rest & 1 == 1,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            for (id, generation, upstream) in
                [(0, 0, false), (7, 0x1_2345, true), (1 << 30, 1, false)]
            {
                let got = decode(flow(protocol, id, generation, upstream));
                let want = FlowRef {
                    id,
                    generation: generation as u16,
                    upstream,
                };
                assert_eq!(got, Ready::Flow(protocol, want));
            }
            assert_eq!(decode(listener(protocol, 5)), Ready::Listener(protocol, 5));
        }
        assert_eq!(decode(WAKER), Ready::Waker);
    }

    #[test]
    fn kinds_never_collide() {
        let tokens = [
            WAKER,
            listener(Protocol::Tcp, 0),
            listener(Protocol::Udp, 0),
            flow(Protocol::Tcp, 0, 0, false),
            flow(Protocol::Udp, 0, 0, false),
        ];
        for (i, a) in tokens.iter().enumerate() {
            for b in &tokens[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
