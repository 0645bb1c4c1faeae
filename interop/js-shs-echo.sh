#!/usr/bin/env bash
# Stand-in for the Rust `shs-echo` built from the JS reference programs, with the same
# command line:
#   js-shs-echo.sh --listen 127.0.0.1:0 [--network-key ..] [--seed HEX]
#   js-shs-echo.sh --connect HOST:PORT --server-key @..ed25519 [--network-key ..] [--seed HEX] [--bytes N]
# Used to self-test run.sh:  interop/run.sh interop/js-shs-echo.sh \
#   interop/shs1-test-adapter-js-server.js interop/shs1-test-adapter-js-client.js
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for a in "$@"; do
  case "$a" in
    --listen|--listen=*) exec node "$here/js-echo-server.js" "$@" ;;
    --connect|--connect=*) exec node "$here/js-client.js" "$@" ;;
  esac
done
echo "js-shs-echo.sh: need --listen or --connect" >&2
exit 2
