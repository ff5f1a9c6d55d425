#!/usr/bin/env bash
# End-to-end benchmark of nodeportd against the usual ways of exposing a
# NodePort: no proxy at all, kernel DNAT (what kube-proxy's nftables mode does)
# and HAProxy in TCP mode.
#
# Topology (three network namespaces, created and removed by this script):
#
#   client 198.18.0.2 <-veth-> 198.18.0.1  node  198.18.1.1 <-veth-> 198.18.1.2 server
#   (wrk, iperf3 -c)           (DNAT / HAProxy / nodeportd)          (nginx :80, iperf3 -s :5201)
#
# Paths, all measured the same way from the client namespace:
#   direct     client -> 198.18.1.2:80/5201, routed through the node, no proxy (upper bound)
#   dnat       198.18.0.1:30180 (HTTP) and :30201 (iperf3 tcp+udp), nftables DNAT + masquerade
#   haproxy    198.18.0.1:31080 and :31201, HAProxy mode tcp (TCP only, no UDP)
#   nodeportd  198.18.0.1:30080 and :30202 (tcp+udp), the binary in $NODEPORTD
#   wasm       the same nodeportd, the same ports, with the Service annotated to select its
#              endpoint with the consistent-hash WASM plugin (target/plugins, built by
#              scripts/build-plugins.sh): what a plugin decision costs per new flow
#
# Metrics per path (each load run lasts BENCH_SECONDS and is bounded by `timeout`):
#   rps_keepalive  wrk -t2 -c64, keep-alive requests/s                  (higher is better)
#   p50_ms/p99_ms  latency percentiles of that same run, milliseconds    (lower is better)
#   rps_newconn    wrk -t2 -c64 with 'Connection: close', i.e. one new
#                  TCP connection per request, requests/s                (higher is better)
#   tcp_gbps       iperf3 single TCP stream, received Gbit/s             (higher is better)
#   tcp4_gbps      iperf3 -P 4, four TCP streams together, received Gbit/s (higher is better)
#   tcp4_retrans   TCP segments retransmitted during that run in the client and node
#                  namespaces together: both legs of a proxy (RetransSegs)   (lower is better)
#   udp_mbps       iperf3 UDP, 1 Gbit/s offered in 1400-byte datagrams,
#                  delivered Mbit/s                                      (higher is better)
#   udp_loss_pct   lost datagrams in percent of those sent               (lower is better)
#   cpu_us_req     the forwarder's own CPU (utime+stime of its process over the run) per
#                  keep-alive request, microseconds                      (lower is better)
#   cpu_us_conn    the same per new connection (the Connection: close run)
#   cpu_us_dgram   the same per UDP datagram delivered
#   cs_req, cs_conn, cs_dgram   the forwarder's context switches (voluntary and not, every
#                  thread, from /proc) per keep-alive request, new connection and datagram:
#                  its wake-ups, what a forwarder sharing a CPU pays most for
#                  (HAProxy and nodeportd only: kernel DNAT works in softirq, not in a
#                  process; its rows are n/a)
#
# Reading the ratios: "A/B" is metric(A) / metric(B). For higher-is-better
# metrics a ratio above 1 means A beats B; for latency and loss (marked "lower"
# in the table) a ratio BELOW 1 means A beats B. nodeportd/DNAT says how close
# the userspace proxy gets to the in-kernel fast path; nodeportd/HAProxy
# compares it with a mature userspace proxy. Everything (load generator,
# proxy, backend) shares the same cores, so compare ratios, not absolute
# numbers across machines.
#
# Pinned mode (BENCH_PIN=1, the one the README's table comes from): the client (wrk,
# iperf3 -c) runs on CPU BENCH_CPU_CLIENT (0), the forwarder AND the backends (nginx, iperf3
# -s) share CPU BENCH_CPU_NODE (1), as on a busy node, where CPU the proxy takes is CPU the
# backends lose. Every forwarder gets the same thread count (HAProxy nbthread 2, nodeportd
# --workers 2). Unpinned, a proxy can borrow the client's idle CPU and look faster than it is.
#
# Usage (as root; installs wrk, iperf3, haproxy, nftables, nginx-light, jq, procps,
# curl with apt-get if missing):
#   benches/e2e.sh
# Environment:
#   BENCH_SECONDS   length of each load run in seconds (default 10)
#   BENCH_ONLY      comma list of paths to run: direct,dnat,haproxy,nodeportd,wasm (default all)
#   BENCH_JSON      if set, raw results are written there as JSON
#   NODEPORTD       nodeportd binary (default <repo>/target/release/nodeportd;
#                   the nodeportd path is skipped with a note if it is missing)
#   NODEPORTD_ARGS  extra arguments for `nodeportd run`, e.g. "--workers 2"
#   BENCH_KEEP      if 1, keep the temp dir with configs and logs
#   BENCH_PIN       1: pinned mode (above); 0 (default): everything floats over all CPUs
#   BENCH_CPU_CLIENT, BENCH_CPU_NODE   the CPUs of pinned mode (default 0 and 1)
#   BENCH_UDP_ARGS  extra iperf3 arguments for the UDP run, e.g. "-w 4M" (socket buffers of
#                   4 MiB at both ends: the default ~200 KiB holds about 1 ms of 1 Gbit/s)
#
# Traffic goes only to 198.18.0.0/15 addresses inside the namespaces created
# here (and to 127.0.0.1 inside the node namespace for nodeportd's admin port).
# All namespaces, processes and nftables rules are removed on exit, including
# on failure and Ctrl-C.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_ONLY="${BENCH_ONLY:-direct,dnat,haproxy,nodeportd,wasm}"
PLUGIN_DIR="${PLUGIN_DIR:-$REPO_ROOT/target/plugins}"
BENCH_JSON="${BENCH_JSON:-}"
BENCH_KEEP="${BENCH_KEEP:-0}"
NODEPORTD="${NODEPORTD:-$REPO_ROOT/target/release/nodeportd}"
NODEPORTD_ARGS="${NODEPORTD_ARGS:-}"
READY_TIMEOUT=10
# Open-file limit the servers may use: the hard limit (we do not try to raise
# it), capped at 65536 (plenty for 64 connections).
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited || $NOFILE -gt 65536 ]] && NOFILE=65536

