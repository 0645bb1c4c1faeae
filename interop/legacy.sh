#!/usr/bin/env bash
# SSB clients as they are, through the broker's legacy route, with
# ssb-client 4.9.0 and secret-stack 8.1.0 (interop/package-lock.json):
#   plugboard serve --legacy-listen tcp:127.0.0.1:0 --legacy-route ssb
# (a) the plugin holding `ssb` is a JS muxrpc server run by `plugboard expose`;
# (b) it is the Rust example SSB_SERVER (runtime-tokio/examples/ssb_server.rs).
# To each: ssb-client without and with a manifest, and a secret-stack peer,
# call whoami, hello (an async method that sees the caller's key) and a
# source. Then, against (b): a client that hangs up without a goodbye (the
# next one is served), a key the plugin rejects, a client on another network
# key, the plugin dying mid-call, and nobody holding the name.
#
# usage: interop/legacy.sh PLUGBOARD_BIN SSB_SERVER_BIN
# Prints one PASS/FAIL line per step and "legacy interop: N passed, N failed";
# exits non-zero if any step failed.
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 PLUGBOARD_BIN SSB_SERVER_BIN" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugboard="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
server="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"

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
ssb_main="1KHLiKZvAvjbY1ziZEHMXawbCEIM6qwjCDm3VYRan/s="
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
unlisted() { ! listed "$1"; }

"$plugboard" keygen >/dev/null
me="$("$plugboard" id)"
# PLUGBOARD_RUNTIME picks the broker's runtime (tokio by default).
"$plugboard" serve -v --runtime "${PLUGBOARD_RUNTIME:-tokio}" --legacy-route ssb \
  --legacy-listen tcp:127.0.0.1:0 --legacy-noauth-unix "$home/ssb.sock" >"$home/broker.log" 2>&1 &
pids+=($!)
wait_until "the broker's socket" test -S "$home/broker.sock"
wait_until "the legacy listener" grep -q "(legacy:" "$home/broker.log"
port="$(sed -n 's/.*listening on tcp:127\.0\.0\.1:\([0-9]*\) (legacy.*/\1/p' "$home/broker.log")"

# client STEP MODE [NETWORK_KEY] [KEY_FILE]: runs js-legacy-client.js, which prints "ok".
client() {
  local step="$1" mode="$2" network="${3:-$ssb_main}" keyfile="${4:-}"
  if timeout 60 node "$here/js-legacy-client.js" "$mode" "$port" "$me" "$network" $keyfile \
    >"$home/client.log" 2>&1 && grep -qx ok "$home/client.log"; then
    pass "$step"
  else
    fail "$step"
  fi
}

every_client() {
  client "$1: ssb-client, no manifest" ssb-client
  client "$1: ssb-client with a manifest" ssb-client-manifest
  client "$1: a secret-stack peer" secret-stack
}

# (a) A JS muxrpc server behind `plugboard expose`.
LEGACY_ID="$me" "$plugboard" expose ssb -- node "$here/js-legacy-server.js" >"$home/expose.log" 2>&1 &
expose=$!
pids+=($expose)
if wait_until "ssb to be listed" listed ssb; then
  every_client "(a) expose"
else
  fail "(a) expose: the plugin did not register"
fi
kill "$expose"
wait_until "ssb to be free" unlisted ssb || true

# (b) The Rust example, rejecting one key, and taking half a second to
# accept each client (the client waits for message 4 meanwhile, silent).
keys="$here/node_modules/ssb-keys"
node -e "require('$keys').loadOrCreateSync('$home/rejected')"
rejected="$(node -e "console.log(require('$keys').loadSync('$home/rejected').id)")"
SSB_SERVER_ACCEPT_DELAY_MS=500 \
  "$server" "$home/secret" "$PLUGBOARD_BROKER" ssb "$me" "$rejected" >"$home/server.log" 2>&1 &
rust=$!
pids+=($rust)
if wait_until "ssb to be listed" listed ssb; then
  every_client "(b) Rust example"
else
  fail "(b) Rust example: the plugin did not register"
fi

client "8 MiB uploaded through a sink, past every window" upload

step="a local tool on the noauth socket, as the identity itself"
if timeout 60 node "$here/js-legacy-client.js" noauth "$home/ssb.sock" "$me" "$ssb_main" "$home/secret" \
  >"$home/client.log" 2>&1 && grep -qx ok "$home/client.log"; then
  pass "$step"
else
  fail "$step"
fi
step="... on a socket only its owner can reach"
if [ "$(stat -c %a "$home/ssb.sock")" = 600 ]; then pass "$step"; else fail "$step"; fi

client "a client that hangs up with no goodbye" hangup
client "... and the next client is served" ssb-client
client "a key the plugin rejects gets no session" refused "$ssb_main" "$home/rejected"
step="... the plugin was offered that key, and said no"
if grep -qxF "rejected $rejected" "$home/server.log"; then pass "$step"; else fail "$step"; fi
offers="$(grep -c '^serving @\|^rejected @' "$home/server.log")"
client "a client on another network key gets no session" refused "$(head -c 32 /dev/urandom | base64)"
step="... and the plugin never heard of it; the broker says why"
if [ "$(grep -c '^serving @\|^rejected @' "$home/server.log")" -eq "$offers" ] &&
  grep -q "handshake failed" "$home/broker.log"; then
  pass "$step"
else
  fail "$step"
fi

# The plugin dies while a call is in flight: the call fails, the client is not left hanging.
step="the plugin dying mid-call fails the call"
timeout 60 node "$here/js-legacy-client.js" midcall "$port" "$me" "$ssb_main" >"$home/midcall.log" 2>&1 &
midcall=$!
if wait_until "the call to reach the plugin" grep -qx stalled "$home/server.log"; then
  { kill -9 "$rust" && wait "$rust"; } 2>/dev/null || true
  if wait "$midcall" && grep -qx ok "$home/midcall.log"; then pass "$step"; else fail "$step"; fi
else
  fail "$step"
fi
wait_until "ssb to be free" unlisted ssb || true

client "nobody holding the name: no session" refused
step="... the broker says why, and still serves its plugins"
if grep -q "nobody has the name ssb" "$home/broker.log" && "$plugboard" list >/dev/null; then
  pass "$step"
else
  fail "$step"
fi

echo "legacy interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
