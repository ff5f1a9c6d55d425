//! Hostile: every third `select` answers an index out of range (a bad answer), the others
//! pick the first endpoint. Each success would reset a failure streak, so only a failure
//! rate catches it: the test that the host disables such a plugin and counts why.
use nodeport_plugin::{export, Backend, Flow, Plugin, Selection};

#[derive(Default)]
struct EveryThird {
    /// Calls so far, modulo 3.
    calls: u8,
}

impl Plugin for EveryThird {}

impl Selection for EveryThird {
    fn set_backends(&mut self, _: u32, _: Vec<Backend>) {}
    fn select(&mut self, _: &Flow, _: Option<u32>) -> Option<u32> {
        self.calls = (self.calls + 1) % 3;
        if self.calls == 0 {
            Some(u32::MAX)
        } else {
            Some(0)
        }
    }
}

export!(EveryThird: selection);
