//! The SDK for nodeportd policy plugins.
//!
//! A plugin is a WebAssembly component that nodeportd loads to decide, per Service port,
//! whether a new flow is admitted ([`Admission`]), which endpoint takes it ([`Selection`]),
//! and which flows stick to one endpoint ([`Affinity`]). The contract between host and plugin
//! is the WIT package `nodeport:plugin@0.1.0` (`wit/plugin.wit` in the repository); this
//! crate hides it behind plain Rust types so that a plugin is a `Default` struct, one trait
//! per role it plays, and one [`export!`] call naming those roles. The component then
//! exports `nodeport:plugin/lifecycle@0.1.0` and exactly the chosen role interfaces: the host
//! learns a plugin's roles from its exports.
//!
//! A complete selection plugin: the shipped `consistent-hash` plugin (rendezvous hashing on the
//! flow hash, ready endpoints first, retries walk down the flow's ranking), in full:
//!
//! ```
//! use nodeport_plugin::{export, mix, Backend, Flow, HandleMap, Plugin, Selection};
//!
//! /// Per Service handle: (endpoint identity hash, ready), in the host's index order.
//! #[derive(Default)]
//! pub struct ConsistentHash {
//!     backends: HandleMap<Vec<(u64, bool)>>,
//! }
//!
//! impl Plugin for ConsistentHash {
//!     fn forget(&mut self, handle: u32) {
//!         self.backends.remove(&handle);
//!     }
//! }
//!
//! impl Selection for ConsistentHash {
//!     fn set_backends(&mut self, handle: u32, backends: Vec<Backend>) {
//!         let list = backends.iter().map(|b| (b.key_hash(), b.ready)).collect();
//!         self.backends.insert(handle, list);
//!     }
//!
//!     fn select(&mut self, flow: &Flow, excluded: Option<u32>) -> Option<u32> {
//!         let list = self.backends.get(&flow.handle)?;
//!         // Rank: ready first (top bit), then the flow's score for the endpoint, then index.
//!         let rank = |i: usize| {
//!             list.get(i)
//!                 .map(|&(h, up)| ((up as u64) << 63 | mix(flow.hash ^ h) >> 1, i))
//!         };
//!         // On a retry, every endpoint ranked at or above the one that failed has failed.
//!         let below = excluded.and_then(|e| rank(e as usize));
//!         let mut best = None;
//!         for r in (0..list.len()).filter_map(rank) {
//!             if below.is_none_or(|b| r < b) && best.is_none_or(|b| r > b) {
//!                 best = Some(r);
//!             }
//!         }
//!         best.map(|(_, i)| i as u32)
//!     }
//! }
//!
//! export!(ConsistentHash: selection);
//! # fn main() {}
//! ```
//!
//! Plugins run single-threaded inside their instance, so the SDK keeps one value of the
//! plugin type (created with `Default` on the first call) and hands `&mut self` to every
//! call: no locks or interior mutability needed. A panic traps the instance (the SDK writes
//! the panic message to the daemon log first), so a bad configuration must be an `Err` from
//! [`Plugin::configure`], never a panic, and state should be rebuildable from `configure`
//! and `set_backends`.
//!
//! Outside wasm (a plugin's native `cargo test`) [`export!`] exports nothing and the host
//! functions fall back to local ones ([`now_nanos`], [`random_u64`], logging to stderr), so
//! plugin logic can be unit-tested directly through the traits.

#![warn(missing_docs)]

use std::net::{IpAddr, Ipv6Addr};

#[doc(hidden)]
pub mod __private;

#[cfg(target_arch = "wasm32")]
use __private::bindings::nodeport::plugin::host;
use __private::bindings::nodeport::plugin::types as wit;

/// Transport protocol of a Service port, so one plugin can treat TCP and UDP differently
/// (for example rate-limit UDP datagrams that have no handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP: the flow is an accepted connection.
    Tcp,
    /// UDP: the flow is a new (client, node) datagram conversation.
    Udp,
}

