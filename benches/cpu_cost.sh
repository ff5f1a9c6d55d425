#!/usr/bin/env bash
# nodeportd's own CPU per request, per new connection and per datagram, with the forwarder
# sharing one CPU with the backends (nginx, iperf3 -s on CPU 1; wrk and iperf3 -c on CPU 0),
# on the loopback of a network namespace of its own. CPU is the daemon's utime+stime from
# /proc over each run, divided by the requests / connections / datagrams it carried. Give two
# binaries to compare them in one run (A then B, ROUNDS times, alternating).
#
#   benches/cpu_cost.sh [BINARY_A [BINARY_B]]     (as root; default target/release/nodeportd)
#   BENCH_SECONDS=5 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECONDS:-5}
ROUNDS=${ROUNDS:-3}
BINS=("${@:-target/release/nodeportd}")
for c in wrk nginx iperf3 jq; do
  command -v $c >/dev/null || { apt-get install -y -qq wrk nginx-light iperf3 jq >/dev/null; break; }
done
NS=npcpu-$$
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
# exec: a backgrounded call is then the process itself, so cleanup can kill it
on() { local cpu=$1; shift; exec ip netns exec "$NS" taskset -c "$cpu" "$@"; }

cat > "$WORK/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log /dev/null;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:8080; location / { return 200 "ok\n"; } } }
EOF
on 1 nginx -c "$WORK/nginx.conf" > /dev/null 2>&1 & PIDS+=($!)
on 1 iperf3 -s -B 127.0.0.1 -p 5201 > /dev/null 2>&1 & PIDS+=($!)
mkdir -p "$WORK/m"
cat > "$WORK/m/svc.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: web, namespace: bench}
spec:
  type: NodePort
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: ipt, protocol: TCP, port: 5201, targetPort: 5201, nodePort: 30201}
  - {name: ipu, protocol: UDP, port: 5201, targetPort: 5201, nodePort: 30201}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web, namespace: bench, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
- {name: ipt, protocol: TCP, port: 5201}
- {name: ipu, protocol: UDP, port: 5201}
endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]
EOF

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

printf '%-32s %12s %12s %12s\n' binary "us/request" "us/conn" "us/datagram"
for round in $(seq "$ROUNDS"); do
  for bin in "${BINS[@]}"; do
    on 1 "$bin" run --manifests "$WORK/m" --node-name bench --workers 1 --preserve-source off \
      --nodeport-addresses 127.0.0.1/32 --admin-address 127.0.0.1:10256 \
      > "$WORK/daemon.log" 2>&1 &  # --admin-address: older binaries have only that flag
    pid=$!; PIDS+=($pid)
    for _ in $(seq 100); do
      ip netns exec "$NS" curl -sf -o /dev/null http://127.0.0.1:10256/readyz && break
      sleep 0.1
    done
    cost=()
    for load in keepalive close; do
      args=(); [ $load = close ] && args=(-H "Connection: close")
      t0=$(ticks "$pid")
      out=$(on 0 timeout $((SECS + 10)) wrk -t1 -c16 -d"${SECS}s" "${args[@]}" http://127.0.0.1:30080/)
      t1=$(ticks "$pid")
      reqs=$(awk '/requests in/ {print $1}' <<<"$out")
      cost+=("$(awk -v t=$((t1 - t0)) -v r="$reqs" -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz * 1e6 / r}')")
    done
    t0=$(ticks "$pid")
    j=$(on 0 timeout $((SECS + 10)) iperf3 -c 127.0.0.1 -p 30201 -u -b 300M -l 1200 -t "$SECS" -J)
    t1=$(ticks "$pid")
    dgrams=$(jq '.end.sum.packets - .end.sum.lost_packets' <<<"$j")
    cost+=("$(awk -v t=$((t1 - t0)) -v r="$dgrams" -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz * 1e6 / r}')")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '%-32s %12s %12s %12s\n' "$(basename "$bin") r$round" "${cost[@]}"
  done
done
