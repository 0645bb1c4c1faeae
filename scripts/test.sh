#!/usr/bin/env bash
# plugboard's whole test suite: unit, property and known-answer tests, then
# interop with the JavaScript implementation SSB runs and SSB's shs1
# conformance suite, in both roles. Needs cargo and Node.js (npm).
set -euo pipefail
cd "$(dirname "$0")/.."

# The JS side, from the lockfile, into interop/node_modules (git-ignored).
if [ ! -f interop/node_modules/.package-lock.json ] ||
   [ interop/package-lock.json -nt interop/node_modules/.package-lock.json ]; then
  npm ci --prefix interop --no-audit --no-fund --loglevel=error
fi

# Twice: on the default crypto provider (pure-Rust RustCrypto), then with
# every feature, which puts the plugin builders, the `plugboard` command and
# the conformance suite's brokers on libsodium (the `libsodium` feature).
echo "== tests, crypto provider: rustcrypto (default features)"
cargo test --workspace
echo "== tests, crypto provider: libsodium (--all-features)"
cargo test --workspace --all-features

cargo build --release -p plugboard-core --examples --all-features
bin="${CARGO_TARGET_DIR:-target}/release/examples"

# The deterministic simulation: a broker and many plugins, 1000 seeds.
"$bin/simulate" --seeds 1000 --start 0 | tail -n 2

# The JS muxrpc transcript the core's muxrpc_vectors test replays is what
# muxrpc 8.0.0 writes today.
node interop/muxrpc-vectors.js --check core/tests/vectors/muxrpc_js.json

# Interop with the JavaScript implementation, once on each crypto provider.
for crypto in rustcrypto libsodium; do
  PLUGBOARD_CRYPTO=$crypto interop/run.sh "$bin/shs-echo" "$bin/shs1-test-server" "$bin/shs1-test-client"
done

# muxrpc with JS muxrpc 8.0.0 through a broker, both ways (the debug builds
# the tests made).
cargo build -p plugboard-cli -p plugboard-tokio --bins --examples --all-features
debug="${CARGO_TARGET_DIR:-target}/debug"
interop/muxrpc.sh "$debug/plugboard" "$debug/examples/muxrpc_peer"

# SSB clients as they are (ssb-client, secret-stack) through the legacy
# route, to a JS muxrpc server and to the Rust example SSB server.
for runtime in tokio smol mio; do
  PLUGBOARD_RUNTIME=$runtime interop/legacy.sh "$debug/plugboard" "$debug/examples/ssb_server"
done
