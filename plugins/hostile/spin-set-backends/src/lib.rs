//! Hostile: `set-backends` never returns, to test that the host sets plugins up off the
//! flow path (on a setup thread, bounded by the setup deadline): a worker's other Services
//! must not wait for it. It logs once as it starts spinning, so a test knows the setup runs.
use nodeport_plugin::{export, log, Backend, Flow, Plugin, Selection};

#[derive(Default)]
struct SpinSetBackends;

impl Plugin for SpinSetBackends {}

impl Selection for SpinSetBackends {
    fn set_backends(&mut self, handle: u32, _: Vec<Backend>) {
        log::info!("spin-set-backends: spinning in set-backends for handle {handle}");
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }

    fn select(&mut self, _: &Flow, _: Option<u32>) -> Option<u32> {
        Some(0)
    }
}

export!(SpinSetBackends: selection);
