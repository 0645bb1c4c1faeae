'use strict'
// Shared helpers for the plugboard interop scripts (js-echo-server.js, js-client.js).

const crypto = require('crypto')
const sodium = require('chloride')

// SSB main network key ("app key" / shs network identifier).
const SSB_MAIN_NETWORK_KEY = 'd4a1cb88a66f02f8db635ce26441cc5dac1b08420ceaac230839b755845a9ffb'

function die (msg, code) {
  process.stderr.write(`${require('path').basename(process.argv[1])}: ${msg}\n`)
  process.exit(code || 1)
}

// Parses "--flag value" and "--flag=value". `spec` maps flag name -> true (takes a value).
function parseArgs (argv, spec, usage) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i]
    if (a === '-h' || a === '--help') { process.stdout.write(usage + '\n'); process.exit(0) }
    if (!a.startsWith('--')) die(`unexpected argument ${JSON.stringify(a)}\n${usage}`, 2)
    let v
    const eq = a.indexOf('=')
    if (eq !== -1) { v = a.slice(eq + 1); a = a.slice(0, eq) }
    const name = a.slice(2)
    if (!(name in spec)) die(`unknown option --${name}\n${usage}`, 2)
    if (v === undefined) {
      if (i + 1 >= argv.length) die(`option --${name} needs a value\n${usage}`, 2)
      v = argv[++i]
    }
    out[name] = v
  }
  return out
}

// 32 bytes given as 64 hex chars or as base64 (44 chars with padding, or 43 without).
function parseKey32 (s, what) {
  let buf = null
  if (/^[0-9a-fA-F]{64}$/.test(s)) buf = Buffer.from(s, 'hex')
  else if (/^[A-Za-z0-9+/]{43}=?$/.test(s)) buf = Buffer.from(s, 'base64')
  if (!buf || buf.length !== 32) die(`${what} must be 32 bytes as 64 hex chars or base64, got ${JSON.stringify(s)}`, 2)
  return buf
}

function parseNetworkKey (s) {
  return parseKey32(s === undefined ? SSB_MAIN_NETWORK_KEY : s, '--network-key')
}

// SSB feed id "@<base64 ed25519 pubkey>.ed25519" (also accepts bare base64 or hex).
function parseFeedId (s) {
  const m = /^@([A-Za-z0-9+/]{43}=)\.ed25519$/.exec(s)
  return parseKey32(m ? m[1] : s, '--server-key')
}

function feedId (pk) {
  return '@' + pk.toString('base64') + '.ed25519'
}

// Long-term Ed25519 keypair. With --seed HEX (32 bytes) it is
// crypto_sign_seed_keypair(seed): publicKey 32 bytes, secretKey 64 bytes (seed || publicKey),
// i.e. the RFC 8032 / ed25519-dalek derivation. Without a seed, a random one.
function keypairFromSeed (seedHex) {
  let seed
  if (seedHex === undefined) seed = crypto.randomBytes(32)
  else {
    if (!/^[0-9a-fA-F]{64}$/.test(seedHex)) die(`--seed must be 64 hex chars (32 bytes), got ${JSON.stringify(seedHex)}`, 2)
    seed = Buffer.from(seedHex, 'hex')
  }
  return sodium.crypto_sign_seed_keypair(seed)
}

function parseHostPort (s, what) {
  const m = /^(.*):(\d+)$/.exec(s || '')
  if (!m) die(`${what} must be HOST:PORT, got ${JSON.stringify(s)}`, 2)
  return { host: m[1].replace(/^\[(.*)\]$/, '$1'), port: Number(m[2]) }
}

module.exports = {
  SSB_MAIN_NETWORK_KEY,
  die,
  parseArgs,
  parseKey32,
  parseNetworkKey,
  parseFeedId,
  feedId,
  keypairFromSeed,
  parseHostPort
}
