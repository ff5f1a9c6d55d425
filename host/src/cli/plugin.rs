//! `nodeportd plugin check|bench`: the contract check an operator runs before deploying a
//! plugin, and the one benchmark every plugin is measured with.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;

use super::{PluginArgs, PluginCommand, PluginLimits};
use crate::metrics::Role;
use crate::plugin::bindings::types;
use crate::plugin::wire::{address, protocol};
use crate::plugin::{Instance, Plugin, Runtime};

/// Runs a `plugin` subcommand.
pub fn run(args: PluginArgs) -> anyhow::Result<()> {
    match args.command {
        PluginCommand::Check { file, limits } => check(&file, &limits),
        PluginCommand::Bench {
            file,
            backends,
            flows,
            config,
            limits,
            boundary,
        } => bench(
            &file,
            backends,
            flows.max(1),
            &config,
            boundary.as_deref(),
            &limits,
        ),
    }
}

fn name_of(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into())
}

fn load(rt: &Arc<Runtime>, file: &Path) -> anyhow::Result<(Arc<Plugin>, usize, Duration)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let t0 = Instant::now();
    let plugin = rt.load(&name_of(file), &bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: does not match the contract nodeport:plugin@0.1.0: {e}",
            file.display()
        )
    })?;
    Ok((plugin, bytes.len(), t0.elapsed()))
}

fn check(file: &Path, limits: &PluginLimits) -> anyhow::Result<()> {
    let rt = Runtime::new(limits.runtime(), Counter::default())?;
    let (p, size, _) = load(&rt, file)?;
    println!("plugin:  {} ({} bytes, sha256 {})", p.name, size, p.digest);
    println!("roles:   {}", p.roles);
    println!(
        "imports: {}",
        if p.imports.is_empty() {
            "none".to_string()
        } else {
            p.imports.join(", ")
        }
    );
    println!("exports: {}", p.exports.join(", "));
    println!("memory:  {}", rt.memory_layout());
    println!("ok: matches nodeport:plugin@0.1.0");
    Ok(())
}

/// The `p` percentile of sorted nanosecond samples.
fn pct(sorted: &[u64], p: f64) -> u64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0;
    };
    sorted[((last as f64 * p).round() as usize).min(last)]
}

/// Prints the percentiles of nanosecond samples; returns (p50, p99).
fn report(what: &str, samples: &mut [u64]) -> (u64, u64) {
    samples.sort_unstable();
    let p50 = pct(samples, 0.50);
    let p99 = pct(samples, 0.99);
    let max = samples.last().copied().unwrap_or(0);
    println!(
        "{what:<22} p50 {p50:>8} ns   p99 {p99:>8} ns   max {max:>9} ns   ({} calls)",
        samples.len()
    );
    (p50, p99)
}

/// A synthetic flow from client `i` in 198.18.0.0/15.
fn flow(i: usize, handle: u32) -> types::Flow {
    let client = std::net::Ipv4Addr::from(0xc612_0000u32 | (i as u32 & 0x1_ffff));
    types::Flow {
        id: i as u64,
        handle,
        protocol: protocol(crate::model::Protocol::Tcp),
        client: address(client.into()),
        client_port: 1024 + (i % 60000) as u16,
        node: address(std::net::Ipv4Addr::new(198, 19, 0, 1).into()),
        node_port: 30080,
        hash: crate::policy::mix(i as u64),
    }
}

/// Times 200 instantiations from the template (a pooling slot, no compilation).
fn instantiations(rt: &Runtime, plugin: &Plugin) -> anyhow::Result<Vec<u64>> {
    let mut inst_ns = Vec::with_capacity(200);
    for i in 0..200 {
        let t0 = Instant::now();
        let inst =
            Instance::new(rt, plugin, 0, i).map_err(|f| anyhow::anyhow!("instantiate: {f}"))?;
        inst_ns.push(t0.elapsed().as_nanos() as u64);
        drop(inst);
    }
    Ok(inst_ns)
}

/// What making the measured instance took.
struct SetupTimes {
    configure: Duration,
    /// None for a plugin without the selection role.
    set_backends: Option<Duration>,
}

