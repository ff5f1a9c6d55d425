//! Hostile: `admit` writes a million log lines, then allows, to test the host's log limit.
use nodeport_plugin::{export, log, Admission, Flow, Plugin, Verdict};

#[derive(Default)]
struct LogFlood;

impl Plugin for LogFlood {}

impl Admission for LogFlood {
    fn admit(&mut self, flow: &Flow) -> Verdict {
        for i in 0..1_000_000u32 {
            log::info!("log-flood: flow {} line {i}", flow.id);
        }
        Verdict::Allow
    }
}

export!(LogFlood: admission);
