// The methods both JS muxrpc programs here serve (the vectors' recorder and
// the stdio server), as secret-stack would: `manifest` is a method too.
'use strict'
const pull = require('pull-stream')

const manifest = {
  manifest: 'sync',
  whoami: 'sync',
  add: 'async',
  fail: 'async',
  count: 'source',
  collect: 'sink',
  collected: 'async',
  echo: 'duplex',
}

// `whoami` answers `id`; `fail` fails with `error()`.
function api({ id, error }) {
  let collected = []
  return {
    manifest: () => manifest,
    whoami: () => ({ id }),
    add: (a, b, cb) => cb(null, a + b),
    fail: (cb) => cb(error()),
    count: (n) => pull.values([...Array(n).keys()]),
    collect: () => pull.collect((err, values) => { collected = values }),
    collected: (cb) => cb(null, collected),
    echo: require('./muxrpc-echo'),
  }
}

module.exports = { manifest, api }
