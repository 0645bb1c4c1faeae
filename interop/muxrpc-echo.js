// A muxrpc duplex that sends back what it takes, then ends when its input
// does: the `echo` of the muxrpc vectors and of the stdio server.
'use strict'

module.exports = function echo() {
  const queue = []
  let waiting = null
  let ended = false
  return {
    source: (abort, cb) => {
      if (abort || (ended && !queue.length)) return cb(abort || true)
      if (queue.length) return cb(null, queue.shift())
      waiting = cb
    },
    sink: (read) => {
      read(null, function next(end, data) {
        if (end) {
          ended = true
          if (waiting) { const cb = waiting; waiting = null; cb(true) }
          return
        }
        if (waiting) { const cb = waiting; waiting = null; cb(null, data) } else queue.push(data)
        read(null, next)
      })
    },
  }
}
