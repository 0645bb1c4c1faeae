#!/usr/bin/env node
'use strict'
// shs1-test adapter for the CLIENT role, wrapping the reference JS implementation
// (secret-handshake). Known-good reference for the Rust adapter; see SHS1-TEST.md.
//
// invoked by shs1-test as:  ADAPTER <network_identifier hex32> <server_longterm_pk hex32>
// stdout: msg1 (64 bytes), then msg3 (112 bytes), then encKey(32) encNonce(24) decKey(32) decNonce(24)
// stdin:  msg2 (64 bytes), then msg4 (80 bytes)
// Any failure: exit 1 without writing anything more to stdout.

const crypto = require('crypto')
const pull = require('pull-stream')
const toPull = require('stream-to-pull-stream')
const sodium = require('chloride')
const shs = require('secret-handshake')

function fail (msg) {
  process.stderr.write(`shs1-test-adapter-js-client: ${msg}\n`)
  process.exit(1)
}

const [netHex, serverPkHex] = process.argv.slice(2)
if (!netHex || !serverPkHex) fail('usage: ADAPTER NETWORK_ID_HEX SERVER_PK_HEX')
const appKey = Buffer.from(netHex, 'hex')
const serverPk = Buffer.from(serverPkHex, 'hex')
if (appKey.length !== 32 || serverPk.length !== 32) fail('bad key lengths')

// Our own long-term key can be anything.
const keys = sodium.crypto_sign_seed_keypair(crypto.randomBytes(32))
const createClientStream = shs.createClientStream(keys, appKey, 60e3)

const stream = createClientStream(serverPk, (err, rest, state) => {
  if (err) fail(`handshake failed: ${err.message || err}`)
  const outcome = Buffer.concat([
    state.encryptKey, state.remote.app_mac.slice(0, 24),
    state.decryptKey, state.local.app_mac.slice(0, 24)
  ])
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
