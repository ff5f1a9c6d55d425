//! Hostile: `configure` never returns, to test that the host's probe of a Service's config
//! (bounded by the setup deadline) never holds up the control plane. Its selection is the
//! first endpoint, so a Service that runs it anyway would be visibly pinned.
use nodeport_plugin::{export, Backend, Flow, Plugin, Selection, Service};

#[derive(Default)]
struct HangConfigure;

impl Plugin for HangConfigure {
    fn configure(&mut self, _: &Service, _: &str) -> Result<(), String> {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

impl Selection for HangConfigure {
    fn set_backends(&mut self, _: u32, _: Vec<Backend>) {}
    fn select(&mut self, _: &Flow, _: Option<u32>) -> Option<u32> {
        Some(0)
    }
}

export!(HangConfigure: selection);
