//! Hostile: `admit` allocates and keeps memory until allocation fails (which traps), to test
//! the host's per-instance memory limit.
use nodeport_plugin::{export, Admission, Flow, Plugin, Verdict};

#[derive(Default)]
struct Grow {
    hoard: Vec<Vec<u8>>,
}

impl Plugin for Grow {}

impl Admission for Grow {
    fn admit(&mut self, _: &Flow) -> Verdict {
        loop {
            // 4 MiB at a time, zeroed: fresh linear memory is already zero, so this grows the
            // memory (what the host's limit counts) as fast as the allocator can ask for it
            self.hoard.push(vec![0; 4 << 20]);
        }
    }
}

export!(Grow: admission);