ALL_PATHS=(direct dnat haproxy nodeportd wasm)
METRICS=(rps_keepalive p50_ms p99_ms rps_newconn tcp_gbps tcp4_gbps tcp4_retrans udp_mbps udp_loss_pct
    cpu_us_req cpu_us_conn cpu_us_dgram cs_req cs_conn cs_dgram)
BENCH_PIN="${BENCH_PIN:-0}"
BENCH_CPU_CLIENT="${BENCH_CPU_CLIENT:-0}"
BENCH_CPU_NODE="${BENCH_CPU_NODE:-1}"
# Command prefixes (exec'd by `ip netns exec`, so a background PID is the process itself).
PIN_CLIENT=() PIN_NODE=()
if [[ $BENCH_PIN == 1 ]]; then
    PIN_CLIENT=(taskset -c "$BENCH_CPU_CLIENT") PIN_NODE=(taskset -c "$BENCH_CPU_NODE")
fi
FWD_THREADS=2      # HAProxy nbthread and nodeportd --workers: the same for both

# Names unique per run so parallel runs do not collide.
RUN_ID="$$"
NS_C="npdb-${RUN_ID}-client"
NS_N="npdb-${RUN_ID}-node"
NS_S="npdb-${RUN_ID}-server"
NFT_TABLE="npdbench"

CLIENT_IP=198.18.0.2
NODE_IP=198.18.0.1
NODE_IP_S=198.18.1.1
SERVER_IP=198.18.1.2

WORK=""            # temp dir (configs, logs, raw outputs)
PIDS=()            # long-running processes we started (nginx, haproxy, nodeportd, iperf3 -s)
FG_PID=""          # the bounded measurement currently running, if any
FWD_PID=""         # the forwarder process of the path being measured (none: in the kernel)
CPU_US=""          # its CPU over the last wrk/iperf3 run, microseconds (empty: not known)
CS_N=""            # its context switches over that run (empty: not known)
CPU_T0="" CS_T0="" # the forwarder's CPU ticks and context switches when that run started
IPERF_SRV=""       # the current one-shot iperf3 server
WRK_RPS="" WRK_P50="" WRK_P99="" IPERF_JSON=""   # outputs of wrk_run / iperf_run
LOAD_AT_START=0
NFT_LOADED=0
CLEANED=0
FAILURES=0
declare -A RES=()  # RES[path.metric] = number, or empty when not measured
declare -A NOTE=() # NOTE[path] = why a path (or part of it) was skipped/failed

log()  { printf '[e2e] %s\n' "$*" >&2; }
warn() { printf '[e2e] WARNING: %s\n' "$*" >&2; }
die()  { printf '[e2e] ERROR: %s\n' "$*" >&2; exit 1; }

# Note: processes started in the background use `ip netns exec` directly, not
# in_ns, so that $! is the process itself (a backgrounded function would be a
# subshell) and kill_pid really stops it.
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

add_note() { NOTE[$1]="${NOTE[$1]:+${NOTE[$1]}; }$2"; }

# ---------------------------------------------------------------- cleanup --

alive() { # pid: running and not a zombie
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [[ ${s:0:1} != Z ]]
}

