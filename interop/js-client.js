#!/usr/bin/env node
'use strict'
// Reference shs1 + box-stream echo client (JS side of the plugboard interop tests).
//
// usage: node js-client.js --connect HOST:PORT --server-key @<base64>.ed25519
//          [--network-key HEX|BASE64] [--seed HEX] [--bytes N] [--data-seed U32] [--timeout SECS]
//
// Performs secret-handshake (shs1) as client, sends N pseudo-random bytes through the
// box-stream in varied write sizes, checks the echo byte for byte, then ends its side
// (box-stream goodbye + TCP FIN) and waits for the server's goodbye and TCP close.
// Exit 0 only if all of that held; otherwise non-zero with a message on stderr.

const net = require('net')
const pull = require('pull-stream')
const toPull = require('stream-to-pull-stream')
const shs = require('secret-handshake')
const c = require('./common')

const USAGE = 'usage: node js-client.js --connect HOST:PORT --server-key @<base64>.ed25519 ' +
  '[--network-key HEX|BASE64] [--seed HEX] [--bytes N] [--data-seed U32] [--timeout SECS]'
const args = c.parseArgs(process.argv.slice(2), {
  connect: true, 'server-key': true, 'network-key': true, seed: true, bytes: true, 'data-seed': true, timeout: true
}, USAGE)
if (!args.connect) c.die(`--connect is required\n${USAGE}`, 2)
if (!args['server-key']) c.die(`--server-key is required\n${USAGE}`, 2)
const target = c.parseHostPort(args.connect, '--connect')
const serverPk = c.parseFeedId(args['server-key'])
const appKey = c.parseNetworkKey(args['network-key'])
const keys = c.keypairFromSeed(args.seed)
const N = args.bytes === undefined ? 1 << 20 : Number(args.bytes)
if (!Number.isSafeInteger(N) || N < 0) c.die(`--bytes must be a non-negative integer, got ${args.bytes}`, 2)
const dataSeed = args['data-seed'] === undefined ? (Math.random() * 0x100000000) >>> 0 : Number(args['data-seed']) >>> 0
const timeoutSecs = args.timeout === undefined ? 300 : Number(args.timeout)

const t0 = Date.now()
let stage = 'connecting'
function fail (msg) {
  c.die(`FAIL (${stage}, data-seed ${dataSeed}): ${msg}`, 1)
}
setTimeout(() => fail(`timed out after ${timeoutSecs}s`), timeoutSecs * 1000).unref()

// xorshift32: deterministic payload and write sizes for a given --data-seed.
let rs = dataSeed || 0x9e3779b9
function rnd () { rs ^= rs << 13; rs >>>= 0; rs ^= rs >>> 17; rs ^= rs << 5; rs >>>= 0; return rs }
const data = Buffer.allocUnsafe(N)
for (let i = 0; i + 4 <= N; i += 4) data.writeUInt32LE(rnd(), i)
for (let i = N - (N % 4); i < N; i++) data[i] = rnd() & 0xff

// Write sizes: edge cases around the 4096-byte box-stream body limit mixed with random sizes.
const EDGE = [1, 2, 3, 31, 4095, 4096, 4097, 8191, 8192, 8193, 65535, 65536, 100003, 1 << 20]
function nextSize () {
  const r = rnd()
  return (r % 3 === 0) ? EDGE[(r >>> 2) % EDGE.length] : 1 + ((r >>> 2) % 70000)
}

let sent = 0
let writes = 0
function source (abort, cb) {
  if (abort) return cb(abort)
  if (sent >= N) return cb(true) // -> box-stream goodbye, then TCP FIN
  const len = Math.min(nextSize(), N - sent)
  const chunk = Buffer.from(data.subarray(sent, sent + len)) // copy: box-stream must not alias our buffer
  sent += len
  writes++
  cb(null, chunk)
}

let received = 0
function checker (read) {
  read(null, function next (end, chunk) {
    if (end === true) return gotGoodbye()
    if (end) return fail(`box-stream error after ${received}/${N} echoed bytes: ${end.message || end}`)
    if (received + chunk.length > N) return fail(`server echoed more than the ${N} bytes sent`)
    if (!chunk.equals(data.subarray(received, received + chunk.length))) {
      let i = 0
      while (chunk[i] === data[received + i]) i++
      return fail(`echo mismatch at byte offset ${received + i}`)
    }
    received += chunk.length
    read(null, next)
  })
}

let socketClosed = false
let goodbye = false
function gotGoodbye () {
  if (received !== N) return fail(`server sent goodbye after only ${received}/${N} echoed bytes`)
  goodbye = true
  stage = 'waiting for TCP close after server goodbye'
  if (socketClosed) finish()
}
function finish () {
  const secs = (Date.now() - t0) / 1000
  process.stderr.write(`js-client: OK ${N} bytes echoed in ${writes} writes, goodbye exchanged, ${secs.toFixed(2)}s\n`)
  process.exit(0)
}

const socket = net.connect({ host: target.host, port: target.port, allowHalfOpen: true })
socket.setNoDelay(true)
socket.on('error', err => fail(`socket error: ${err.message}`))
socket.on('close', () => {
  socketClosed = true
  if (goodbye) finish()
})
socket.on('connect', () => { stage = 'handshake' })

const cipher = toPull.duplex(socket)
const createClientStream = shs.createClient(keys, appKey)
pull(
  cipher,
  createClientStream(serverPk, (err, plain) => {
    if (err) return fail(`handshake failed: ${err.message}`)
    stage = 'echo'
    pull(source, plain.sink)
    checker(plain.source)
  }),
  cipher
)
