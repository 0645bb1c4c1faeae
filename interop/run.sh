#!/usr/bin/env bash
# Interop tests between plugboard's shs1 + box-stream implementation and the reference
# JavaScript implementation used by SSB (secret-handshake / pull-box-stream), plus the
# language-independent shs1-test conformance suite.
#
# usage: interop/run.sh SHS_ECHO_BIN SHS1_SERVER_ADAPTER_BIN SHS1_CLIENT_ADAPTER_BIN
#
#   (a) SHS_ECHO_BIN --listen 127.0.0.1:0        <- node js-client.js   (16 MiB echo)
#  (a2) the same server rejects a client with another network key and keeps serving
#   (b) node js-echo-server.js                    <- SHS_ECHO_BIN --connect (16 MiB echo)
#       (a) and (b) also pass --seed (checked against RFC 8032 public keys) and (b) a
#       non-default --network-key (hex to the JS server, base64 to SHS_ECHO_BIN)
#   (c) shs1-test server suite against SHS1_SERVER_ADAPTER_BIN
#   (d) shs1-test client suite against SHS1_CLIENT_ADAPTER_BIN
#
# Needs node and interop/node_modules (npm ci --prefix interop).
# Environment knobs:
#   INTEROP_BYTES      bytes to echo in (a) and (b)          (default 16777216)
#   INTEROP_TIMEOUT    seconds allowed per step               (default 300)
#   SHS1_TEST_SEED     seed for shs1-test (default: random; printed so a run can be repeated)
#   PLUGBOARD_CRYPTO   the Rust side's crypto provider: rustcrypto (default) or libsodium
# Prints one PASS/FAIL line per step and a closing "interop: N passed, N failed" line;
# exits non-zero if any step failed.
set -euo pipefail

if [ "$#" -ne 3 ]; then
  echo "usage: $0 SHS_ECHO_BIN SHS1_SERVER_ADAPTER_BIN SHS1_CLIENT_ADAPTER_BIN" >&2
  exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Absolute paths, so that the cwd does not matter (bare names are looked up on PATH).
