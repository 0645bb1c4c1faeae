// Records what JS muxrpc 8.0.0 writes, both ways, when a client calls a
// server over an in-memory stream: the manifest, an async call, a sync
// method, an error, a source, a sink, a duplex stream, and the goodbye.
//
// usage: node muxrpc-vectors.js            print the transcript (JSON)
//        node muxrpc-vectors.js --check F  exit 1 unless it equals file F
//
// core/tests/vectors/muxrpc_js.json is this script's output; core's test
// `muxrpc_vectors` replays it against the Rust session, byte for byte.
'use strict'
const fs = require('fs')
const pull = require('pull-stream')
const MRPC = require('muxrpc')

const { manifest, api: methods } = require('./muxrpc-api')

// An error whose stack does not name this machine's paths.
function fixedError(message) {
  const error = new Error(message)
  error.stack = 'Error: ' + message + '\n    at server'
  return error
}

const api = methods({ id: '@server', error: () => fixedError('nope') })

const transcript = []
function tap(from) {
  return pull.through((chunk) => {
    const hex = Buffer.from(chunk).toString('hex')
    const last = transcript[transcript.length - 1]
    if (last && last.from === from) last.hex += hex
    else transcript.push({ from, hex })
  })
}

function run(done) {
  const server = MRPC(null, manifest, api)
  const client = MRPC(function (err, remoteManifest, rpc) {
    if (err) throw err
    steps(rpc, client, done)
  })
  const a = client.stream
  const b = server.stream
  pull(a, tap('client'), b)
  pull(b, tap('server'), a)
}

function steps(rpc, client, done) {
  rpc.whoami((err, me) => {
    if (err) throw err
    rpc.add(1, 2, (err, sum) => {
      if (err || sum !== 3) throw err || new Error('sum')
      rpc.fail((err) => {
        if (!err || err.message !== 'nope') throw new Error('expected an error')
        pull(rpc.count(3), pull.collect((err, counted) => {
          if (err || counted.join() !== '0,1,2') throw err || new Error('count')
          pull(pull.values(['a', 'b', 'c']), rpc.collect((err) => {
            if (err) throw err
            pull(pull.values(['x', 'y']), rpc.echo(), pull.collect((err, echoed) => {
              if (err || echoed.join() !== 'x,y') throw err || new Error('echo')
              client.close((err) => {
                if (err) throw err
                // Let the server's goodbye arrive.
                setTimeout(() => done(me), 50)
              })
            }))
          }))
        }))
      })
    })
  })
}

run(() => {
  let collected
  api.collected((err, values) => { collected = values })
  if (collected.join() !== 'a,b,c') {
    console.error('the sink did not collect a, b, c:', collected)
    process.exit(1)
  }
  const out = JSON.stringify({ muxrpc: '8.0.0', manifest, transcript }, null, 1) + '\n'
  if (process.argv[2] === '--check') {
    const want = fs.readFileSync(process.argv[3], 'utf8')
    if (want !== out) {
      console.error('muxrpc-vectors: the transcript differs from ' + process.argv[3])
      console.error(out)
      process.exit(1)
    }
    console.log('muxrpc-vectors: the transcript matches ' + process.argv[3])
  } else {
    process.stdout.write(out)
  }
})
