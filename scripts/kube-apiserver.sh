#!/usr/bin/env bash
# A real Kubernetes API server for the tests: kube-apiserver v1.20.2 built from Debian bookworm's
# `kubernetes` source package with Debian's Go, backed by Debian's etcd 3.4 (no Go module proxy
# is needed). See docs/kube-apiserver.md for why this version and what its limits are.
#
#   scripts/kube-apiserver.sh build        # once: into target/kube-apiserver/ (about 5 min cold)
#   scripts/kube-apiserver.sh start [DIR]  # etcd + apiserver on 127.0.0.1, state in DIR
#   scripts/kube-apiserver.sh stop [DIR]
#
# `build` prints the directory holding bin/kube-apiserver and root/usr/bin/etcd; the end-to-end
# tests (tests/harness/kube.rs) start those binaries themselves, on ports of their own, so that
# tests run in parallel and can kill and restart their API server. `start` is for trying it by
# hand: it writes DIR/kubeconfig (admin token) for kubectl or `nodeportd run --kubeconfig`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K=${KAPI_DIR:-$ROOT/target/kube-apiserver}
VERSION=1.20.5+really1.20.2
SRC=$K/src/kubernetes-$VERSION
APTO=(-o Dir::Etc::sourcelist="$K/apt/sources.list" -o Dir::Etc::sourceparts=- \
  -o Dir::State::Lists="$K/apt/lists" -o Dir::Cache="$K/apt/cache" -o APT::Sandbox::User=root)
GO=/usr/lib/go-1.19/bin/go
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

