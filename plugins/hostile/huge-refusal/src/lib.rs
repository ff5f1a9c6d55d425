//! Hostile: `configure` refuses every config with a 4 MiB message, to test that the host
//! bounds plugin-made text before it copies it into logs, errors and Events on each retry.
//! Its selection is the first endpoint, so a Service that ran it anyway would be visibly
//! pinned.
use nodeport_plugin::{export, Backend, Flow, Plugin, Selection, Service};

#[derive(Default)]
struct HugeRefusal;

impl Plugin for HugeRefusal {
    fn configure(&mut self, _: &Service, _: &str) -> Result<(), String> {
        Err(format!("huge-refusal: {}", "x".repeat(4 << 20)))
    }
}

impl Selection for HugeRefusal {
    fn set_backends(&mut self, _: u32, _: Vec<Backend>) {}
    fn select(&mut self, _: &Flow, _: Option<u32>) -> Option<u32> {
        Some(0)
    }
}

export!(HugeRefusal: selection);