kill_pid() { # pid: TERM, wait up to 2 s, then KILL
    local pid=$1
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do
        alive "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    [[ $CLEANED == 1 ]] && return 0
    CLEANED=1
    set +e
    log "cleaning up"
    [[ -n $FG_PID ]] && kill_pid "$FG_PID"
    local pid ns
    for pid in "${PIDS[@]}"; do kill_pid "$pid"; done
    if [[ $NFT_LOADED == 1 ]]; then
        in_ns "$NS_N" nft delete table ip "$NFT_TABLE" 2>/dev/null
    fi
    # Anything else still living in our namespaces (nginx workers, a stuck
    # wrk/iperf3): kill by pid, then delete the namespace.
    for ns in "$NS_C" "$NS_N" "$NS_S"; do
        ip netns list 2>/dev/null | awk -v n="$ns" '$1 == n {f=1} END {exit !f}' || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill_pid "$pid"; done
        ip netns delete "$ns" 2>/dev/null || warn "could not delete namespace $ns"
    done
    if ip netns list 2>/dev/null | grep -q "^npdb-${RUN_ID}-"; then
        warn "namespaces left over: $(ip netns list | grep "^npdb-${RUN_ID}-" | tr '\n' ' ')"
    else
        log "cleanup done, no namespace of this run remains"
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $BENCH_KEEP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
}

on_signal() { log "interrupted"; exit 130; }

trap cleanup EXIT
trap on_signal INT TERM

# ------------------------------------------------------------------ setup --

