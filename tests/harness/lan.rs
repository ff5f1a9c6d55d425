//! A layer-2 network between network namespaces: a bridge in an isolated namespace of its
//! own (the switch), which hosts join by a veth pair each, with an address of the LAN's
//! subnet on their end. Deleting the switch (on drop) takes every port with it.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::Netns;

/// A switch: bridge `br0` in a namespace of its own.
pub struct Lan {
    switch: Netns,
    ports: AtomicU16,
}

impl Lan {
    /// An empty switch in a new isolated namespace named after `prefix`.
    pub fn new(prefix: &str) -> io::Result<Lan> {
        let switch = Netns::isolated(prefix)?;
        // STP off (the default): a port forwards as soon as it is up.
        switch.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"])?;
        switch.exec_ok(&["ip", "link", "set", "br0", "up"])?;
        Ok(Lan {
            switch,
            ports: AtomicU16::new(0),
        })
    }

    /// Plugs `host` in: a new switch port, and interface `dev` in `host` with address `cidr`
    /// (e.g. `198.19.0.11/24`).
    pub fn attach(&self, host: &Netns, dev: &str, cidr: &str) -> io::Result<()> {
        let port = format!("port{}", self.ports.fetch_add(1, Ordering::SeqCst));
        self.switch.veth(&port, host, dev)?;
        self.switch
            .exec_ok(&["ip", "link", "set", &port, "master", "br0"])?;
        host.exec_ok(&["ip", "addr", "add", cidr, "dev", dev])
    }

    /// The switch's namespace.
    pub fn switch(&self) -> &Netns {
        &self.switch
    }
}