/// A new flow as the host saw its first packet: everything a per-flow decision may use.
///
/// It holds only fixed-size data because it crosses into the plugin once per new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Unique per daemon run, and the same across the retries of one flow's
    /// [`Selection::select`], so a plugin can tell a retry from a new flow.
    pub id: u64,
    /// The Service port (and address family) the flow is for; keys per-Service state.
    pub handle: u32,
    /// The Service port's protocol.
    pub protocol: Protocol,
    /// The client's address as the node received it (IPv4 as [`IpAddr::V4`]).
    pub client: IpAddr,
    /// The client's source port.
    pub client_port: u16,
    /// The node address the client connected to.
    pub node: IpAddr,
    /// The nodePort.
    pub node_port: u16,
    /// A 64-bit hash of (protocol, client, node), the same on every worker and every run,
    /// or of the affinity key when there is one: hash on this, not on the addresses, so
    /// that every node and worker picks alike.
    pub hash: u64,
}

/// The Service port (one address family of it) a handle names, given to
/// [`Plugin::configure`] so that a plugin can size or label its per-Service state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// The name every later call uses for this Service port; stable while it exists.
    pub handle: u32,
    /// Service namespace, for log lines an operator can act on.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Service port name ("" when unnamed).
    pub port_name: String,
    /// Its nodePort.
    pub node_port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// True for the IPv6 half of a dual-stack port, so per-family defaults can differ.
    pub ipv6: bool,
    /// externalTrafficPolicy Local: only node-local endpoints will be offered.
    pub local_traffic_policy: bool,
}

/// An endpoint that may take new flows, after the host applied externalTrafficPolicy,
/// topology and the serving/terminating fallbacks as kube-proxy does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Endpoint address (IPv4 as [`IpAddr::V4`]).
    pub addr: IpAddr,
    /// Endpoint (target) port.
    pub port: u16,
    /// On this node: lets a plugin prefer local endpoints.
    pub node_local: bool,
    /// Topology zone of the endpoint ("" when the EndpointSlice does not say).
    pub zone: String,
    /// `conditions.ready`: the host may offer not-ready endpoints when nothing else serves.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// Relative weight; 1 for every endpoint until Kubernetes gives endpoints weights.
    pub weight: u32,
}

impl Backend {
    /// A stable 64-bit hash of the endpoint's identity (address and port).
    ///
    /// Selection state should be keyed by endpoint identity, not by list position: the host
    /// may reorder the list on every change, and a position-keyed plugin would move clients.
    pub fn key_hash(&self) -> u64 {
        let addr = match self.addr {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let bits = u128::from(addr);
        let h = mix((bits >> 64) as u64) ^ (bits as u64);
        mix(mix(h) ^ u64::from(self.port))
    }
}

/// Why an admission plugin refused a flow. The host uses it as a metric label, so the set is
/// closed: pick the nearest, or [`DenyReason::Policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The client address is outside the allowed ranges.
    SourceNotAllowed,
    /// The client or Service is over its rate.
    RateLimited,
    /// The Service is over a concurrency or capacity limit.
    OverCapacity,
    /// Any other policy.
    Policy,
}

/// The answer of [`Admission::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let the flow through to affinity and selection.
    Allow,
    /// Refuse it: TCP is reset, the UDP datagram dropped.
    Deny(DenyReason),
}

/// The answer of [`Affinity::affinity_key`]: flows with equal keys go to the same endpoint
/// while the host's entry for the key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The key; the host keeps the key -> endpoint table, so any well-mixed value works.
    pub key: u64,
    /// Entry lifetime in seconds after the last flow that used it; 0 means the Service's
    /// sessionAffinityConfig timeout (or 10800 s).
    pub ttl_seconds: u32,
}

/// What every plugin is: one value per plugin instance, configured per Service port.
///
/// `Default` because the SDK creates the value itself on first use; `'static` because it
/// lives for the whole instance.
pub trait Plugin: Default + 'static {
    /// Called once per Service handle before any other call with it, and again with a new
    /// handle when the Service's `nodeportd.dev/config.<plugin>` annotation changes (`config`
    /// is "" when the annotation is absent).
    ///
    /// Parse and validate here, not per flow: an `Err` keeps the Service off this plugin and
    /// is shown to the operator, so make it name the offending part of the config.
    fn configure(&mut self, service: &Service, config: &str) -> Result<(), String> {
        let _ = (service, config);
        Ok(())
    }

    /// The handle is gone (Service removed, or reconfigured under a new handle): drop every
    /// bit of state kept for it, or the instance leaks across Service churn.
    fn forget(&mut self, handle: u32) {
        let _ = handle;
    }
}