check_args() {
    [[ $(id -u) == 0 ]] || die "must run as root (network namespaces, nftables)"
    [[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
    local p q ok
    IFS=, read -ra SELECTED <<<"$BENCH_ONLY"
    for p in "${SELECTED[@]}"; do
        ok=0
        for q in "${ALL_PATHS[@]}"; do [[ $p == "$q" ]] && ok=1; done
        [[ $ok == 1 ]] || die "BENCH_ONLY: unknown path '$p' (known: ${ALL_PATHS[*]})"
    done
    if [[ $BENCH_PIN == 1 ]]; then
        local cpus
        cpus=$(nproc)
        [[ $BENCH_CPU_CLIENT -lt $cpus && $BENCH_CPU_NODE -lt $cpus && $BENCH_CPU_CLIENT != "$BENCH_CPU_NODE" ]] ||
            die "BENCH_PIN=1 needs two distinct CPUs below $cpus (BENCH_CPU_CLIENT=$BENCH_CPU_CLIENT, BENCH_CPU_NODE=$BENCH_CPU_NODE)"
    fi
}

selected() { local p; for p in "${SELECTED[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

install_deps() {
    # command -> Debian package
    local -A pkg=([wrk]=wrk [iperf3]=iperf3 [haproxy]=haproxy [nft]=nftables
                  [ip]=iproute2 [ss]=iproute2 [jq]=jq [curl]=curl [timeout]=coreutils [sysctl]=procps
                  [nginx]=nginx-light)
    local missing=() c p
    for c in "${!pkg[@]}"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("${pkg[$c]}")
    done
    [[ ${#missing[@]} == 0 ]] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Do not let the packages start their system-wide services (nginx on :80,
    # haproxy): add a policy-rc.d for the duration of the install if there is none.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    local rc=0
    if [[ " ${missing[*]} " == *" nginx-light "* ]] && ! apt-cache show nginx-light >/dev/null 2>&1; then
        missing=("${missing[@]/nginx-light/nginx}")   # newer Debian: no nginx-light
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || rc=$?
    [[ $own_policy == 1 ]] && rm -f "$policy"
    [[ $rc == 0 ]] || die "apt-get install failed"
    for c in "${!pkg[@]}"; do
        command -v "$c" >/dev/null 2>&1 || die "'$c' still missing after install"
    done
}

setup_topology() {
    log "creating namespaces $NS_C, $NS_N, $NS_S"
    local ns
    for ns in "$NS_C" "$NS_N" "$NS_S"; do
        ip netns add "$ns"
        in_ns "$ns" ip link set lo up
    done
    # veths are created directly inside the namespaces: no names in the root
    # namespace, so parallel runs cannot collide.
    ip -n "$NS_N" link add to-client type veth peer name eth0 netns "$NS_C"
    ip -n "$NS_N" link add to-server type veth peer name eth0 netns "$NS_S"

    ip -n "$NS_C" addr add "$CLIENT_IP/24" dev eth0
    ip -n "$NS_C" link set eth0 up
    ip -n "$NS_C" route add 198.18.1.0/24 via "$NODE_IP"

    ip -n "$NS_N" addr add "$NODE_IP/24" dev to-client
    ip -n "$NS_N" addr add "$NODE_IP_S/24" dev to-server
    ip -n "$NS_N" link set to-client up
    ip -n "$NS_N" link set to-server up

    ip -n "$NS_S" addr add "$SERVER_IP/24" dev eth0
    ip -n "$NS_S" link set eth0 up
    ip -n "$NS_S" route add 198.18.0.0/24 via "$NODE_IP_S"

    in_ns "$NS_N" sysctl -qw net.ipv4.ip_forward=1
    # Many short connections in the 'Connection: close' runs: a wide port range
    # and TIME_WAIT reuse for connecting sockets (client, and proxies in node).
    for ns in "$NS_C" "$NS_N"; do
        in_ns "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
        in_ns "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1
    done
}

wait_listen() { # ns proto(t|u) addr port [seconds]: until a socket is bound there
    local ns=$1 proto=$2 addr=$3 port=$4 secs=${5:-5}
    for _ in $(seq $((secs * 10))); do
        if in_ns "$ns" ss -Hln"$proto" "sport = :$port" 2>/dev/null | grep -qF "$addr:$port"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start_nginx() {
    local dir="$WORK/nginx"
    mkdir -p "$dir/tmp" "$dir/logs"
    cat >"$dir/nginx.conf" <<EOF
# generated by benches/e2e.sh
user nobody nogroup;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections $((NOFILE / 2)); }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    default_type text/plain;
    server {
        listen $SERVER_IP:80 backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
    # nginx-light is built without uwsgi/scgi; drop those lines if it rejects them.
    if ! in_ns "$NS_S" nginx -t -q -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf" 2>/dev/null; then
        sed -i '/uwsgi_temp_path\|scgi_temp_path\|fastcgi_temp_path/d' "$dir/nginx.conf"
        in_ns "$NS_S" nginx -t -q -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf" \
            || die "nginx config test failed"
    fi
    ip netns exec "$NS_S" "${PIN_NODE[@]}" nginx -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf" \
        -g 'daemon off;' >"$dir/logs/stdout.log" 2>&1 &
    PIDS+=($!)
    wait_listen "$NS_S" t "$SERVER_IP" 80 || die "nginx did not start: $(tail -5 "$dir/logs/error.log")"
    log "nginx listening on $SERVER_IP:80"
}

# -------------------------------------------------------- measurement core --

run_bounded() { # seconds outfile cmd...: run in the background (so traps fire) and wait
    local secs=$1 out=$2 rc=0
    shift 2
    timeout --kill-after=5 "$secs" "$@" >"$out" 2>&1 &
    FG_PID=$!
    wait "$FG_PID" || rc=$?
    FG_PID=""
    return $rc
}

to_ms() { # wrk duration (e.g. 812.00us, 1.23ms, 2.01s, 1.50m) -> ms
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

cpu_ticks() { # utime+stime of the forwarder (all its threads), in clock ticks; empty if none
    [[ -n $FWD_PID && -r /proc/$FWD_PID/stat ]] || return 0
    # Fields after the command name (in parentheses): utime and stime are the 12th and 13th.
    sed 's/.*) //' "/proc/$FWD_PID/stat" | awk '{ print $12 + $13 }'
}

switches() { # context switches of the forwarder (all its threads) so far; empty if none
    [[ -n $FWD_PID && -d /proc/$FWD_PID/task ]] || return 0
    cat /proc/"$FWD_PID"/task/*/status 2>/dev/null |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}

cpu_mark() { # -> sets CPU_T0 and CS_T0 for cpu_since
    CPU_T0=$(cpu_ticks) CS_T0=$(switches)
}

cpu_since() { # since cpu_mark -> sets CPU_US (microseconds) and CS_N (context switches), or empty
    local now sw
    now=$(cpu_ticks) sw=$(switches)
    CPU_US="" CS_N=""
    [[ -n $CPU_T0 && -n $now ]] || return 0
    CPU_US=$(awk -v a="$CPU_T0" -v b="$now" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (b - a) * 1e6 / hz }')
    [[ -n $CS_T0 && -n $sw ]] && CS_N=$((sw - CS_T0))
    return 0
}

per() { # microseconds count -> microseconds per unit, or empty
    [[ -n $1 && -n $2 ]] || return 0
    awk -v us="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.2f", us / n }'
}

wrk_run() { # path tag url [extra wrk args...]: sets WRK_RPS WRK_P50 WRK_P99 (ms), WRK_N, CPU_US, CS_N
    local path=$1 tag=$2 url=$3 out="$WORK/out/$1.$2.wrk"
    shift 3
    cpu_mark
    if ! run_bounded $((BENCH_SECONDS + 20)) "$out" \
            ip netns exec "$NS_C" "${PIN_CLIENT[@]}" wrk -t2 -c64 -d"${BENCH_SECONDS}s" --latency "$@" "$url"; then
        warn "$path: wrk ($tag) failed: $(tail -3 "$out" | tr '\n' ' ')"
        return 1
    fi
    cpu_since
    WRK_N=$(awk '/requests in/ {print $1}' "$out")
    local rps p50 p99 errs
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    errs=$(grep -E 'Socket errors|Non-2xx' "$out" | tr -s ' \n' ' ' || true)
    [[ -n $errs ]] && warn "$path: wrk ($tag): $errs"
    [[ -n $rps && -n $p50 && -n $p99 ]] || { warn "$path: cannot parse wrk output ($tag)"; return 1; }
    WRK_RPS=$rps WRK_P50=$(to_ms "$p50") WRK_P99=$(to_ms "$p99")
}

start_iperf_server() { # one-shot iperf3 server (-1) for one test
    ip netns exec "$NS_S" "${PIN_NODE[@]}" iperf3 -s -1 -B "$SERVER_IP" -p 5201 >>"$WORK/out/iperf3-server.log" 2>&1 &
    IPERF_SRV=$!
    PIDS+=("$IPERF_SRV")
    wait_listen "$NS_S" t "$SERVER_IP" 5201 || { warn "iperf3 server did not start"; return 1; }
}

stop_iperf_server() { # give the one-shot server a moment to finish, then make sure it is gone
    for _ in $(seq 30); do alive "$IPERF_SRV" || break; sleep 0.1; done
    kill_pid "$IPERF_SRV"
    wait "$IPERF_SRV" 2>/dev/null || true
}

iperf_run() { # path tag addr port [extra iperf3 args...]: sets IPERF_JSON (file), or fails
    local path=$1 tag=$2 addr=$3 port=$4 out="$WORK/out/$1.$2.json" rc=0
    shift 4
    start_iperf_server || return 1
    cpu_mark
    run_bounded $((BENCH_SECONDS + 20)) "$out" ip netns exec "$NS_C" "${PIN_CLIENT[@]}" \
        iperf3 -c "$addr" -p "$port" -t "$BENCH_SECONDS" --connect-timeout 3000 -J "$@" || rc=$?
    cpu_since
    stop_iperf_server
    if [[ $rc != 0 ]] || ! jq -e 'has("end") and (has("error") | not)' "$out" >/dev/null 2>&1; then
        warn "$path: iperf3 ($tag) failed (rc $rc): $(jq -r '.error // empty' "$out" 2>/dev/null || tail -c 300 "$out")"
        return 1
    fi
    IPERF_JSON=$out
}

retransmits() { # TCP segments retransmitted so far by the client and node namespaces
    local ns n total=0
    for ns in "$NS_C" "$NS_N"; do
        n=$(in_ns "$ns" awk '/^Tcp:/ { if (seen) print $13; seen = 1 }' /proc/net/snmp)
        total=$((total + n))
    done
    echo "$total"
}

http_ok() { # addr port: one request from the client must get a 200
    local code
    code=$(in_ns "$NS_C" curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$1:$2/" || true)
    [[ $code == 200 ]]
}

measure_path() { # path addr http_port iperf_port udp(yes|no)
    local path=$1 addr=$2 hport=$3 iport=$4 udp=$5
    log "== $path: http://$addr:$hport/, iperf3 $addr:$iport, ${BENCH_SECONDS}s per run"
    if ! http_ok "$addr" "$hport"; then
        warn "$path: http://$addr:$hport/ does not answer 200, skipping measurements"
        add_note "$path" "HTTP probe failed"
        FAILURES=$((FAILURES + 1))
        return 0
    fi

    log "$path: wrk keep-alive"
    if wrk_run "$path" keepalive "http://$addr:$hport/"; then
        RES[$path.rps_keepalive]=$WRK_RPS RES[$path.p50_ms]=$WRK_P50 RES[$path.p99_ms]=$WRK_P99
        RES[$path.cpu_us_req]=$(per "$CPU_US" "$WRK_N") RES[$path.cs_req]=$(per "$CS_N" "$WRK_N")
    else
        add_note "$path" "wrk keep-alive failed"; FAILURES=$((FAILURES + 1))
    fi
    sleep 1

    log "$path: wrk Connection: close"
    if wrk_run "$path" newconn "http://$addr:$hport/" -H 'Connection: close'; then
        RES[$path.rps_newconn]=$WRK_RPS
        RES[$path.cpu_us_conn]=$(per "$CPU_US" "$WRK_N") RES[$path.cs_conn]=$(per "$CS_N" "$WRK_N")
    else
        add_note "$path" "wrk new-connection failed"; FAILURES=$((FAILURES + 1))
    fi
    sleep 1

    log "$path: iperf3 TCP"
    if iperf_run "$path" tcp "$addr" "$iport"; then
        RES[$path.tcp_gbps]=$(jq -r '.end.sum_received.bits_per_second / 1e9' "$IPERF_JSON")
    else
        add_note "$path" "iperf3 TCP failed"; FAILURES=$((FAILURES + 1))
    fi
    sleep 1

    log "$path: iperf3 TCP, 4 streams"
    local retrans0
    retrans0=$(retransmits)
    if iperf_run "$path" tcp4 "$addr" "$iport" -P 4; then
        RES[$path.tcp4_gbps]=$(jq -r '.end.sum_received.bits_per_second / 1e9' "$IPERF_JSON")
        RES[$path.tcp4_retrans]=$(($(retransmits) - retrans0))
    else
        add_note "$path" "iperf3 TCP, 4 streams failed"; FAILURES=$((FAILURES + 1))
    fi
    sleep 1

    [[ $udp == yes ]] || return 0
    log "$path: iperf3 UDP"
    # shellcheck disable=SC2086  # BENCH_UDP_ARGS is a list of extra iperf3 arguments
    if iperf_run "$path" udp "$addr" "$iport" -u -b 1G -l 1400 ${BENCH_UDP_ARGS:-}; then
        # Delivered = what the receiver got; iperf3 3.12 reports it in
        # end.sum_received, older ones only have end.sum (sender rate + loss).
        RES[$path.udp_mbps]=$(jq -r '(.end.sum_received.bits_per_second //
            (.end.sum.bits_per_second * (1 - .end.sum.lost_percent / 100))) / 1e6' "$IPERF_JSON")
        RES[$path.udp_loss_pct]=$(jq -r '(.end.sum_received.lost_percent // .end.sum.lost_percent)' "$IPERF_JSON")
        local dgrams
        dgrams=$(jq -r '(.end.sum_received.packets // .end.sum.packets)
            - (.end.sum_received.lost_packets // .end.sum.lost_packets)' "$IPERF_JSON")
        RES[$path.cpu_us_dgram]=$(per "$CPU_US" "$dgrams") RES[$path.cs_dgram]=$(per "$CS_N" "$dgrams")
    else
        add_note "$path" "iperf3 UDP failed"; FAILURES=$((FAILURES + 1))
    fi
    sleep 1
}

# ------------------------------------------------------------------ paths --

path_direct() {
    measure_path direct "$SERVER_IP" 80 5201 yes
}

path_dnat() {
    # Like kube-proxy's nftables mode: DNAT in prerouting, masquerade what was DNATed.
    cat >"$WORK/nft.conf" <<EOF
table ip $NFT_TABLE {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $NODE_IP tcp dport 30180 dnat to $SERVER_IP:80
        ip daddr $NODE_IP tcp dport 30201 dnat to $SERVER_IP:5201
        ip daddr $NODE_IP udp dport 30201 dnat to $SERVER_IP:5201
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip daddr 198.18.1.0/24 ct status dnat masquerade
    }
}
EOF
    NFT_LOADED=1
    in_ns "$NS_N" nft -f "$WORK/nft.conf"
    measure_path dnat "$NODE_IP" 30180 30201 yes
    # Remove it right away so conntrack does not run in the node for the other paths.
    in_ns "$NS_N" nft delete table ip "$NFT_TABLE"
    NFT_LOADED=0
}

path_haproxy() {
    # maxconn as high as the fd limit allows (HAProxy needs ~2 fds per connection
    # and refuses to start if it cannot get them).
    local cfg="$WORK/haproxy.cfg" tmo=$((BENCH_SECONDS + 60)) maxconn=$(((NOFILE - 200) / 2))
    cat >"$cfg" <<EOF
# generated by benches/e2e.sh
global
    nbthread $FWD_THREADS
    maxconn $maxconn
    pidfile $WORK/haproxy.pid

defaults
    mode tcp
    maxconn $maxconn
    timeout connect 5s
    timeout client ${tmo}s
    timeout server ${tmo}s

frontend fe_http
    bind $NODE_IP:31080
    default_backend be_http

backend be_http
    server nginx $SERVER_IP:80

frontend fe_iperf
    bind $NODE_IP:31201
    default_backend be_iperf

backend be_iperf
    server iperf $SERVER_IP:5201
EOF
    in_ns "$NS_N" haproxy -c -q -f "$cfg" || die "haproxy config check failed"
    ip netns exec "$NS_N" "${PIN_NODE[@]}" haproxy -db -f "$cfg" >"$WORK/out/haproxy.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    FWD_PID=$pid
    if ! wait_listen "$NS_N" t "$NODE_IP" 31201; then
        warn "haproxy did not start: $(tail -5 "$WORK/out/haproxy.log")"
        add_note haproxy "did not start"; FAILURES=$((FAILURES + 1))
        return 0
    fi
    measure_path haproxy "$NODE_IP" 31080 31201 no
    add_note haproxy "HAProxy has no UDP, UDP rows are n/a"
    kill_pid "$pid"
    FWD_PID=""
}

write_manifests() { # [plugin chain annotation]
    local annotations=""
    [[ -n ${1:-} ]] && annotations="  annotations:
    nodeportd.dev/plugins: \"$1\""
    mkdir -p "$WORK/manifests"
    cat >"$WORK/manifests/bench.yaml" <<EOF
apiVersion: v1
kind: Service
metadata:
  name: bench
  namespace: default
$annotations
spec:
  type: NodePort
  selector:
    app: bench
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 80
      nodePort: 30080
    - name: iperf
      protocol: TCP
      port: 5201
      targetPort: 5201
      nodePort: 30202
    - name: iperf-udp
      protocol: UDP
      port: 5201
      targetPort: 5201
      nodePort: 30202
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bench-1
  namespace: default
  labels:
    kubernetes.io/service-name: bench
addressType: IPv4
ports:
  - name: http
    port: 80
    protocol: TCP
  - name: iperf
    port: 5201
    protocol: TCP
  - name: iperf-udp
    port: 5201
    protocol: UDP
endpoints:
  - addresses:
      - $SERVER_IP
    conditions:
      ready: true
EOF
}

path_nodeportd() { # [path name] [plugin chain]
    local name=${1:-nodeportd} chain=${2:-}
    if [[ ! -x $NODEPORTD ]]; then
        warn "nodeportd binary not found at $NODEPORTD (set NODEPORTD=...), skipping"
        add_note "$name" "skipped: no binary at $NODEPORTD"
        return 0
    fi
    write_manifests "$chain"
    local extra=() log="$WORK/out/$name.log" code=""
    read -ra extra <<<"$NODEPORTD_ARGS"
    # The same thread count as HAProxy's, unless the caller chose one.
    [[ " $NODEPORTD_ARGS " == *" --workers "* ]] || extra+=(--workers "$FWD_THREADS")
    if [[ -n $chain ]]; then
        if [[ ! -f $PLUGIN_DIR/${chain%%,*}.wasm ]]; then
            warn "plugin $chain not built in $PLUGIN_DIR (run scripts/build-plugins.sh), skipping"
            add_note "$name" "skipped: no plugin in $PLUGIN_DIR"
            return 0
        fi
        extra+=(--plugin-dir "$PLUGIN_DIR")
    fi
    log "starting $NODEPORTD ${extra[*]}"
    ip netns exec "$NS_N" "${PIN_NODE[@]}" "$NODEPORTD" run --manifests "$WORK/manifests" \
        --node-name bench-node \
        --nodeport-addresses "$NODE_IP/32" --admin-address 127.0.0.1:10256 "${extra[@]}" \
        >"$log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    FWD_PID=$pid
    for _ in $(seq $((READY_TIMEOUT * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        code=$(in_ns "$NS_N" curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
            http://127.0.0.1:10256/readyz 2>/dev/null || true)
        [[ $code == 200 ]] && break
        sleep 0.1
    done
    if [[ $code != 200 ]]; then
        local why="not ready after ${READY_TIMEOUT}s (readyz: ${code:-none})" rc=0
        if ! alive "$pid"; then
            wait "$pid" || rc=$?
            why="exited with status $rc before becoming ready"
        fi
        warn "$name $why; last lines of its log:"
        tail -20 "$log" >&2 || true
        add_note "$name" "$why"; FAILURES=$((FAILURES + 1))
        kill_pid "$pid"
        return 0
    fi
    if [[ -n $chain ]] && grep -q "plugins not applied" "$log"; then
        warn "$name: the plugin was not applied: $(grep "plugins not applied" "$log" | tail -1)"
        add_note "$name" "plugin not applied"; FAILURES=$((FAILURES + 1))
        kill_pid "$pid"
        return 0
    fi
    log "$name ready"
    measure_path "$name" "$NODE_IP" 30080 30202 yes
    if [[ -n $chain ]]; then
        local calls
        calls=$(in_ns "$NS_N" curl -s --max-time 2 http://127.0.0.1:10256/metrics |
            awk '/^nodeportd_plugin_calls_total.*role="selection"/ { s += $NF } END { print s + 0 }')
        add_note "$name" "plugin $chain made $calls selections"
    fi
    kill_pid "$pid"
    FWD_PID=""
}

# ----------------------------------------------------------------- report --

fmt() { # metric value -> formatted cell
    [[ -z $2 ]] && { echo "n/a"; return; }
    case $1 in
        rps_*) awk -v v="$2" 'BEGIN { printf "%.0f", v }' ;;
        p50_ms | p99_ms) awk -v v="$2" 'BEGIN { printf "%.3f", v }' ;;
        tcp_gbps | tcp4_gbps) awk -v v="$2" 'BEGIN { printf "%.2f", v }' ;;
        tcp4_retrans) awk -v v="$2" 'BEGIN { printf "%.0f", v }' ;;
        udp_mbps) awk -v v="$2" 'BEGIN { printf "%.1f", v }' ;;
        udp_loss_pct) awk -v v="$2" 'BEGIN { printf "%.2f", v }' ;;
        cpu_us_*) awk -v v="$2" 'BEGIN { printf "%.1f", v }' ;;
        cs_*) awk -v v="$2" 'BEGIN { printf "%.3f", v }' ;;
    esac
}

ratio() { # a b -> a/b formatted, n/a if either is missing or b is 0
    if [[ -z $1 || -z $2 ]]; then echo "n/a"; return; fi
    awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'
}

print_table() {
    local -A label=([rps_keepalive]="keep-alive req/s" [p50_ms]="p50 latency (ms)"
        [p99_ms]="p99 latency (ms)" [rps_newconn]="new conn/s (Connection: close)"
        [tcp_gbps]="TCP bulk (Gbit/s)" [tcp4_gbps]="TCP bulk, 4 streams (Gbit/s)"
        [tcp4_retrans]="TCP retransmits, 4 streams" [udp_mbps]="UDP delivered (Mbit/s)"
        [udp_loss_pct]="UDP loss (%)" [cpu_us_req]="forwarder CPU per request (us)"
        [cpu_us_conn]="forwarder CPU per new connection (us)"
        [cpu_us_dgram]="forwarder CPU per datagram (us)"
        [cs_req]="forwarder context switches per request" [cs_conn]="forwarder context switches per new connection"
        [cs_dgram]="forwarder context switches per datagram")
    local m better
    echo
    echo "nodeportd e2e benchmark: $(date -u +%Y-%m-%dT%H:%MZ), kernel $(uname -r), $(nproc) cores," \
         "${BENCH_SECONDS}s per run, wrk -t2 -c64, iperf3 1 and 4 streams (UDP: -b 1G -l 1400)," \
         "load average at start $LOAD_AT_START"
    if [[ $BENCH_PIN == 1 ]]; then
        echo "pinned: client on CPU $BENCH_CPU_CLIENT; forwarder ($FWD_THREADS threads) and backends share CPU $BENCH_CPU_NODE"
    else
        echo "unpinned: every process may run on any CPU (the proxy can borrow the client's)"
    fi
    [[ -x $NODEPORTD ]] && echo "nodeportd: $NODEPORTD ${NODEPORTD_ARGS}"
    echo
    echo "| metric | better | direct | kernel DNAT | HAProxy | nodeportd | nodeportd+wasm | nodeportd/HAProxy | nodeportd/DNAT | HAProxy/DNAT | wasm/nodeportd |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for m in "${METRICS[@]}"; do
        case $m in p50_ms | p99_ms | tcp4_retrans | udp_loss_pct | cpu_us_* | cs_*) better=lower ;; *) better=higher ;; esac
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${label[$m]}" "$better" \
            "$(fmt "$m" "${RES[direct.$m]:-}")" "$(fmt "$m" "${RES[dnat.$m]:-}")" \
            "$(fmt "$m" "${RES[haproxy.$m]:-}")" "$(fmt "$m" "${RES[nodeportd.$m]:-}")" \
            "$(fmt "$m" "${RES[wasm.$m]:-}")" \
            "$(ratio "${RES[nodeportd.$m]:-}" "${RES[haproxy.$m]:-}")" \
            "$(ratio "${RES[nodeportd.$m]:-}" "${RES[dnat.$m]:-}")" \
            "$(ratio "${RES[haproxy.$m]:-}" "${RES[dnat.$m]:-}")" \
            "$(ratio "${RES[wasm.$m]:-}" "${RES[nodeportd.$m]:-}")"
    done
    echo
    echo "Ratios are A/B of the metric: above 1 means A is better for \"higher\" rows;" \
         "for \"lower\" rows (latency, loss) below 1 means A is better."
    local p
    for p in "${ALL_PATHS[@]}"; do
        if ! selected "$p"; then echo "- $p: not run (BENCH_ONLY)"
        elif [[ -n ${NOTE[$p]:-} ]]; then echo "- $p: ${NOTE[$p]}"
        fi
    done
    echo
}

write_json() {
    [[ -n $BENCH_JSON ]] || return 0
    local p m tsv="$WORK/results.tsv"
    : >"$tsv"
    for p in "${ALL_PATHS[@]}"; do
        selected "$p" || continue
        for m in "${METRICS[@]}"; do printf '%s\t%s\t%s\n' "$p" "$m" "${RES[$p.$m]:-}" >>"$tsv"; done
        printf '%s\t%s\t%s\n' "$p" note "${NOTE[$p]:-}" >>"$tsv"
    done
    jq -Rn --argjson secs "$BENCH_SECONDS" --arg kernel "$(uname -r)" --argjson cores "$(nproc)" \
        --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg nodeportd "$NODEPORTD" \
        --argjson load "$LOAD_AT_START" --argjson pinned "$BENCH_PIN" \
        --arg nodeportd_args "$NODEPORTD_ARGS" '
        { date: $date, kernel: $kernel, cores: $cores, bench_seconds: $secs, load_at_start: $load,
          pinned: ($pinned == 1),
          nodeportd: $nodeportd, nodeportd_args: $nodeportd_args,
          load: { wrk: "-t2 -c64 --latency", iperf3_udp: "-b 1G -l 1400" },
          paths: (reduce (inputs | split("\t")) as $r ({};
              .[$r[0]][$r[1]] = (if $r[2] == "" then null
                                 elif $r[1] == "note" then $r[2]
                                 else ($r[2] | tonumber) end))) }' <"$tsv" >"$BENCH_JSON"
    log "raw results written to $BENCH_JSON"
}

# ------------------------------------------------------------------- main --

main() {
    check_args
    install_deps
    LOAD_AT_START=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$LOAD_AT_START" 'BEGIN { exit !(l > 0.5) }'; then
        warn "machine is busy (load average $LOAD_AT_START): numbers will be noisy"
    fi
    WORK=$(mktemp -d /tmp/npdbench.XXXXXX)
    mkdir -p "$WORK/out"
    setup_topology
    start_nginx
    selected direct && path_direct
    selected dnat && path_dnat
    selected haproxy && path_haproxy
    selected nodeportd && path_nodeportd
    selected wasm && path_nodeportd wasm consistent-hash
    print_table
    write_json
    if [[ $FAILURES -gt 0 ]]; then
        warn "$FAILURES measurement(s) failed, see warnings above"
        exit 1
    fi
}

main "$@"
