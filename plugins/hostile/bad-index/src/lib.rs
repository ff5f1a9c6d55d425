//! Hostile: `select` answers with an invalid index, to test the host's checks.
//!
//! Config picks the mistake: "" (default) returns the list's length, one past the end (0 for
//! an empty list); `max` returns u32::MAX - 1; `excluded` returns the index that just failed
//! (or 0 on the first try).
use nodeport_plugin::{export, Backend, Flow, Plugin, Selection, Service};
use std::collections::HashMap;

#[derive(Default)]
struct BadIndex {
    /// Per handle: (mode, list length).
    ports: HashMap<u32, (String, u32)>,
}

impl Plugin for BadIndex {
    fn configure(&mut self, service: &Service, config: &str) -> Result<(), String> {
        match config.trim() {
            "" | "max" | "excluded" => {
                self.ports.insert(service.handle, (config.trim().into(), 0));
                Ok(())
            }
            other => Err(format!("unknown mode `{other}` (known: max, excluded)")),
        }
    }
}

impl Selection for BadIndex {
    fn set_backends(&mut self, handle: u32, backends: Vec<Backend>) {
        let port = self.ports.entry(handle).or_default();
        port.1 = backends.len() as u32;
    }

    fn select(&mut self, flow: &Flow, excluded: Option<u32>) -> Option<u32> {
        let (mode, len) = self.ports.get(&flow.handle)?;
        Some(match mode.as_str() {
            "max" => u32::MAX - 1,
            "excluded" => excluded.unwrap_or(0),
            _ => *len,
        })
    }
}

export!(BadIndex: selection);