/// Role: whether a new flow is admitted at all. Runs before affinity and selection on
/// every new flow, so keep it cheap.
pub trait Admission: Plugin {
    /// Decides one new flow.
    fn admit(&mut self, flow: &Flow) -> Verdict;
}

/// Role: which endpoint takes a new flow.
pub trait Selection: Plugin {
    /// The Service port's endpoints, in the order [`Selection::select`] indexes; called after
    /// `configure` and whenever they change (possibly with an empty list). Precompute here:
    /// this runs on endpoint changes, `select` runs on every flow.
    fn set_backends(&mut self, handle: u32, backends: Vec<Backend>);

    /// An index into the last `set_backends` list for `flow.handle`, or `None` for "no
    /// endpoint" (the flow is refused).
    ///
    /// After a failed connect the host asks again for the same flow (same `flow.id`) with
    /// the index that failed in `excluded`. Returning an index that already failed for this
    /// flow, or one out of range, is a plugin failure.
    fn select(&mut self, flow: &Flow, excluded: Option<u32>) -> Option<u32>;
}

/// Role: which flows stick together. The host keeps the key -> endpoint table; the plugin
/// only says which key a flow belongs to.
pub trait Affinity: Plugin {
    /// A key for this flow, or `None` for "no affinity".
    fn affinity_key(&mut self, flow: &Flow) -> Option<AffinityKey>;
}

/// The host's monotonic clock in nanoseconds (arbitrary origin, the same for every plugin).
///
/// Plugins have no WASI, so this is their only clock: use it for rates and expiry.
///
/// Outside wasm (a plugin's native unit tests) it reads the process's monotonic clock instead.
pub fn now_nanos() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return host::now_nanos();
    #[cfg(not(target_arch = "wasm32"))]
    {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// 64 random bits from the host's per-worker generator: plugins have no other entropy
/// source, and a fixed seed would make every worker and node choose alike.
///
/// Outside wasm (native unit tests) it uses std's randomly keyed hasher instead.
pub fn random_u64() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return host::random_u64();
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_nanos());
        h.finish()
    }
}

/// Per-Service state keyed by the host's handle, with a cheap hash. Handles are chosen by the
/// host, never by clients, so no keyed hash is needed; a per-flow lookup then costs a few
/// nanoseconds instead of a SipHash round. For client-derived keys use [`RandomState`].
pub type HandleMap<V> = std::collections::HashMap<u32, V, BuildHandleHasher>;

/// Builds [`HandleHasher`]s for [`HandleMap`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildHandleHasher;

impl std::hash::BuildHasher for BuildHandleHasher {
    type Hasher = HandleHasher;

    fn build_hasher(&self) -> HandleHasher {
        HandleHasher(0)
    }
}

/// Hashes a handle with [`mix`] (full avalanche, as hashbrown needs in high and low bits).
#[derive(Clone, Copy, Debug, Default)]
pub struct HandleHasher(u64);

impl std::hash::Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = self.0.rotate_left(32) ^ u64::from(n);
    }
}

/// A `BuildHasher` keyed from the host's random generator, for maps keyed by data a client
/// controls (addresses, ports).
///
/// std's own `RandomState` has no entropy source on wasm32-unknown-unknown and derives its
/// keys from memory addresses, which are the same in every instance: a client who knows them
/// could pick addresses that all collide and make every lookup linear. Use
/// `HashMap<K, V, nodeport_plugin::RandomState>`.
#[derive(Clone, Debug)]
pub struct RandomState {
    k0: u64,
    k1: u64,
}

impl Default for RandomState {
    fn default() -> Self {
        RandomState {
            k0: random_u64(),
            k1: random_u64(),
        }
    }
}

impl std::hash::BuildHasher for RandomState {
    #[allow(deprecated)] // SipHasher is deprecated only in favour of unstable names
    type Hasher = std::hash::SipHasher;

