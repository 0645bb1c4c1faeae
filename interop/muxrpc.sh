#!/usr/bin/env bash
# muxrpc interop through the broker, with JS muxrpc 8.0.0 (interop/package-lock.json):
#   (e) node js-muxrpc-client.js -> plugboard connect rusty --protocol muxrpc
#       -> broker -> MUXRPC_PEER serve rusty (a Rust muxrpc plugin); the JS side says goodbye
#   (f) MUXRPC_PEER call jsrpc -> broker -> plugboard expose jsrpc -- node js-muxrpc-server.js
#       (whoami answers PLUGBOARD_FROM_KEY); the Rust side says goodbye
# Each does an async call, an error, a source, a sink, a duplex stream and the goodbye.
#
# usage: interop/muxrpc.sh PLUGBOARD_BIN MUXRPC_PEER_BIN
# Prints one PASS/FAIL line per step and "muxrpc interop: N passed, N failed"; exits
# non-zero if any step failed.
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 PLUGBOARD_BIN MUXRPC_PEER_BIN" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugboard="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
peer="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"

home="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$home"
}
trap cleanup EXIT

export PLUGBOARD_HOME="$home"
export PLUGBOARD_BROKER="unix:$home/broker.sock"
unset RUST_LOG
passed=0 failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() {
  echo "FAIL $1"
  failed=$((failed + 1))
  for log in "$home"/*.log; do echo "--- $log"; tail -n 20 "$log"; done
}

# wait_until WHAT CMD...: retries CMD for up to 20 s.
wait_until() {
  local what="$1"; shift
  for _ in $(seq 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "  $what did not happen within 20 s"
  return 1
}
listed() { "$plugboard" list --json | grep -q "\"name\":\"$1\""; }

"$plugboard" keygen >/dev/null
me="$("$plugboard" id)"
"$plugboard" serve >"$home/broker.log" 2>&1 &
pids+=($!)
wait_until "the broker's socket" test -S "$home/broker.sock"

step="(e) JS muxrpc client -> plugboard connect -> broker -> Rust muxrpc plugin"
"$peer" serve "$home/secret" "$PLUGBOARD_BROKER" rusty >"$home/peer.log" 2>&1 &
pids+=($!)
if wait_until "rusty to be listed" listed rusty &&
  timeout 120 node "$here/js-muxrpc-client.js" "$plugboard" rusty "$me" >"$home/js-client.log" 2>&1; then
  pass "$step"
else
  fail "$step"
fi

step="(f) Rust muxrpc client -> broker -> plugboard expose -> JS muxrpc server"
"$plugboard" expose jsrpc -- node "$here/js-muxrpc-server.js" >"$home/expose.log" 2>&1 &
pids+=($!)
if wait_until "jsrpc to be listed" listed jsrpc &&
  timeout 120 "$peer" call "$home/secret" "$PLUGBOARD_BROKER" jsrpc >"$home/rust-client.log" 2>&1 &&
  grep -qx ok "$home/rust-client.log"; then
  pass "$step"
else
  fail "$step"
fi

echo "muxrpc interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