/// Makes the instance the calls are measured on: configured with `config` and, for a
/// selection plugin, given `n_backends` endpoints (both timed).
fn setup(
    rt: &Runtime,
    plugin: &Plugin,
    n_backends: usize,
    config: &str,
) -> anyhow::Result<(Instance, SetupTimes)> {
    let mut inst =
        Instance::new(rt, plugin, 0, 1).map_err(|f| anyhow::anyhow!("instantiate: {f}"))?;
    let service = types::Service {
        handle: 0,
        namespace: "bench".into(),
        name: "bench".into(),
        port_name: String::new(),
        node_port: 30080,
        protocol: types::Protocol::Tcp,
        ipv6: false,
        local_traffic_policy: false,
    };
    let t0 = Instant::now();
    inst.configure(&service, config)
        .map_err(|f| anyhow::anyhow!("{}: configure failed: {f}", plugin.name))?
        .map_err(|e| anyhow::anyhow!("{}: configure refused {config:?}: {e}", plugin.name))?;
    let configure = t0.elapsed();
    let mut set_backends = None;
    if plugin.roles.selection {
        let list: Vec<types::Backend> = (0..n_backends)
            .map(|i| types::Backend {
                address: address(std::net::Ipv4Addr::from(0xc613_0000u32 | i as u32).into()),
                port: 8080,
                node_local: i % 4 == 0,
                zone: String::new(),
                ready: true,
                serving: true,
                terminating: false,
                weight: 1,
            })
            .collect();
        let t0 = Instant::now();
        inst.set_backends(0, &list)
            .map_err(|f| anyhow::anyhow!("{}: set-backends failed: {f}", plugin.name))?;
        set_backends = Some(t0.elapsed());
    }
    Ok((
        inst,
        SetupTimes {
            configure,
            set_backends,
        },
    ))
}

/// Times calls of `role` on `inst` for the flows numbered `flows`, one sample each;
/// `failures` counts calls that failed or answered out of contract.
fn measure(
    inst: &mut Instance,
    role: Role,
    flows: std::ops::Range<usize>,
    n_backends: usize,
    failures: &mut usize,
) -> Vec<u64> {
    let n = n_backends as u32;
    let mut samples = Vec::with_capacity(flows.len());
    for i in flows {
        let f = flow(i, 0);
        let t0 = Instant::now();
        let ok = match role {
            Role::Admission => inst.admit(f).is_ok(),
            Role::Affinity => inst.affinity_key(f).is_ok(),
            Role::Selection => matches!(inst.select(f, None), Ok(Some(i)) if i < n) || n == 0,
        };
        samples.push(t0.elapsed().as_nanos() as u64);
        *failures += usize::from(!ok);
    }
    samples
}

fn bench(
    file: &Path,
    n_backends: usize,
    flows: usize,
    config: &str,
    boundary: Option<&Path>,
    limits: &PluginLimits,
) -> anyhow::Result<()> {
    let rt = Runtime::new(limits.runtime(), Counter::default())?;
    let (plugin, size, compile) = load(&rt, file)?;
    println!(
        "plugin {} ({} bytes), roles: {}",
        plugin.name, size, plugin.roles
    );
    println!("{:<22} {}", "memory", rt.memory_layout());
    println!(
        "{:<22} {:>8.2} ms (includes the contract check)",
        "compile + check",
        compile.as_secs_f64() * 1e3
    );
    report("instantiate", &mut instantiations(&rt, &plugin)?);
    let (mut inst, times) = setup(&rt, &plugin, n_backends, config)?;
    println!("{:<22} {:>8} ns", "configure", times.configure.as_nanos());
    if let Some(t) = times.set_backends {
        let what = format!("({n_backends} endpoints)");
        println!("{:<22} {:>8} ns {what}", "set-backends", t.as_nanos());
    }
    // The calibration plugin, given the same endpoints, for the boundary of each role.
    let mut empty = match boundary {
        Some(f) => {
            let (p, _, _) = load(&rt, f)?;
            Some((setup(&rt, &p, n_backends, "")?.0, p))
        }
        None => None,
    };
    let mut failures = 0usize;
    for role in Role::ALL.into_iter().filter(|r| plugin.roles.has(*r)) {
        // Interleaved rounds, so drift in the machine's speed lands on both alike.
        let (mut own, mut base) = (Vec::with_capacity(flows), Vec::with_capacity(flows));
        let step = flows.div_ceil(10);
        for start in (0..flows).step_by(step) {
            let range = start..(start + step).min(flows);
            own.extend(measure(
                &mut inst,
                role,
                range.clone(),
                n_backends,
                &mut failures,
            ));
            if let Some((e, _)) = empty.as_mut().filter(|(_, p)| p.roles.has(role)) {
                base.extend(measure(e, role, range, n_backends, &mut 0));
            }
        }
        let call = role.call();
        let (p50, p99) = report(call, &mut own);
        if !base.is_empty() {
            let (b50, b99) = report(&format!("  boundary {call}"), &mut base);
            println!(
                "{:<22} p50 {:>8} ns   p99 {:>8} ns   (the plugin's own code, above the boundary)",
                format!("  logic {call}"),
                p50.saturating_sub(b50),
                p99.saturating_sub(b99)
            );
        }
    }
    println!(
        "{:<22} {:>8} KiB linear memory after the run",
        "memory",
        inst.memory_bytes() / 1024
    );
    if failures > 0 {
        anyhow::bail!("{failures} calls failed or answered out of contract");
    }
    Ok(())
}