    #[allow(deprecated)]
    fn build_hasher(&self) -> Self::Hasher {
        std::hash::SipHasher::new_with_keys(self.k0, self.k1)
    }
}

/// A fast 64-bit mixer (the SplitMix64 finalizer): spreads nearby inputs over the whole
/// range, which `flow.hash ^ x` or small counters need before being compared or reduced.
#[inline]
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Helpers for plugins' native unit tests: endpoints, flows, and where a selection plugin
/// sends a run of flows. Every plugin's tests need the same fixtures.
pub mod testing {
    use super::{mix, Backend, Flow, Protocol, Selection, Service};

    /// Endpoint number `i` (10.0.0.0 + i, port 8080).
    pub fn backend(i: u32, ready: bool) -> Backend {
        Backend {
            addr: std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
            port: 8080,
            node_local: false,
            zone: String::new(),
            ready,
            serving: ready,
            terminating: false,
            weight: 1,
        }
    }

    /// A TCP flow of handle 1 whose host hash is `mix(n)`.
    pub fn flow(n: u64) -> Flow {
        Flow {
            id: n,
            handle: 1,
            protocol: Protocol::Tcp,
            client: std::net::Ipv4Addr::new(192, 0, 2, 1).into(),
            client_port: 40000,
            node: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
            node_port: 30080,
            hash: mix(n),
        }
    }

    /// Service handle 1 of `test/svc` (TCP nodePort 30080), for `configure`.
    pub fn service() -> Service {
        Service {
            handle: 1,
            namespace: "test".into(),
            name: "svc".into(),
            port_name: "http".into(),
            node_port: 30080,
            protocol: Protocol::Tcp,
            ipv6: false,
            local_traffic_policy: false,
        }
    }

    /// Checks the parts of the selection contract every selection plugin must keep: ready
    /// endpoints first; retries (each passing the index that just failed) never repeat an
    /// endpoint, reach every endpoint and leave the not-ready one last; no endpoints, an
    /// unknown handle or a forgotten one give None.
    pub fn check_selection_contract<S: Selection>() {
        let mut p = S::default();
        p.set_backends(
            1,
            vec![backend(1, false), backend(2, true), backend(3, false)],
        );
        for h in 0..100 {
            assert_eq!(p.select(&flow(h), None), Some(1));
        }
        // once the ready one failed, not-ready ones are still better than nothing
        assert!(matches!(p.select(&flow(7), Some(1)), Some(0 | 2)));

        let mut p = S::default();
        p.set_backends(1, (0..6).map(|i| backend(i, i != 2)).collect());
        for h in 0..200 {
            let f = flow(h);
            let mut tried = vec![];
            let mut excluded = None;
            while let Some(i) = p.select(&f, excluded) {
                assert!(
                    !tried.contains(&i),
                    "flow {h} got {i} again after {tried:?}"
                );
                tried.push(i);
                excluded = Some(i);
            }
            assert_eq!(tried.len(), 6, "flow {h}: {tried:?}");
            assert_eq!(tried[5], 2, "the not-ready endpoint comes last");
        }

        let mut p = S::default();
        assert_eq!(p.select(&flow(1), None), None);
        p.set_backends(1, vec![]);
        assert_eq!(p.select(&flow(1), None), None);
        p.set_backends(1, vec![backend(1, true)]);
        assert_eq!(p.select(&flow(1), None), Some(0));
        p.forget(1);
        assert_eq!(p.select(&flow(1), None), None);
    }

    /// The endpoint (its number in `ids`, not its index) a fresh `S` picks for each of `n`
    /// flows, with endpoints `ids` (all ready) on handle 1.
    pub fn assignment<S: Selection>(ids: &[u32], n: u64) -> Vec<u32> {
        let mut p = S::default();
        p.set_backends(1, ids.iter().map(|&i| backend(i, true)).collect());
        (0..n)
            .filter_map(|h| p.select(&flow(h), None))
            .map(|i| ids[i as usize])
            .collect()
    }
}

