#!/usr/bin/env node
'use strict'
// shs1-test adapter for the SERVER role, wrapping the reference JS implementation
// (secret-handshake). Known-good reference for the Rust adapter; see SHS1-TEST.md.
//
// invoked by shs1-test as:  ADAPTER <network_identifier hex32> <server_longterm_sk hex64> <server_longterm_pk hex32>
// stdin:  msg1 (64 bytes), then msg3 (112 bytes)
// stdout: msg2 (64 bytes), then msg4 (80 bytes) + encKey(32) encNonce(24) decKey(32) decNonce(24)
// Any failure: exit 1 without writing anything more to stdout.

const pull = require('pull-stream')
const toPull = require('stream-to-pull-stream')
const shs = require('secret-handshake')

function fail (msg) {
  process.stderr.write(`shs1-test-adapter-js-server: ${msg}\n`)
  process.exit(1)
}

const [netHex, skHex, pkHex] = process.argv.slice(2)
if (!netHex || !skHex || !pkHex) fail('usage: ADAPTER NETWORK_ID_HEX SERVER_SK_HEX SERVER_PK_HEX')
const appKey = Buffer.from(netHex, 'hex')
const keys = { secretKey: Buffer.from(skHex, 'hex'), publicKey: Buffer.from(pkHex, 'hex') }
if (appKey.length !== 32 || keys.secretKey.length !== 64 || keys.publicKey.length !== 32) fail('bad key lengths')

// The suite starts all its cases at once; use a generous handshake timeout (default is 5 s).
const createServerStream = shs.createServerStream(keys, (id, cb) => cb(null, true), appKey, 60e3)

const stream = createServerStream((err, rest, state) => {
  if (err) fail(`handshake failed: ${err.message || err}`)
  const outcome = Buffer.concat([
    state.encryptKey, state.remote.app_mac.slice(0, 24),
    state.decryptKey, state.local.app_mac.slice(0, 24)
  ])
  // Goes through the handshake's own output, so it is ordered after msg4.
  pull(pull.values([outcome]), rest.sink)
})

pull(
  toPull.source(process.stdin),
  stream,
  toPull.sink(process.stdout, err => {
    if (err) fail(`stdout: ${err.message || err}`)
    process.exit(0)
  })
)
