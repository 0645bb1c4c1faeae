// A JS muxrpc 8.0.0 server on stdin/stdout, for `plugboard expose NAME --
// node js-muxrpc-server.js`: the methods `muxrpc_peer call` checks, with
// `whoami` answering the caller's id from PLUGBOARD_FROM_KEY.
'use strict'
const pull = require('pull-stream')
const toPull = require('stream-to-pull-stream')
const MRPC = require('muxrpc')
const { manifest, api } = require('./muxrpc-api')

const methods = api({ id: process.env.PLUGBOARD_FROM_KEY, error: () => new Error('failed as asked') })
const server = MRPC(null, manifest, methods)
pull(toPull.source(process.stdin), server.stream, toPull.sink(process.stdout))