/// Helpers for the `key=value,key=value` configuration syntax the shipped plugins share.
///
/// Configuration arrives as one annotation string; a common syntax keeps annotations
/// predictable for operators, and errors that name the offending entry make a rejected
/// configuration quick to fix.
pub mod config {
    /// Splits `config` into `(key, value)` pairs: entries are separated by commas, keys and
    /// values by `=`, whitespace around either is ignored, empty entries are skipped. An entry
    /// without `=` or with an empty key is an error naming it; keys are not checked (match on
    /// them and reject the unknown ones, so typos do not pass silently).
    pub fn pairs(config: &str) -> Result<Vec<(&str, &str)>, String> {
        let mut out = Vec::new();
        for entry in config.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => out.push((k.trim(), v.trim())),
                _ => return Err(format!("`{entry}`: expected key=value")),
            }
        }
        Ok(out)
    }

    /// Parses a number for key `key`, with an error that names the key and the value.
    pub fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
        value
            .parse()
            .map_err(|_| format!("`{key}={value}`: expected a non-negative integer"))
    }

    /// The error for an unknown key, listing the known ones so the operator sees the fix.
    pub fn unknown(key: &str, known: &[&str]) -> String {
        format!("unknown key `{key}` (known: {})", known.join(", "))
    }
}

/// Writing to the daemon's log.
///
/// Lines are tagged by the host with the plugin and worker and rate-limited there (lines over
/// the limit are counted and dropped), so logging from a per-flow call cannot flood the log,
/// but it still costs a call across the sandbox: log changes and errors, not every flow.
pub mod log {
    /// Log severity.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Level {
        /// Something failed.
        Error,
        /// Something is off but handled.
        Warn,
        /// Normal, notable events (configuration accepted, endpoints changed).
        Info,
        /// Detail for debugging.
        Debug,
    }

    /// Writes one line; the macros below format and call this. Outside wasm (native unit
    /// tests) the line goes to stderr.
    pub fn write(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        {
            use crate::__private::bindings::nodeport::plugin::host;
            let level = match level {
                Level::Error => host::Level::Error,
                Level::Warn => host::Level::Warn,
                Level::Info => host::Level::Info,
                Level::Debug => host::Level::Debug,
            };
            host::log(level, message);
        }
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("[{level:?}] {message}");
    }

    #[doc(inline)]
    pub use crate::__log_debug as debug;
    #[doc(inline)]
    pub use crate::__log_error as error;
    #[doc(inline)]
    pub use crate::__log_info as info;
    #[doc(inline)]
    pub use crate::__log_warn as warn;
}

/// Logs at error level with `format!` syntax: `log::error!("bad state for {handle}")`.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_error {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Error, &::std::format!($($arg)+)) };
}

/// Logs at warn level with `format!` syntax.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}

/// Logs at info level with `format!` syntax.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_info {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)+)) };
}

/// Logs at debug level with `format!` syntax.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}

