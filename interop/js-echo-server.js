#!/usr/bin/env node
'use strict'
// Reference shs1 + box-stream echo server (JS side of the plugboard interop tests).
//
// usage: node js-echo-server.js [--listen 127.0.0.1:0] [--network-key HEX|BASE64] [--seed HEX]
//
// Prints exactly one line to stdout:  listening 127.0.0.1:PORT @<base64 pubkey>.ed25519
// Then, per TCP connection: secret-handshake (shs1) as server, then a box-stream echo:
// every plaintext byte received is written back; when the client sends the box-stream
// goodbye, the server answers with its own goodbye and closes. Failures of a peer are
// logged to stderr; the server keeps serving until killed.

const net = require('net')
const pull = require('pull-stream')
const toPull = require('stream-to-pull-stream')
const shs = require('secret-handshake')
const c = require('./common')

const USAGE = 'usage: node js-echo-server.js [--listen HOST:PORT] [--network-key HEX|BASE64] [--seed HEX]'
const args = c.parseArgs(process.argv.slice(2), { listen: true, 'network-key': true, seed: true }, USAGE)
const appKey = c.parseNetworkKey(args['network-key'])
const keys = c.keypairFromSeed(args.seed)
const listen = c.parseHostPort(args.listen || '127.0.0.1:0', '--listen')

function log (msg) { process.stderr.write(`js-echo-server: ${msg}\n`) }

// Never let one misbehaving peer take the server down.
process.on('uncaughtException', err => log(`uncaught exception (continuing): ${err && err.stack || err}`))

const createServerStream = shs.createServer(keys, (id, cb) => cb(null, true), appKey)

let nconn = 0
const server = net.createServer({ allowHalfOpen: true }, socket => {
  const n = ++nconn
  const who = `conn#${n} ${socket.remoteAddress}:${socket.remotePort}`
  socket.setNoDelay(true)
  socket.on('error', err => log(`${who}: socket error: ${err.message}`))
  // Once our side is finished (goodbye + FIN sent), don't wait forever for the peer's FIN.
  socket.on('finish', () => setTimeout(() => socket.destroy(), 30000).unref())
  let echoed = 0
  let finished = false
  const cipher = toPull.duplex(socket)
  pull(
    cipher,
    createServerStream((err, plain) => {
      if (err) {
        log(`${who}: handshake failed: ${err.message}`)
        return socket.destroy() // secret-handshake does not always close a half-closed socket itself
      }
      log(`${who}: handshake ok with ${c.feedId(plain.remote)}`)
      pull(
        plain.source,
        function watch (read) {
          return function (abort, cb) {
            read(abort, function (end, data) {
              if (end && finished) return cb(end, data)
              if (end) finished = true
              // pull-box-stream may report an invalid header as a plain end once the socket
              // was destroyed under it, so check the socket before calling it a goodbye.
              if (end === true && !socket.destroyed) log(`${who}: got goodbye after ${echoed} bytes, sending goodbye`)
              else if (end === true) log(`${who}: connection aborted after ${echoed} bytes (invalid box-stream data or hangup)`)
              else if (end) {
                log(`${who}: box-stream error after ${echoed} bytes: ${end.message || end}`)
                setImmediate(() => socket.destroy())
              }
              else echoed += data.length
              cb(end, data)
            })
          }
        },
        plain.sink
      )
    }),
    cipher
  )
})

server.on('error', err => { log(`server error: ${err.message}`); process.exit(1) })
server.listen(listen.port, listen.host, () => {
  const a = server.address()
  const host = a.family === 'IPv6' || a.family === 6 ? `[${a.address}]` : a.address
  process.stdout.write(`listening ${host}:${a.port} ${c.feedId(keys.publicKey)}\n`)
})

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
