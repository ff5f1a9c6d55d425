#!/usr/bin/env bash
# System calls and context switches (wake-ups: a thread that sleeps in epoll_wait and is woken
# switches in) per request and per new connection, nodeportd against HAProxy (mode tcp), the
# same load through each: the counts issue 10 asks for before cutting them. Counts, not speed.
#
# Everything runs on the loopback of a network namespace of its own (fixed ports cannot be
# taken by anyone else there): nginx as the endpoint, nodeportd (release binary, 2 workers) and
# HAProxy (2 threads) in front of it, wrk as the client. Per proxy and load (wrk -t1 -c16 for
# BENCH_SECONDS, keep-alive and `Connection: close`) the proxy's system calls are counted on
# every thread and divided by the requests wrk completed; so are its context switches (perf's
# software event; TOOL=perf only). Counted with perf's syscall
# tracepoints by default (TOOL=perf: the proxy runs at nearly full speed, so events coalesce as
# they do under real load); TOOL=strace counts with `strace -c`, which slows every call down
# and so splits what would arrive together (a FIN with the last data, for one).
#
#   benches/syscalls.sh          (as root; cargo build --release -p nodeportd first)
#   BENCH_SECONDS=5 NODEPORTD=target/release/nodeportd TOP=5 (calls listed per row) TOOL=perf
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECONDS:-5}
NODEPORTD=${NODEPORTD:-target/release/nodeportd}
[ -x "$NODEPORTD" ] || { echo "no $NODEPORTD: cargo build --release -p nodeportd" >&2; exit 1; }
TOOL=${TOOL:-perf}
case $TOOL in perf) tool_pkg=linux-perf ;; strace) tool_pkg=strace ;; *) echo "TOOL is perf or strace" >&2; exit 1 ;; esac
for c in wrk nginx haproxy $TOOL; do
  command -v $c >/dev/null || { apt-get install -y -qq wrk nginx-light haproxy $tool_pkg >/dev/null; break; }
done
# The calls perf counts one by one (every call is in the total): what either proxy makes.
CALLS="read recvfrom sendto write accept4 connect socket setsockopt getsockopt shutdown close
  epoll_wait epoll_ctl fcntl clock_gettime getsockname getpeername sched_yield splice futex"
NS=npsys-$$
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }

cat > "$WORK/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log /dev/null;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:8080; location / { return 200 "ok\n"; } } }
EOF
ip netns exec "$NS" nginx -c "$WORK/nginx.conf" & PIDS+=($!)
mkdir -p "$WORK/m"
cat > "$WORK/m/svc.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: web, namespace: bench}
spec: {type: NodePort, ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web, namespace: bench, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]
EOF
ip netns exec "$NS" "$NODEPORTD" run --manifests "$WORK/m" --node-name bench --workers 2 --preserve-source off \
  --nodeport-addresses 127.0.0.1/32 --healthz-bind-address 127.0.0.1:10256 \
  --metrics-bind-address 127.0.0.1:10249 > "$WORK/nodeportd.log" 2>&1 & PIDS+=($!)
NP_PID=$!
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 2
defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
listen web
  bind 127.0.0.1:31080
  server s1 127.0.0.1:8080
EOF
ip netns exec "$NS" haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 & PIDS+=($!)
HA_PID=$!
for _ in $(seq 100); do
  in_ns curl -sf -o /dev/null http://127.0.0.1:10256/readyz && in_ns curl -sf -o /dev/null http://127.0.0.1:31080/ && break
  sleep 0.1
done

# count PID PORT [wrk args...]: "<syscalls> <requests> <switches>"; the per-call counts go to
# $WORK/calls as "<calls> <name>" lines.
count() {
  local pid=$1 port=$2; shift 2
  local st
  if [ "$TOOL" = perf ]; then
    local ev=raw_syscalls:sys_enter,context-switches c
    for c in $CALLS; do ev+=",syscalls:sys_enter_$c"; done
    # -p PID counts every thread of the process.
    perf stat -x, -e "$ev" -p "$pid" -o "$WORK/perf.out" 2>/dev/null & st=$!
  else
    local tids
    tids=$(ls /proc/"$pid"/task | sed 's/^/-p /' | tr '\n' ' ')
    # shellcheck disable=SC2086
    strace -c -f $tids -o "$WORK/strace.out" 2>/dev/null & st=$!
  fi
  sleep 0.5
  local out
  out=$(in_ns timeout $((SECS + 10)) wrk -t1 -c16 -d"${SECS}s" "$@" "http://127.0.0.1:$port/")
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  local calls reqs switches=n/a
  if [ "$TOOL" = perf ]; then
    switches=$(awk -F, '$3 == "context-switches" {print $1}' "$WORK/perf.out")
    # CSV: count,unit,event,...
    calls=$(awk -F, '$3 == "raw_syscalls:sys_enter" {print $1}' "$WORK/perf.out")
    awk -F, '$3 ~ /^syscalls:sys_enter_/ {sub("syscalls:sys_enter_", "", $3); print $1, $3}' \
      "$WORK/perf.out" > "$WORK/calls"
  else
    # the total line: % time, seconds, usecs/call, calls, errors, "total"
    calls=$(awk '$NF == "total" {print $4}' "$WORK/strace.out")
    awk '$NF != "total" && $NF != "syscall" && $4 ~ /^[0-9]+$/ {print $4, $NF}' \
      "$WORK/strace.out" > "$WORK/calls"
  fi
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  # the TOP most frequent calls, per request, for the line after the table row
  awk -v r="$reqs" '$1 > 0 {printf "%s %.2f\n", $2, $1 / r}' "$WORK/calls" |
    sort -k2 -nr | head -"${TOP:-5}" | tr '\n' ' ' > "$WORK/top"
  echo "$calls $reqs $switches"
}

printf '%-10s %-10s %10s %10s %14s %14s\n' proxy load requests syscalls syscalls/req switches/req
for proxy in nodeportd haproxy; do
  if [ $proxy = nodeportd ]; then pid=$NP_PID port=30080; else pid=$HA_PID port=31080; fi
  for load in keepalive close; do
    if [ $load = close ]; then set -- -H "Connection: close"; else set --; fi
    read -r calls reqs switches < <(count "$pid" "$port" "$@")
    printf '%-10s %-10s %10s %10s %14.1f %14s\n' $proxy $load "$reqs" "$calls" \
      "$(awk -v c="$calls" -v r="$reqs" 'BEGIN {print c / r}')" \
      "$(awk -v s="$switches" -v r="$reqs" 'BEGIN {if (s == "n/a") print s; else printf "%.2f", s / r}')"
    echo "           per request: $(cat "$WORK/top")"
  done
done
