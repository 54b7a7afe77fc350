/**
 * A small TCP proxy for outage tests: it listens on 127.0.0.1 (a free port) and forwards every
 * connection to `target`, until the test says otherwise:
 *
 * - `cut()`: every open connection is reset, and new ones are accepted and reset at once, so
 *   clients see ECONNRESET or "terminated" right away (a database that went down);
 * - `stall()`: connections stay open but nothing is forwarded either way, and new ones are
 *   accepted but never forwarded (a black hole: only a timeout notices it);
 * - `restore()`: forwarding again; stalled connections are reset (what they held is dropped), so
 *   clients connect afresh. `restore({ deliver: true })` instead lets them go on: what they held
 *   is delivered late, as TCP does after a network stall that ends without a reset.
 *
 * Closed with the test that started it.
 */
import net from 'node:net'
import type { Test } from 'tap'

export type ProxyMode = 'forward' | 'cut' | 'stall'

export interface TcpProxy {
  readonly host: string
  readonly port: number
  /** What the proxy does now. */
  readonly mode: ProxyMode
  /** Connections accepted so far, whatever was done with them. */
  readonly accepted: number
  /** Connections open now (forwarding or stalled). */
  readonly open: number
  cut: () => void
  stall: () => void
  restore: (options?: { deliver?: boolean }) => void
}

/** A client connection and, once forwarding, its connection to the target. */
interface Pair {
  client: net.Socket
  upstream: net.Socket | undefined
  stalled: boolean
}

/** Sends an RST where the socket allows it, so the peer sees ECONNRESET, not a clean close. */
function reset (socket: net.Socket | undefined): void {
  if (socket === undefined || socket.destroyed) return
  if (socket.pending || socket.connecting) socket.destroy()
  else socket.resetAndDestroy()
}

export async function startProxy (t: Test, target: { host: string, port: number }): Promise<TcpProxy> {
  const pairs = new Set<Pair>()
  let mode: ProxyMode = 'forward'
  let accepted = 0

  const end = (pair: Pair): void => {
    pairs.delete(pair)
    reset(pair.client)
    reset(pair.upstream)
  }

  const forward = (pair: Pair): void => {
    const upstream = pair.upstream = net.connect(target.port, target.host)
    upstream.on('error', () => end(pair))
    upstream.on('close', () => end(pair))
    // A client that closes is closed gently upstream: what it sent before still arrives.
    pair.client.on('end', () => upstream.end())
    // No pipe(): a stall must stop both directions without a 'drain' resuming either.
    pair.client.on('data', (chunk) => { if (!pair.stalled) upstream.write(chunk) })
    upstream.on('data', (chunk) => { if (!pair.stalled) pair.client.write(chunk) })
  }

  const stallPair = (pair: Pair): void => {
    pair.stalled = true
    pair.client.pause()
    pair.upstream?.pause()
  }

  const server = net.createServer((client) => {
    accepted++
    client.on('error', () => {})
    if (mode === 'cut') return reset(client)
    const pair: Pair = { client, upstream: undefined, stalled: false }
    pairs.add(pair)
    client.on('close', () => { if (client.readableEnded) pairs.delete(pair); else end(pair) })
    if (mode === 'stall') stallPair(pair)
    else forward(pair)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })

  t.teardown(async () => {
    for (const pair of pairs) end(pair)
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })

  return {
    host: '127.0.0.1',
    port: (server.address() as net.AddressInfo).port,
    get mode () { return mode },
    get accepted () { return accepted },
    get open () { return pairs.size },
    cut () {
      mode = 'cut'
      for (const pair of pairs) end(pair)
    },
    stall () {
      mode = 'stall'
      for (const pair of pairs) stallPair(pair)
    },
    restore ({ deliver = false } = {}) {
      mode = 'forward'
      for (const pair of pairs) {
        if (!pair.stalled) continue
        if (!deliver) {
          end(pair)
          continue
        }
        pair.stalled = false
        if (pair.upstream === undefined) forward(pair)
        pair.client.resume()
        pair.upstream?.resume()
      }
    }
  }
}
