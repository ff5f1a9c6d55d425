//! The `nodeportd plugin` commands as an operator runs them: `check` says what a component
//! exports and which memory layout the engine uses (and falls back to explicit bounds checks
//! when the address space is limited), `bench` reports per-call costs.

use std::io;
use std::time::Duration;

use nodeportd_e2e::*;

/// `nodeportd plugin <args>`, where `@name` stands for the built plugin `name`.
fn command(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(binary());
    c.arg("plugin");
    for a in args {
        match a.strip_prefix('@') {
            Some(name) => c.arg(built_plugin(name)),
            None => c.arg(a),
        };
    }
    c
}

/// Runs `c` to its end (at most `bound`): whether it succeeded, its stdout and stderr.
fn outcome(c: std::process::Command, bound: Duration) -> (bool, String, String) {
    let out = run_bounded(c, bound);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugin_check_and_bench_commands() {
    let (ok, out, err) = check_with(None, &[]);
    assert!(ok, "check failed: {out} {err}");
    assert!(
        out.contains("roles:   selection") && out.contains("nodeport:plugin/host@0.1.0"),
        "{out}"
    );
    assert!(
        out.contains("memory:  bounds checks elided (guard pages), 2000 memory slots"),
        "the default engine elides bounds checks: {out}"
    );

    let minute = Duration::from_secs(60);
    let (ok, _, err) = outcome(command(&["check", "@hostile/wrong-exports"]), minute);
    assert!(!ok, "a wrong component passed the check");
    assert!(
        err.contains("does not export nodeport:plugin/lifecycle@0.1.0")
            && err.contains("nodeport:plugin/selection@0.2.0"),
        "the check says exactly what is wrong: {err}"
    );

    let (ok, out, err) = outcome(
        command(&[
            "bench",
            "--flows",
            "2000",
            "--backends",
            "8",
            "@consistent-hash",
            "--boundary",
            "@fixtures/empty",
        ]),
        Duration::from_secs(120),
    );
    assert!(ok, "bench failed: {out} {err}");
    for line in [
        "instantiate",
        "set-backends",
        "select",
        "  boundary select",
        "  logic select",
        "memory",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "bench prints {line}: {out}"
        );
    }
    assert!(out.contains("p99"), "{out}");
}

/// Runs `plugin check` on consistent-hash with `extra` flags, its address space limited to
/// `limit` bytes (RLIMIT_AS, as `ulimit -v` sets it) when given.
fn check_with(limit: Option<u64>, extra: &[&str]) -> (bool, String, String) {
    let mut c = command(&["check", "@consistent-hash"]);
    c.args(extra);
    if let Some(bytes) = limit {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }
    outcome(c, Duration::from_secs(60))
}

#[test]
fn a_host_that_limits_address_space_gets_explicit_bounds_checks() {
    // 256 GiB: room for 2,000 memories of the 64 MiB cap (125 GiB), not for 2,000 guarded
    // 4 GiB reservations (8 TiB).
    let (ok, out, err) = check_with(Some(256 << 30), &[]);
    assert!(ok, "the check works under the limit: {out} {err}");
    assert!(
        out.contains("memory:  bounds checks explicit, 2000 memory slots of 64 MiB"),
        "the engine fell back to explicit checks: {out}"
    );
    assert!(
        err.contains("cannot build the plugin engine with guard pages")
            && err.contains("reserve_gib=8062"),
        "the fallback says why and how much it wanted: {err}"
    );
    // The operator's flag chooses explicit checks without trying, so nothing is logged.
    let (ok, out, err) = check_with(None, &["--plugin-explicit-bounds-checks"]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("memory:  bounds checks explicit"), "{out}");
    assert!(!err.contains("cannot build the plugin engine"), "{err}");
}
