// What an SSB server serves, as a JS muxrpc 8.0.0 server on stdin/stdout,
// for `plugboard expose NAME -- node js-legacy-server.js` behind the
// broker's legacy route: the methods js-legacy-client.js calls. `whoami`
// answers LEGACY_ID (the identity the clients dialled), `hello` the
// caller's id as the broker passed it on (PLUGBOARD_FROM_KEY).
'use strict'
const pull = require('pull-stream')
const toPull = require('stream-to-pull-stream')
const MRPC = require('muxrpc')

const manifest = {
  manifest: 'sync',
  whoami: 'sync',
  hello: 'async',
  count: 'source',
  stall: 'async',
}
const methods = {
  manifest: () => manifest,
  whoami: () => ({ id: process.env.LEGACY_ID }),
  hello: (cb) => cb(null, { caller: process.env.PLUGBOARD_FROM_KEY }),
  count: (n) => pull.values([...Array(n).keys()]),
  stall: () => {},
}
const server = MRPC(null, manifest, methods)
pull(toPull.source(process.stdin), server.stream, toPull.sink(process.stdout))
