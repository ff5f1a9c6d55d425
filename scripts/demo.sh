#!/usr/bin/env bash
# The nodeportd demo: builds the daemon, starts three local HTTP backends and two UDP echo
# backends on loopback addresses, runs nodeportd on the example manifests in
# deploy/examples, sends real traffic through the nodePorts and shows which endpoint
# answered, the conntrack table and where the admin endpoints are. Everything it starts is
# stopped when it ends (also on Ctrl-C). Traffic stays on 127.0.0.0/8.
#
#   scripts/demo.sh            run the demo and exit
#   DEMO_HOLD=60 scripts/demo.sh   keep the daemon up 60 s more to poke at it
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

need=()
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v cc >/dev/null || need+=(build-essential)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

echo "== building the WASM plugins (installs Debian's Rust for wasm32 on first run)"
scripts/build-plugins.sh | tail -n +2
echo "== building nodeportd"
cargo build -q -p nodeportd
bin=$root/target/debug/nodeportd

work=$(mktemp -d /tmp/nodeportd-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

cat > "$work/backend.py" <<'PY'
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name, ip = sys.argv[1], sys.argv[2]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {name} ({ip}:8080), you are {self.client_address[0]}\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((ip, 7007))
    while True:
        data, addr = s.recvfrom(2048); s.sendto(f"{name} echoes: ".encode() + data, addr)
threading.Thread(target=udp, daemon=True).start()
ThreadingHTTPServer((ip, 8080), H).serve_forever()
PY
for i in 1 2 3; do
  python3 "$work/backend.py" "backend-$i" "127.0.0.1$i" & pids+=($!)
done

for i in 1 2 3; do  # backends up before traffic is sent
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1$i:8080/" && break; sleep 0.1; done
done

echo "== starting nodeportd on deploy/examples (nodePorts on 127.0.0.0/8)"
"$bin" run --manifests "$root/deploy/examples" --node-name demo-node \
  --nodeport-addresses 127.0.0.0/8 --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
  --plugin-dir "$root/target/plugins" --plugin-cache-dir "$work/plugin-cache" \
  >"$work/nodeportd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/readyz || true)" = 200 ] && break
  sleep 0.1
done
curl -sf http://127.0.0.1:10256/readyz >/dev/null || { cat "$work/nodeportd.log"; exit 1; }

echo
echo "== 9 HTTP requests to the nodePort 127.0.0.1:30080 (Service demo/web, 3 ready endpoints)"
for _ in $(seq 9); do curl -s --max-time 2 http://127.0.0.1:30080/ || echo "request failed"; done | sort | uniq -c

echo
echo "== WASM plugins: 9 requests to 127.0.0.1:30081 (Service demo/api: source-ranges, client-subnet-affinity, consistent-hash)"
echo "   from 127.0.0.1, 127.0.0.5 and 127.0.0.9: one /24, so one endpoint for all of them"
for src in 127.0.0.1 127.0.0.5 127.0.0.9; do
  for _ in 1 2 3; do curl -s --max-time 2 --interface "$src" http://127.0.0.1:30081/ || echo "request failed"; done
done | sed 's/, you are.*//' | sort | uniq -c
echo "   from 127.0.0.200 (outside 127.0.0.0/25): refused by source-ranges"
if curl -s --max-time 2 --interface 127.0.0.200 http://127.0.0.1:30081/ >/dev/null; then
  echo "   unexpected: the request was served"
else
  echo "   connection reset, as the plugin said"
fi
echo "   plugin metrics:"
curl -s http://127.0.0.1:10249/metrics | grep -E '^nodeportd_plugin_(calls_total|denials_total)' | grep -v ' 0$' | sed 's/^/   /'

echo
echo "== 4 UDP datagrams from one client to 127.0.0.1:30007 (Service demo/echo, ClientIP affinity)"
python3 - <<'PY'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for i in range(4):
    s.sendto(f"datagram {i}".encode(), ("127.0.0.1", 30007))
    print("  ", s.recvfrom(2048)[0].decode())
PY

echo
echo "== conntrack table (nodeportd conntrack), one long-lived TCP flow held open"
python3 - "$bin" <<'PY' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", 30080)); s.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n"); s.recv(4096)
time.sleep(3)
PY
holder=$!
sleep 0.5
"$bin" conntrack --metrics-bind-address 127.0.0.1:10249
wait "$holder" || true

echo
echo "== metrics (selection)"
curl -s http://127.0.0.1:10249/metrics | grep -E '^nodeportd_(flows_total|flows_refused_total.*no_endpoint|listeners)' | head -8

if grep -q ERROR "$work/nodeportd.log"; then
  echo; echo "== nodeportd reported errors:"; grep ERROR "$work/nodeportd.log"
fi

cat <<TXT

Admin endpoints: http://127.0.0.1:10256/healthz /readyz, http://127.0.0.1:10249/metrics /conntrack
Edit deploy/examples/*.yaml while the daemon runs (DEMO_HOLD=60) and it applies the change live.
TXT
if [ -n "${DEMO_HOLD:-}" ]; then
  echo "holding for ${DEMO_HOLD}s; logs in $work/nodeportd.log"
  sleep "$DEMO_HOLD"
fi
echo "== demo done"
