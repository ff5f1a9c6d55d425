//! Hostile: `admit` and `select` never return, to test the host's per-call time limit.
use nodeport_plugin::{export, Admission, Backend, Flow, Plugin, Selection, Verdict};

#[derive(Default)]
struct Spin;

impl Plugin for Spin {}

fn forever() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl Admission for Spin {
    fn admit(&mut self, _: &Flow) -> Verdict {
        forever()
    }
}

impl Selection for Spin {
    fn set_backends(&mut self, _: u32, _: Vec<Backend>) {}
    fn select(&mut self, _: &Flow, _: Option<u32>) -> Option<u32> {
        forever()
    }
}

export!(Spin: admission, selection);