/// Makes a plugin type the component's implementation and exports the roles it plays.
///
/// ```ignore
/// nodeport_plugin::export!(MyPlugin: admission, selection, affinity); // any subset, any order
/// nodeport_plugin::export!(MyPlugin);                                 // lifecycle only
/// ```
///
/// Call it once per plugin crate (a `cdylib`). The component exports
/// `nodeport:plugin/lifecycle@0.1.0` and, for each role listed, `nodeport:plugin/<role>@0.1.0`;
/// the type must implement the matching trait ([`Admission`], [`Selection`], [`Affinity`])
/// for each role listed. Roles not listed are not exported even if the trait is implemented,
/// because the host reads a plugin's roles from its exports.
#[macro_export]
macro_rules! export {
    // Sort the roles into three slots (admission, selection, affinity) so that every order
    // of the same set picks the same world.
    (@sort $ty:ty; [] $s:tt $f:tt; admission $($rest:ident)*) => {
        $crate::export!(@sort $ty; [admission] $s $f; $($rest)*);
    };
    (@sort $ty:ty; $a:tt [] $f:tt; selection $($rest:ident)*) => {
        $crate::export!(@sort $ty; $a [selection] $f; $($rest)*);
    };
    (@sort $ty:ty; $a:tt $s:tt []; affinity $($rest:ident)*) => {
        $crate::export!(@sort $ty; $a $s [affinity]; $($rest)*);
    };
    (@sort $ty:ty; $a:tt $s:tt $f:tt; $role:ident $($rest:ident)*) => {
        ::core::compile_error!(::core::concat!(
            "`", ::core::stringify!($role),
            "` is listed twice or is not a role: expected admission, selection or affinity"
        ));
    };
    (@sort $ty:ty; [] [] []; ) => { $crate::export!(@world $ty; lifecycle_only;); };
    (@sort $ty:ty; [admission] [] []; ) => {
        $crate::export!(@world $ty; admission; admission);
    };
    (@sort $ty:ty; [] [selection] []; ) => {
        $crate::export!(@world $ty; selection; selection);
    };
    (@sort $ty:ty; [] [] [affinity]; ) => {
        $crate::export!(@world $ty; affinity; affinity);
    };
    (@sort $ty:ty; [admission] [selection] []; ) => {
        $crate::export!(@world $ty; admission_selection; admission selection);
    };
    (@sort $ty:ty; [admission] [] [affinity]; ) => {
        $crate::export!(@world $ty; admission_affinity; admission affinity);
    };
    (@sort $ty:ty; [] [selection] [affinity]; ) => {
        $crate::export!(@world $ty; selection_affinity; selection affinity);
    };
    (@sort $ty:ty; [admission] [selection] [affinity]; ) => {
        $crate::export!(@world $ty; admission_selection_affinity; admission selection affinity);
    };
    (@world $ty:ty; $world:ident; $($role:ident)*) => {
        const _: () = {
            struct __NodeportPlugin;

            ::std::thread_local! {
                static __INSTANCE: ::core::cell::RefCell<$ty> =
                    ::core::cell::RefCell::new($crate::__private::new_instance::<$ty>());
            }

            impl $crate::__private::Instance for __NodeportPlugin {
                type Plugin = $ty;
                fn with<R>(f: impl ::core::ops::FnOnce(&mut $ty) -> R) -> R {
                    __INSTANCE.with(|cell| f(&mut cell.borrow_mut()))
                }
            }

            // Native builds (unit tests) have no use for the exports, and their linkers reject
            // the component-model export names.
            #[cfg(target_arch = "wasm32")]
            $crate::__private::bindings::exports::nodeport::plugin::lifecycle
                ::__export_nodeport_plugin_lifecycle_0_1_0_cabi!(
                    __NodeportPlugin with_types_in
                    $crate::__private::bindings::exports::nodeport::plugin::lifecycle
                );
            $( $crate::export!(@role $ty; $role); )*

            // The component-type metadata naming exactly these exports: wasm-component-ld
            // builds the component's exports from it.
            #[cfg(target_arch = "wasm32")]
            #[unsafe(link_section = "component-type:nodeport-plugin:0.1.0:roles")]
            #[used]
            #[doc(hidden)]
            static __NODEPORT_WORLD: [u8; $crate::__private::worlds::$world.len()] =
                $crate::__private::worlds::$world;
        };
    };
    (@role $ty:ty; admission) => {
        const _: fn() = $crate::__private::assert_admission::<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::__private::bindings::exports::nodeport::plugin::admission
            ::__export_nodeport_plugin_admission_0_1_0_cabi!(
                __NodeportPlugin with_types_in
                $crate::__private::bindings::exports::nodeport::plugin::admission
            );
    };
    (@role $ty:ty; selection) => {
        const _: fn() = $crate::__private::assert_selection::<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::__private::bindings::exports::nodeport::plugin::selection
            ::__export_nodeport_plugin_selection_0_1_0_cabi!(
                __NodeportPlugin with_types_in
                $crate::__private::bindings::exports::nodeport::plugin::selection
            );
    };
    (@role $ty:ty; affinity) => {
        const _: fn() = $crate::__private::assert_affinity::<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::__private::bindings::exports::nodeport::plugin::affinity
            ::__export_nodeport_plugin_affinity_0_1_0_cabi!(
                __NodeportPlugin with_types_in
                $crate::__private::bindings::exports::nodeport::plugin::affinity
            );
    };
    ($ty:ty) => { $crate::export!(@sort $ty; [] [] [];); };
    ($ty:ty : $($role:ident),* $(,)?) => { $crate::export!(@sort $ty; [] [] []; $($role)*); };
}