abspath() {
  local d
  if [ -e "$1" ] && d="$(cd "$(dirname "$1")" 2>/dev/null && pwd)"; then
    echo "$d/$(basename "$1")"
  else
    case "$1" in
      */*) echo "$1" ;;
      *) command -v "$1" || echo "$1" ;;
    esac
  fi
}
SHS_ECHO="$(abspath "$1")"
SERVER_ADAPTER="$(abspath "$2")"
CLIENT_ADAPTER="$(abspath "$3")"

if [ ! -f "$here/node_modules/shs1-test/test-server.js" ] || [ ! -d "$here/node_modules/secret-handshake" ]; then
  echo "interop: $here/node_modules is missing; run: npm ci --prefix interop" >&2
  exit 2
fi

# Fixed long-term keys (RFC 8032 test vectors 1 and 2: seed -> Ed25519 public key), so that
# the --seed handling of SHS_ECHO_BIN is checked too.
SERVER_SEED=9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60
SERVER_ID='@11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=.ed25519'
CLIENT_SEED=4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb
CLIENT_ID='@PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=.ed25519'
# A non-default network key for (b), given to the JS server as hex and to SHS_ECHO_BIN as
# base64 ("network-key-for-plugboard-intero" in ASCII).
NETKEY_HEX=6e6574776f726b2d6b65792d666f722d706c7567626f6172642d696e7465726f
NETKEY_B64='bmV0d29yay1rZXktZm9yLXBsdWdib2FyZC1pbnRlcm8='

BYTES="${INTEROP_BYTES:-16777216}"
STEP_TIMEOUT="${INTEROP_TIMEOUT:-300}"
SEED="${SHS1_TEST_SEED:-$RANDOM$RANDOM$RANDOM}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/plugboard-interop.XXXXXX")"
bg_pids=()

cleanup() {
  local pid
  for pid in "${bg_pids[@]+"${bg_pids[@]}"}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      # give it a moment, then make sure
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  bg_pids=()
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# show_log TITLE FILE: indented tail of a log, for diagnosing a failure.
show_log() {
  if [ -s "$2" ]; then
    echo "  --- $1 (last 40 lines) ---"
    tail -n 40 "$2" | sed 's/^/  | /'
  fi
}

# require_exe NAME PATH: fails the step if PATH is not an executable file.
require_exe() {
  if [ ! -f "$2" ] || [ ! -x "$2" ]; then
    echo "  $1 '$2' is not an executable file"
    return 1
  fi
}

# start_server LOGPREFIX CMD...: starts CMD in the background, waits for its
# "listening HOST:PORT @KEY.ed25519" line; sets SERVER_PID, SERVER_ADDR, SERVER_KEY.
start_server() {
  local prefix="$1"; shift
  : >"$prefix.out"
  : >"$prefix.err"
  "$@" >>"$prefix.out" 2>>"$prefix.err" &
  SERVER_PID=$!
  bg_pids+=("$SERVER_PID")
  local waited=0 line="" word="" rest=""
  SERVER_ADDR="" SERVER_KEY=""
  while :; do
    # wait for a complete first line (wc -l counts newlines)
    if [ "$(wc -l <"$prefix.out" 2>/dev/null || echo 0)" -ge 1 ]; then
      IFS= read -r line <"$prefix.out" || true
      break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "  server exited before printing its listening line"
      return 1
    fi
    if [ "$waited" -ge 300 ]; then # 30 s
      echo "  server printed no listening line within 30 s"
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  read -r word SERVER_ADDR SERVER_KEY rest <<<"$line"
  if [ "$word" != "listening" ] || [ -n "$rest" ] \
    || ! [[ "$SERVER_ADDR" =~ ^[^[:space:]]+:[0-9]+$ ]] \
    || ! [[ "$SERVER_KEY" =~ ^@[A-Za-z0-9+/]{43}=\.ed25519$ ]]; then
    echo "  unexpected first stdout line: '$line'"
    echo "  (want: listening 127.0.0.1:PORT @<base64 pubkey>.ed25519)"
    return 1
  fi
}

# run_cmd OUT ERR CMD...: runs CMD under `timeout` with stdout/stderr to files; sets RC.
# Runs in the background + `wait`, so that an INT/TERM to this script is handled at once
# (the EXIT trap then kills it; GNU timeout passes the signal on to its whole process group).
run_cmd() {
  local out="$1" err="$2"; shift 2
  timeout "$STEP_TIMEOUT" "$@" >"$out" 2>"$err" &
  local pid=$!
  bg_pids+=("$pid")
  RC=0
  wait "$pid" || RC=$?
}

stop_server() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
}

echo "interop: shs-echo=$SHS_ECHO server-adapter=$SERVER_ADAPTER client-adapter=$CLIENT_ADAPTER crypto=${PLUGBOARD_CRYPTO:-rustcrypto}"
echo "interop: bytes=$BYTES step-timeout=${STEP_TIMEOUT}s shs1-test seed=$SEED"

# ---------------------------------------------------------------------------------------
# (a) Rust server, JS client
step="(a) node js-client.js --bytes $BYTES -> $SHS_ECHO --listen 127.0.0.1:0 --seed <RFC 8032 #1>"
if ! require_exe SHS_ECHO_BIN "$SHS_ECHO"; then
  fail "$step [no binary]"
elif ! start_server "$tmp/a-server" "$SHS_ECHO" --listen 127.0.0.1:0 --seed "$SERVER_SEED"; then
  fail "$step [server did not start properly]"
  show_log "shs-echo --listen stdout" "$tmp/a-server.out"
  show_log "shs-echo --listen stderr" "$tmp/a-server.err"
  stop_server
else
  start=$SECONDS
  run_cmd "$tmp/a-client.out" "$tmp/a-client.err" node "$here/js-client.js" \
    --connect "$SERVER_ADDR" --server-key "$SERVER_KEY" --bytes "$BYTES" --timeout "$STEP_TIMEOUT"
  if [ "$RC" -eq 0 ] && [ "$SERVER_KEY" = "$SERVER_ID" ]; then
    pass "$step [$SERVER_ADDR $SERVER_KEY, $((SECONDS - start))s]"
  elif [ "$RC" -eq 0 ]; then
    fail "$step [echo ok, but --seed $SERVER_SEED gave $SERVER_KEY, want $SERVER_ID]"
  else
    fail "$step [js-client exit $RC$( [ "$RC" -eq 124 ] && echo ": timed out after ${STEP_TIMEOUT}s")]"
    show_log "js-client stderr" "$tmp/a-client.err"
    show_log "shs-echo --listen stderr" "$tmp/a-server.err"
  fi
  # (a2) the same server must reject a peer on another network and keep serving.
  step2="(a2) $SHS_ECHO --listen: rejects a js-client with another --network-key, then still echoes for a good one"
  run_cmd "$tmp/a2-bad.out" "$tmp/a2-bad.err" node "$here/js-client.js" --connect "$SERVER_ADDR" \
    --server-key "$SERVER_KEY" --bytes 1000 --timeout 30 \
    --network-key 0000000000000000000000000000000000000000000000000000000000000000
  bad_rc=$RC
  run_cmd "$tmp/a2-good.out" "$tmp/a2-good.err" node "$here/js-client.js" --connect "$SERVER_ADDR" \
    --server-key "$SERVER_KEY" --bytes 100000 --timeout 30
  if [ "$bad_rc" -ne 0 ] && [ "$RC" -eq 0 ]; then
    pass "$step2"
  else
    fail "$step2 [wrong-network client exit $bad_rc (want non-zero), good client exit $RC (want 0)]"
    show_log "good js-client stderr" "$tmp/a2-good.err"
    show_log "shs-echo --listen stderr" "$tmp/a-server.err"
  fi
  stop_server
fi

# ---------------------------------------------------------------------------------------
# (b) JS server, Rust client
step="(b) $SHS_ECHO --connect ... --bytes $BYTES --seed <RFC 8032 #2> --network-key <base64> -> node js-echo-server.js --network-key <hex>"
if ! require_exe SHS_ECHO_BIN "$SHS_ECHO"; then
  fail "$step [no binary]"
elif ! start_server "$tmp/b-server" node "$here/js-echo-server.js" --network-key "$NETKEY_HEX"; then
  fail "$step [js-echo-server.js did not start]"
  show_log "js-echo-server stderr" "$tmp/b-server.err"
  stop_server
else
  start=$SECONDS
  run_cmd "$tmp/b-client.out" "$tmp/b-client.err" "$SHS_ECHO" \
    --connect "$SERVER_ADDR" --server-key "$SERVER_KEY" --bytes "$BYTES" \
    --seed "$CLIENT_SEED" --network-key "$NETKEY_B64"
  if [ "$RC" -eq 0 ] && grep -qF "handshake ok with $CLIENT_ID" "$tmp/b-server.err" \
      && grep -qF "got goodbye after $BYTES bytes" "$tmp/b-server.err"; then
    pass "$step [$SERVER_ADDR $SERVER_KEY, $((SECONDS - start))s]"
  elif [ "$RC" -eq 0 ]; then
    fail "$step [client exit 0, but js-echo-server did not see client $CLIENT_ID (its --seed) send $BYTES bytes and a goodbye]"
    show_log "js-echo-server stderr" "$tmp/b-server.err"
  else
    fail "$step [shs-echo --connect exit $RC$( [ "$RC" -eq 124 ] && echo ": timed out after ${STEP_TIMEOUT}s")]"
    show_log "shs-echo --connect stderr" "$tmp/b-client.err"
    show_log "shs-echo --connect stdout" "$tmp/b-client.out"
    show_log "js-echo-server stderr" "$tmp/b-server.err"
  fi
  stop_server
fi

# ---------------------------------------------------------------------------------------
# (c), (d) shs1-test conformance suites (45 cases each; exit status = number of failures)
shs1_suite() { # LETTER ROLE SCRIPT ADAPTER
  local step="($1) shs1-test $2 suite: node node_modules/shs1-test/$3 $4 $SEED"
  if ! require_exe "shs1 $2 adapter" "$4"; then
    fail "$step [no adapter]"
    return
  fi
  local start=$SECONDS rc
  run_cmd "$tmp/$1.out" "$tmp/$1.err" node "$here/node_modules/shs1-test/$3" "$4" "$SEED"
  rc=$RC
  if [ "$rc" -eq 0 ] && grep -q "Passed the $2 test suite" "$tmp/$1.out"; then
    pass "$step [45/45, $((SECONDS - start))s]"
  else
    if [ "$rc" -eq 124 ]; then
      fail "$step [timed out after ${STEP_TIMEOUT}s: an adapter probably did not exit after bad input]"
    else
      fail "$step [exit $rc = number of failed cases out of 45]"
    fi
    # the suite prints one "Failed: ..." line per failed case
    if grep -q '^Failed: ' "$tmp/$1.out"; then
      echo "  failed cases by kind:"
      grep '^Failed: ' "$tmp/$1.out" | sort | uniq -c | sed 's/^/    /'
    fi
    show_log "shs1-test stdout" "$tmp/$1.out"
    show_log "adapter stderr" "$tmp/$1.err"
  fi
}
shs1_suite c server test-server.js "$SERVER_ADAPTER"
shs1_suite d client test-client.js "$CLIENT_ADAPTER"

echo "interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
