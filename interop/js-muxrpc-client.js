// A JS muxrpc 8.0.0 client that reaches a Rust muxrpc plugin through the
// broker, over `plugboard connect NAME --protocol muxrpc` on its stdio.
// Calls what `muxrpc_peer serve` serves, checks every answer, says goodbye
// first, and waits for `plugboard connect` to exit cleanly.
//
// usage: node js-muxrpc-client.js PLUGBOARD_BIN NAME EXPECTED_ID
'use strict'
const { spawn } = require('child_process')
const assert = require('assert')
const pull = require('pull-stream')
const toPull = require('stream-to-pull-stream')
const MRPC = require('muxrpc')

const [plugboard, name, expectedId] = process.argv.slice(2)
const child = spawn(plugboard, ['connect', name, '--protocol', 'muxrpc'], {
  stdio: ['pipe', 'pipe', 'inherit'],
})
const timer = setTimeout(() => { console.error('js-muxrpc-client: timed out'); process.exit(1) }, 30000)

function fail(err) {
  console.error('js-muxrpc-client:', err)
  process.exit(1)
}

const client = MRPC(function (err, manifest, rpc) {
  if (err) return fail(err)
  try {
    assert.strictEqual(manifest.count, 'source')
  } catch (e) { return fail(e) }
  calls(rpc).then(() => client.close((err) => { if (err) fail(err) }), fail)
})
pull(toPull.source(child.stdout), client.stream.sink)
pull(client.stream.source, endAfterGoodbye(), toPull.sink(child.stdin))

// After its goodbye JS muxrpc waits for the peer's without reading it
// (over a socket, secret-stack ends the connection): end our direction of
// the channel once the goodbye is written, so `plugboard connect` exits.
// The encoder writes each header and body as chunks of their own; a header
// of length 0 is the goodbye.
function endAfterGoodbye() {
  let bodyNext = false
  return pull.through((chunk) => {
    if (bodyNext) { bodyNext = false; return }
    if (chunk.readUInt32BE(1) > 0) { bodyNext = true; return }
    setImmediate(() => child.stdin.end())
  })
}

const p = (fn) => new Promise((resolve, reject) => fn((err, v) => (err ? reject(err) : resolve(v))))

async function calls(rpc) {
  const step = (s) => { if (process.env.MUXRPC_DEBUG) console.error('step', s) }
  step('whoami')
  assert.deepStrictEqual(await p((cb) => rpc.whoami(cb)), { id: expectedId })
  step('add')
  assert.strictEqual(await p((cb) => rpc.add(2, 40, cb)), 42)
  step('fail')
  const failed = await p((cb) => rpc.fail((err) => cb(null, err)))
  assert.strictEqual(failed && failed.message, 'failed as asked')
  step('count')
  assert.deepStrictEqual(await p((cb) => pull(rpc.count(4), pull.collect(cb))), [0, 1, 2, 3])
  step('collect')
  await p((cb) => pull(pull.values(['to', 'the', 'sink']), rpc.collect(cb)))
  step('collected')
  assert.deepStrictEqual(await p((cb) => rpc.collected(cb)), ['to', 'the', 'sink'])
  step('echo')
  const echoed = await p((cb) => pull(pull.values(['one', 'two']), rpc.echo(), pull.collect(cb)))
  assert.deepStrictEqual(echoed, ['one', 'two'])
  step('close')
}

child.on('exit', (code) => {
  clearTimeout(timer)
  if (code !== 0) fail('plugboard connect exited with ' + code)
  console.log('ok')
  process.exit(0)
})
