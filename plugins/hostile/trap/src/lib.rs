//! Hostile: `select` panics (a trap), to test that the host survives and replaces the instance.
use nodeport_plugin::{export, Backend, Flow, Plugin, Selection};

#[derive(Default)]
struct Trap;

impl Plugin for Trap {}

impl Selection for Trap {
    fn set_backends(&mut self, _: u32, _: Vec<Backend>) {}
    fn select(&mut self, flow: &Flow, _: Option<u32>) -> Option<u32> {
        panic!("trap plugin: select called for flow {}", flow.id)
    }
}

export!(Trap: selection);
