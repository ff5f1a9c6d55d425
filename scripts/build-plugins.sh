#!/usr/bin/env bash
# Builds the plugin SDK and every plugin in plugins/ into WebAssembly components:
#   target/plugins/<name>.wasm          the plugins that ship with nodeportd
#   target/plugins/hostile/<name>.wasm  misbehaving plugins for the test suite, never shipped
#   target/plugins/fixtures/<name>.wasm test fixtures (e.g. pin: a known selection), never shipped
# and prints them with their sizes. One command on a fresh Debian machine (as root, or a user
# with sudo): it installs the guest toolchain when it is missing. Later runs rebuild only what
# changed and leave unchanged outputs untouched (their mtimes too).
#
#   scripts/build-plugins.sh          build
#   scripts/build-plugins.sh --test   also run the plugins' native unit tests first
#
# Why Debian's Rust: the rustup toolchain here has no wasm32 target and cannot download one.
# Debian's rustc-web ships rust-src, so cargo rebuilds std for wasm32-unknown-unknown
# (-Zbuild-std, allowed by RUSTC_BOOTSTRAP=1), and its wasm-component-ld links straight to a
# component. The settings live in plugins/.cargo/config.toml, which cargo only reads when run
# from inside plugins/. The host keeps building with the rustup toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

run_tests=false
for arg in "$@"; do
  case "$arg" in
    --test) run_tests=true ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-plugins.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

rustlib=/usr/lib/rustlib/x86_64-unknown-linux-gnu
if [ ! -x /usr/bin/cargo ] || [ ! -x /usr/bin/rustc ] || [ ! -x "$rustlib/bin/wasm-component-ld" ] \
  || [ ! -d /usr/lib/rustlib/src/rust/library/std ] || [ ! -x /usr/bin/ld.lld-22 ]; then
  echo "== installing Debian's Rust (rustc-web cargo-web rust-web-src rust-web-llvm lld-22)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # the four rust-web packages together: -Zbuild-std needs rust-web-src of exactly rustc's
  # version; lld-22 by name, since rust-web-llvm's rust-lld points at it without depending on it
  $SUDO apt-get install -y -qq --no-install-recommends \
    rustc-web cargo-web rust-web-src rust-web-llvm lld-22 >/dev/null
fi

export CARGO_TARGET_DIR="$root/plugins/target"

if $run_tests; then
  echo "== native unit tests of the SDK and plugins"
  # From the repository root, where no .cargo/config.toml applies: a native build.
  cargo_native=$(command -v cargo || echo /usr/bin/cargo)
  "$cargo_native" test -q --manifest-path plugins/Cargo.toml --workspace
fi

echo "== building plugins (wasm32 components)"
(
  cd plugins
  RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
    /usr/bin/cargo build --release --workspace
)

built=$CARGO_TARGET_DIR/wasm32-unknown-unknown/release
out=$root/target/plugins
mkdir -p "$out/hostile"

# copy <crate dir> <destination dir>: cargo names the output after the crate (underscores),
# the host expects the plugin's name (hyphens)
copy() {
  local name file dest
  name=$(basename "$1")
  file=$built/${name//-/_}.wasm
  dest=$2/$name.wasm
  if [ ! -f "$file" ]; then
    echo "build-plugins.sh: $file was not built" >&2
    exit 1
  fi
  # a component starts with \0asm, version 0x0d, layer 1 (a core module has layer 0)
  if [ "$(head -c 8 "$file" | od -An -tx1 | tr -d ' \n')" != 0061736d0d000100 ]; then
    echo "build-plugins.sh: $file is not a WebAssembly component" >&2
    exit 1
  fi
  cmp -s "$file" "$dest" || cp "$file" "$dest"
}

for manifest in plugins/*/Cargo.toml; do
  dir=$(dirname "$manifest")
  [ "$dir" = plugins/sdk ] && continue
  copy "$dir" "$out"
done
for kind in hostile fixtures; do
  mkdir -p "$out/$kind"
  for manifest in plugins/$kind/*/Cargo.toml; do
    copy "$(dirname "$manifest")" "$out/$kind"
  done
done

echo "== plugins"
(cd "$root" && find target/plugins -name '*.wasm' -printf '%10s  %p\n' | sort -k2)
