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

cargo test --workspace --all-features

cargo build --release -p plugboard-core --examples --all-features
bin=target/release/examples

# The deterministic simulation: a broker and many plugins, 1000 seeds.
"$bin/simulate" --seeds 1000 --start 0 | tail -n 2

interop/run.sh "$bin/shs-echo" "$bin/shs1-test-server" "$bin/shs1-test-client"