fn ip_from_wit(a: wit::Address) -> IpAddr {
    let bits = (u128::from(a.hi) << 64) | u128::from(a.lo);
    Ipv6Addr::from(bits).to_canonical()
}

impl From<wit::Protocol> for Protocol {
    fn from(p: wit::Protocol) -> Self {
        match p {
            wit::Protocol::Tcp => Protocol::Tcp,
            wit::Protocol::Udp => Protocol::Udp,
        }
    }
}

impl From<wit::Flow> for Flow {
    fn from(f: wit::Flow) -> Self {
        Flow {
            id: f.id,
            handle: f.handle,
            protocol: f.protocol.into(),
            client: ip_from_wit(f.client),
            client_port: f.client_port,
            node: ip_from_wit(f.node),
            node_port: f.node_port,
            hash: f.hash,
        }
    }
}

impl From<wit::Service> for Service {
    fn from(s: wit::Service) -> Self {
        Service {
            handle: s.handle,
            namespace: s.namespace,
            name: s.name,
            port_name: s.port_name,
            node_port: s.node_port,
            protocol: s.protocol.into(),
            ipv6: s.ipv6,
            local_traffic_policy: s.local_traffic_policy,
        }
    }
}

impl From<wit::Backend> for Backend {
    fn from(b: wit::Backend) -> Self {
        Backend {
            addr: ip_from_wit(b.address),
            port: b.port,
            node_local: b.node_local,
            zone: b.zone,
            ready: b.ready,
            serving: b.serving,
            terminating: b.terminating,
            weight: b.weight,
        }
    }
}

impl From<Verdict> for wit::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => wit::Verdict::Allow,
            Verdict::Deny(r) => wit::Verdict::Deny(match r {
                DenyReason::SourceNotAllowed => wit::DenyReason::SourceNotAllowed,
                DenyReason::RateLimited => wit::DenyReason::RateLimited,
                DenyReason::OverCapacity => wit::DenyReason::OverCapacity,
                DenyReason::Policy => wit::DenyReason::Policy,
            }),
        }
    }
}

impl From<AffinityKey> for wit::Affinity {
    fn from(k: AffinityKey) -> Self {
        wit::Affinity {
            key: k.key,
            ttl_seconds: k.ttl_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn v4_mapped_addresses_become_v4() {
        let a = wit::Address {
            hi: 0,
            lo: 0x0000_ffff_c612_0001,
        };
        assert_eq!(ip_from_wit(a), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
    }

    #[test]
    fn v6_addresses_keep_both_halves() {
        let a = wit::Address {
            hi: 0x2001_0db8_0000_0000,
            lo: 0x0000_0000_0000_0001,
        };
        assert_eq!(ip_from_wit(a), "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn config_pairs_trim_and_reject_malformed_entries() {
        assert_eq!(
            config::pairs(" a = 1 ,, b=x ").unwrap(),
            vec![("a", "1"), ("b", "x")]
        );
        assert_eq!(config::pairs("").unwrap(), vec![]);
        assert!(config::pairs("a=1,oops").unwrap_err().contains("`oops`"));
        assert!(config::pairs("=3").is_err());
        assert_eq!(config::number::<u32>("v4", "24"), Ok(24));
        assert!(config::number::<u32>("v4", "-1")
            .unwrap_err()
            .contains("v4=-1"));
    }

    #[test]
    fn key_hash_depends_on_address_and_port() {
        let b = |addr: &str, port| Backend {
            addr: addr.parse().unwrap(),
            port,
            node_local: false,
            zone: String::new(),
            ready: true,
            serving: true,
            terminating: false,
            weight: 1,
        };
        let base = b("10.0.0.1", 80).key_hash();
        assert_eq!(base, b("10.0.0.1", 80).key_hash());
        assert_ne!(base, b("10.0.0.1", 81).key_hash());
        assert_ne!(base, b("10.0.0.2", 80).key_hash());
        assert_eq!(base, b("::ffff:10.0.0.1", 80).key_hash());
    }
}