build() {
  if [ -x "$K/bin/kube-apiserver" ] && [ -x "$K/root/usr/bin/etcd" ]; then echo "$K"; return 0; fi
  mkdir -p "$K"/apt/lists/partial "$K"/apt/cache/archives/partial "$K"/debs "$K"/root "$K"/bin
  local need=()
  [ -x "$GO" ] || need+=(golang-1.19-go)
  command -v openssl >/dev/null || need+=(openssl)
  command -v dpkg-source >/dev/null || need+=(dpkg-dev)
  if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  fi
  # etcd and the fixed reflect2 are unpacked, not installed: no service is started.
  (cd "$K/debs" && apt-get download etcd-server golang-github-modern-go-reflect2-dev >&2 \
    && for d in *.deb; do dpkg-deb -x "$d" "$K/root"; done)
  # The source package, from the mirror this machine already uses.
  local mirror
  mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  echo "deb-src $mirror bookworm main" > "$K/apt/sources.list"
  if [ ! -d "$SRC" ]; then
    apt-get "${APTO[@]}" update -qq >&2
    (mkdir -p "$K/src" && cd "$K/src" && apt-get "${APTO[@]}" source -qq kubernetes >&2)
  fi
  # go1.19 with -mod=vendor stops at "updates to go.mod needed": GOPATH mode with vendor/.
  mkdir -p "$K/gopath/src/k8s.io" && ln -sfn "$SRC" "$K/gopath/src/k8s.io/kubernetes"
  cd "$K/gopath/src/k8s.io/kubernetes"
  export GOPATH=$K/gopath GOCACHE=$K/gocache GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
  # The vendored reflect2 1.0.1 panics under Go >= 1.18 on the first JSON map decode.
  rm -rf vendor/github.com/modern-go/reflect2
  cp -r "$K/root/usr/share/gocode/src/github.com/modern-go/reflect2" vendor/github.com/modern-go/
  # pkg/generated/openapi is not in the source package: generate it as the Makefile does.
  if [ ! -f pkg/generated/openapi/zz_generated.openapi.go ]; then
    nice -n 19 "$GO" build -o "$K/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    local dirs
    dirs=$(find -H . \( -path ./_\* -o -path ./.\* -o -path ./vendor \) -prune -o -type f -name '*.go' -print \
      | sed 's|^./staging/src|vendor|; s|^./||' | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
      | grep -v -e ^vendor/k8s.io/code-generator/ -e ^vendor/k8s.io/sample-apiserver/ | xargs -n1 dirname \
      | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
    nice -n 19 "$K/bin/openapi-gen" -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi \
      -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
      -r "$K/openapi-violations.report" >&2
  fi
  local v=k8s.io/kubernetes/vendor/k8s.io/component-base/version
  local c=k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version
  local ld="-s -w -X $v.gitVersion=v1.20.2 -X $v.gitMajor=1 -X $v.gitMinor=20 -X $v.gitTreeState=archive"
  ld="$ld -X $c.gitVersion=v1.20.2 -X $c.gitMajor=1 -X $c.gitMinor=20"
  nice -n 19 "$GO" build -trimpath -ldflags "$ld" -o "$K/bin/kube-apiserver.tmp" ./cmd/kube-apiserver
  mv "$K/bin/kube-apiserver.tmp" "$K/bin/kube-apiserver"
  # The Go build cache and the source are only needed to build again: free the disk.
  rm -rf "$K/gocache"
  echo "$K"
}

TOKEN=nodeportd-admin-token

start() {
  local run=${1:-$K/run} api=https://127.0.0.1:6443
  build >/dev/null
  mkdir -p "$run/pki" "$run/etcd"
  chmod 700 "$run/etcd"
  [ -f "$run/pki/sa.key" ] || { openssl genrsa -out "$run/pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$run/pki/sa.key" -pubout -out "$run/pki/sa.pub" 2>/dev/null; }
  echo "$TOKEN,admin,admin-uid,\"system:masters\"" > "$run/pki/tokens.csv"
  "$K/root/usr/bin/etcd" --name kapi --data-dir "$run/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster kapi=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    > "$run/etcd.log" 2>&1 &
  echo $! > "$run/etcd.pid"
  for _ in $(seq 100); do curl -sf http://127.0.0.1:2379/health >/dev/null && break; sleep 0.1; done
  "$K/bin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --runtime-config=discovery.k8s.io/v1beta1=false \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=6443 --cert-dir="$run/pki" \
    --token-auth-file="$run/pki/tokens.csv" --authorization-mode=Node,RBAC \
    --service-cluster-ip-range=10.96.0.0/16 --service-node-port-range=30000-32767 \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$run/pki/sa.pub" \
    --service-account-signing-key-file="$run/pki/sa.key" --endpoint-reconciler-type=none \
    --disable-admission-plugins=ServiceAccount --enable-priority-and-fairness=false \
    > "$run/apiserver.log" 2>&1 &
  echo $! > "$run/apiserver.pid"
  for _ in $(seq 600); do
    [ "$(curl -sk -m 2 -H "Authorization: Bearer $TOKEN" $api/readyz 2>/dev/null)" = ok ] && break
    sleep 0.1
  done
  cat > "$run/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: kapi, cluster: {server: "$api", certificate-authority: "$run/pki/apiserver.crt"}}]
users: [{name: admin, user: {token: $TOKEN}}]
contexts: [{name: kapi, context: {cluster: kapi, user: admin}}]
current-context: kapi
EOF
  # 1.20 has no built-in discovery.k8s.io/v1: a permissive CRD serves v1 EndpointSlices.
  curl -sk -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -o /dev/null \
    -X POST $api/apis/apiextensions.k8s.io/v1/customresourcedefinitions \
    --data-binary @"$ROOT/tests/harness/endpointslice-crd.json"
  for _ in $(seq 100); do
    curl -sfk -H "Authorization: Bearer $TOKEN" $api/apis/discovery.k8s.io/v1 >/dev/null && break
    sleep 0.1
  done
  echo "API server ready: $api, kubeconfig $run/kubeconfig"
}

stop() {
  local run=${1:-$K/run}
  for p in apiserver etcd; do
    [ -f "$run/$p.pid" ] && kill "$(cat "$run/$p.pid")" 2>/dev/null || true
    rm -f "$run/$p.pid"
  done
}

case "${1:-}" in
  build) build ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 build | start [DIR] | stop [DIR]" >&2; exit 2 ;;
esac
