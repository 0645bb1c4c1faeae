// SSB clients as they are, against plugboard's legacy route
// (`plugboard serve --legacy-listen ... --legacy-route NAME`): ssb-client
// 4.9.0 and a secret-stack 8.1.0 peer (interop/package-lock.json), unmodified.
//
// usage: node js-legacy-client.js MODE PORT SERVER_ID NETWORK_KEY [KEY_FILE]
//   ssb-client           no manifest (asks the server's `manifest`), then
//                        whoami, hello (must see our own id), count(5);
//                        closes (ssb-client sends no box-stream goodbye)
//   ssb-client-manifest  the same with the manifest given up front
//   secret-stack         the same from a secret-stack peer's connect()
//   upload               8 MiB through a sink, far past any window, then
//                        `uploaded` must say all of it arrived
//   hangup               a call, then the socket destroyed mid-stream, no goodbye
//   midcall              calls `stall` and waits: the call must fail once
//                        the plugin dies (the test kills it on "stalled")
//   noauth               as ssb-client-manifest, over the broker's noauth unix
//                        socket (PORT is its path; KEY_FILE the identity's own
//                        secret, which the plugin sees as the caller)
//   refused              the handshake must fail (no plugin, rejected key,
//                        another network key): no muxrpc session at all
// Prints "ok" and exits 0, or says what failed and exits 1.
'use strict'
const ssbKeys = require('ssb-keys')
const ssbClient = require('ssb-client')
const SecretStack = require('secret-stack')
const pull = require('pull-stream')

const [mode, port, serverId, networkKey, keyFile] = process.argv.slice(2)
const keys = keyFile ? ssbKeys.loadOrCreateSync(keyFile) : ssbKeys.generate()
const manifest = {
  manifest: 'sync',
  whoami: 'sync',
  hello: 'async',
  count: 'source',
  upload: 'sink',
  uploaded: 'async',
  stall: 'async',
}

setTimeout(() => fail('timed out'), 30000).unref()

function fail (what) {
  console.log('FAIL ' + mode + ': ' + (what && what.stack ? what.stack : JSON.stringify(what)))
  process.exit(1)
}

function ok () {
  console.log('ok')
  process.exit(0)
}

function same (what, got, want) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    fail(what + ': got ' + JSON.stringify(got) + ', want ' + JSON.stringify(want))
  }
}

// whoami, an async call that sees the caller's key, and a source stream.
function exercise (rpc, cb) {
  rpc.whoami((err, who) => {
    if (err) return fail(err)
    same('whoami', who, { id: serverId })
    rpc.hello((err, hello) => {
      if (err) return fail(err)
      same('hello', hello, { caller: keys.id })
      pull(
        rpc.count(5),
        pull.collect((err, counted) => {
          if (err) return fail(err)
          same('count', counted, [0, 1, 2, 3, 4])
          cb()
        })
      )
    })
  })
}

function viaSsbClient (withManifest, cb) {
  const opts = {
    host: '127.0.0.1',
    port: Number(port),
    key: serverId,
    caps: { shs: networkKey },
    manifest: withManifest ? manifest : undefined,
  }
  ssbClient(keys, opts, cb)
}

function viaSecretStack (cb) {
  // A peer whose own manifest is what it expects of the other side, as
  // secret-stack peers assume.
  const methods = {
    whoami () {},
    hello (cb) { cb(new Error('not here')) },
    count () { return pull.empty() },
    stall (cb) {},
  }
  const App = SecretStack({ global: { caps: { shs: networkKey } } }).use({
    manifest: { whoami: 'sync', hello: 'async', count: 'source', stall: 'async' },
    init: () => methods,
  })
  const app = App({
    global: {
      keys,
      timers: { handshake: 3000, inactivity: 600e3 },
      connections: { incoming: {}, outgoing: { net: [{ transform: 'shs' }] } },
    },
  })
  const address = 'net:127.0.0.1:' + port + '~shs:' + serverId.slice(1).replace('.ed25519', '')
  app.connect(address, (err, rpc) => cb(err, rpc, app))
}

switch (mode) {
  case 'ssb-client':
  case 'ssb-client-manifest':
    viaSsbClient(mode === 'ssb-client-manifest', (err, sbot) => {
      if (err) return fail(err)
      exercise(sbot, () => sbot.close(ok))
    })
    break
  case 'noauth':
    ssbClient(keys, { remote: 'unix:' + port + '~noauth', caps: { shs: networkKey }, manifest }, (err, sbot) => {
      if (err) return fail(err)
      exercise(sbot, () => sbot.close(ok))
    })
    break
  case 'secret-stack':
    viaSecretStack((err, rpc, app) => {
      if (err) return fail(err)
      exercise(rpc, () => rpc.close(() => app.close(ok)))
    })
    break
  case 'upload':
    viaSsbClient(true, (err, sbot) => {
      if (err) return fail(err)
      const chunk = Buffer.alloc(64 * 1024, 7)
      pull(
        pull.values(Array(128).fill(chunk)),
        sbot.upload((err) => {
          if (err) return fail(err)
          sbot.uploaded((err, n) => {
            if (err) return fail(err)
            same('uploaded', n, 128 * 64 * 1024)
            sbot.close(ok)
          })
        })
      )
    })
    break
  case 'hangup':
    viaSsbClient(true, (err, sbot) => {
      if (err) return fail(err)
      rpc_hangup(sbot)
    })
    break
  case 'midcall':
    viaSsbClient(true, (err, sbot) => {
      if (err) return fail(err)
      sbot.whoami((err) => {
        if (err) return fail(err)
        sbot.stall((err) => {
          if (!err) return fail('stall answered')
          ok()
        })
        console.log('stalled')
      })
    })
    break
  case 'refused':
    viaSsbClient(true, (err) => {
      if (!err) return fail('connected')
      ok()
    })
    break
  default:
    fail('unknown mode')
}

// Starts a source and cuts the TCP connection under it: no muxrpc or
// box-stream goodbye. The server side must stay up for the next client.
function rpc_hangup (sbot) {
  pull(sbot.count(1000000), pull.take(3), pull.collect((err) => {
    if (err) return fail(err)
    // ssb-client keeps the socket in its stream; end the process instead:
    // the kernel closes the socket with no goodbye of any kind.
    ok()
  }))
}
