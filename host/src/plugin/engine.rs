//! The wasmtime Engine and what makes a synchronous component call cheap: the pooling
//! allocator sized for `max_instances` slots, and how linear memory is guarded.
//!
//! By default every memory slot reserves 4 GiB of address space plus a 32 MiB guard, so
//! Cranelift drops the explicit bounds check on every guest load and store and an
//! out-of-bounds access is caught by the MMU (signals-based traps, wasmtime's default). This
//! costs address space only: untouched reservation is `PROT_NONE`, has no page tables and is
//! not counted as committed memory, and the store limiter still caps what an instance may
//! grow to (`--plugin-memory-mib`). Where that much address space is unwelcome (a 32-bit
//! host, `ulimit -v`, a sandbox that refuses the mapping), the engine is built with
//! reservations of the cap only and explicit checks: chosen with
//! `--plugin-explicit-bounds-checks`, or taken by itself when the large pool cannot be made.

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::runtime::RuntimeConfig;

/// Address space each memory slot reserves when bounds checks are elided: all of a 32-bit
/// memory's index space.
const FULL_RESERVATION: u64 = 4 << 30;
/// The guard after each elided-checks slot: covers any static offset a compiler emits.
const FULL_GUARD: u64 = 32 << 20;
/// The guard after each slot when checks are explicit (only catches the check's own slack).
const SMALL_GUARD: u64 = 64 << 10;
/// Linear memories per component: wasm-component-ld's main module plus its fixup shim.
const MEMORIES_PER_COMPONENT: u32 = 2;

/// How the engine's linear memories are laid out, for logs and `plugin bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// True when guest loads and stores carry no explicit bounds check.
    pub bounds_checks_elided: bool,
    /// Address space reserved for each memory (`Config::memory_reservation`).
    pub reservation: u64,
    /// The guard region after each memory (`Config::memory_guard_size`).
    pub guard: u64,
    /// Memory slots in the pool.
    pub slots: u32,
}

impl MemoryLayout {
    /// Address space one memory slot takes (reservation plus guard).
    pub fn slot_bytes(&self) -> u64 {
        self.reservation + self.guard
    }

    /// Address space the whole pool reserves (not memory: untouched pages cost nothing).
    pub fn reserved_bytes(&self) -> u64 {
        self.slot_bytes().saturating_mul(u64::from(self.slots))
    }
}

impl std::fmt::Display for MemoryLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = self.reserved_bytes() as f64 / f64::from(1u32 << 30);
        write!(
            f,
            "bounds checks {}, {} memory slots of {} MiB address space ({gib:.1} GiB reserved, not committed)",
            if self.bounds_checks_elided {
                "elided (guard pages)"
            } else {
                "explicit"
            },
            self.slots,
            self.slot_bytes() >> 20,
        )
    }
}

/// Builds the engine for `cfg`. With elided checks wanted but refused by the host, it says
/// why and builds the explicit-checks engine instead; an error only when neither can be built.
pub fn build(cfg: &RuntimeConfig) -> anyhow::Result<(Engine, MemoryLayout)> {
    if !cfg.explicit_bounds_checks {
        let layout = layout(cfg, true);
        match Engine::new(&config(cfg, &layout)) {
            Ok(engine) => return Ok((engine, layout)),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                reserve_gib = layout.reserved_bytes() >> 30,
                "cannot build the plugin engine with guard pages (reserving address space \
                 for plugin memories); using explicit bounds checks (slower plugin calls)"
            ),
        }
    }
    let layout = layout(cfg, false);
    Ok((Engine::new(&config(cfg, &layout))?, layout))
}

/// The memory slots `cfg` asks for, with or without elided checks.
fn layout(cfg: &RuntimeConfig, elide: bool) -> MemoryLayout {
    let cap = cap(cfg);
    let (reservation, guard) = if elide {
        (FULL_RESERVATION.max(cap), FULL_GUARD)
    } else {
        (cap, SMALL_GUARD)
    };
    MemoryLayout {
        bounds_checks_elided: elide,
        reservation,
        guard,
        slots: cfg.max_instances.max(1) * MEMORIES_PER_COMPONENT,
    }
}

/// The per-instance memory cap, in whole wasm pages.
fn cap(cfg: &RuntimeConfig) -> u64 {
    (cfg.memory_limit as u64).next_multiple_of(64 << 10)
}

/// The wasmtime settings for `layout`.
fn config(cfg: &RuntimeConfig, layout: &MemoryLayout) -> Config {
    let slots = cfg.max_instances.max(1);
    let cap = cap(cfg);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        // a component from wasm-component-ld has up to three core modules (main, shim, fixup)
        .total_core_instances(slots * 4)
        .total_memories(layout.slots)
        .total_tables(slots * 4)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(4)
        .max_memory_size(cap as usize)
        // keep this many idle slots warm so instantiation is a reuse, not an mmap
        .max_unused_warm_slots(slots.min(100));
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        // out-of-bounds accesses fault into wasmtime's handler instead of being checked
        .signals_based_traps(true)
        .memory_reservation(layout.reservation)
        .memory_guard_size(layout.guard)
        .memory_reservation_for_growth(0)
        // nothing here runs guests concurrently: the Store skips that bookkeeping
        .concurrency_support(false)
        .max_wasm_stack(256 << 10);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_engine_elides_bounds_checks_for_a_thousand_instances() {
        let cfg = RuntimeConfig::default();
        let wanted = layout(&cfg, true);
        assert_eq!(wanted.slots, 2000);
        assert_eq!(wanted.slot_bytes(), (4 << 30) + (32 << 20));
        // about 8 TiB of address space; a 47-bit user address space has 128 TiB
        assert_eq!(wanted.reserved_bytes() >> 30, 8062);
        let (_engine, built) = build(&cfg).expect("engine");
        // Only a limit on the address space (ulimit -v) may refuse the reservation.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) }, 0);
        if limit.rlim_cur == libc::RLIM_INFINITY {
            assert!(built.bounds_checks_elided, "{built}");
        } else {
            assert_eq!(built.reserved_bytes(), layout(&cfg, false).reserved_bytes());
        }
    }

    #[test]
    fn explicit_checks_reserve_only_the_cap() {
        let cfg = RuntimeConfig {
            explicit_bounds_checks: true,
            max_instances: 10,
            memory_limit: 1 << 20,
            ..Default::default()
        };
        let (_engine, layout) = build(&cfg).expect("engine");
        assert!(!layout.bounds_checks_elided);
        assert_eq!(layout.slot_bytes(), (1 << 20) + (64 << 10));
        assert_eq!(layout.reserved_bytes(), 20 * ((1 << 20) + (64 << 10)));
    }
}
