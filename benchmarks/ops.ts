/**
 * In-process timings of fastify-pow's operations for one user holding 1, 100 and 1000 devices,
 * on MemoryStore and on RedisStore (a private redis-server, BENCH_REDIS_PORT). Started by
 * benchmarks/run.ts; sends `{ type: 'result', result }` over IPC.
 *
 * Requests go through `app.inject()`, but only the plugin's own work is timed: the onRequest
 * hooks (cookie parsing + fastify-pow's authentication, and a renewal when due) between two
 * timing hooks, and the `create()` / `sessions()` / `deleteOtherSessions()` calls in the route
 * handlers. Set-up and clean-up between iterations are not timed.
 */
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { Signer } from '@fastify/cookie'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import { Redis } from 'ioredis'
import type * as Pow from '../lib/index.js'

const dist = pathToFileURL(path.resolve(import.meta.dirname, '../dist/lib/index.js')).href
const { default: fastifyPow, MemoryStore, RedisStore } = await import(dist) as typeof Pow

const USER = { id: 1, email: 'alice@example.com', name: 'Alice' }
const SECRET = 'fastify-pow benchmark secret: not a real secret, 48 chars'
const signer = new Signer(SECRET)
const COUNTS = (process.env.BENCH_OPS_COUNTS ?? '1,100,1000').split(',').map(Number)
/** Timed milliseconds to collect per measurement, and a wall-clock cap (set-up included). */
const TIMED_BUDGET_MS = Number(process.env.BENCH_OPS_BUDGET_MS ?? 200)
const WALL_CAP_MS = Number(process.env.BENCH_OPS_WALL_MS ?? 2000)

export interface OpTiming {
  /** Mean µs per operation (GC pauses caused by the untimed set-up can land in it). */
  meanUs: number
  medianUs: number
  p99Us: number
  /** 1e6 / meanUs */
  opsPerSec: number
  iterations: number
}
export type OpsResult = Record<string, Record<string, Record<string, OpTiming>>>

const now = (): bigint => process.hrtime.bigint()
let hookStart = 0n
/** ns spent in the onRequest hooks (cookie + fastify-pow) of the last request */
let lastAuthNs = 0n
/** ns spent in the timed call of the last route */
let lastOpNs = 0n

async function buildApp (store: Pow.PowStore): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  app.addHook('onRequest', async () => { hookStart = now() })
  // maxDevices raised so that one user can hold the largest count measured, and the device each
  // timed iteration adds for a moment.
  await app.register(fastifyPow, { secret: SECRET, store, maxDevices: Math.max(...COUNTS) + 10 })
  app.addHook('onRequest', async () => { lastAuthNs = now() - hookStart })
  app.post('/login', async (request) => {
    const t = now()
    await request.powSession.create(USER)
    lastOpNs = now() - t
    return { ok: true }
  })
  app.get('/me', async (request, reply) => {
    if (request.powSession.user === null) return reply.code(401).send()
    return { user: request.powSession.user }
  })
  app.get('/sessions', async (request) => {
    const t = now()
    const list = await request.powSession.sessions()
    lastOpNs = now() - t
    return { count: list.length }
  })
  app.delete('/sessions', async (request) => {
    const t = now()
    const revoked = await request.powSession.deleteOtherSessions()
    lastOpNs = now() - t
    return { count: revoked.length }
  })
  app.post('/logout', async (request, reply) => {
    await request.powSession.delete()
    return reply.code(204).send()
  })
  await app.ready()
  return app
}

/** The session cookie a response sets, as a Cookie header; undefined when it sets none. */
function sessionCookie (res: LightMyRequestResponse): string | undefined {
  const raw = res.headers['set-cookie']
  const lines = raw === undefined ? [] : Array.isArray(raw) ? raw : [String(raw)]
  const line = lines.find((l) => l.startsWith('pow_session=') && !l.startsWith('pow_session=;'))
  return line?.split(';')[0]
}

function expect (condition: boolean, message: string): void {
  if (!condition) throw new Error(`ops benchmark: ${message}`)
}

async function login (app: FastifyInstance, cookie?: string): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/login', headers: cookie === undefined ? {} : { cookie } })
  const set = sessionCookie(res)
  expect(res.statusCode === 200 && set !== undefined, `login answered ${res.statusCode}`)
  return set as string
}

/** Repeats `iteration` (which returns the ns of its timed part) until the budget is spent. */
async function measure (iteration: () => Promise<bigint>, minIterations = 5): Promise<OpTiming> {
  const samples: number[] = []
  let timed = 0
  const started = performance.now()
  // Untimed rounds first (100 ms, at least 3, at most 200), so the code is optimized.
  for (let i = 0; i < 200 && (i < 3 || performance.now() - started < 100); i++) await iteration()
  const measuring = performance.now()
  while (samples.length < minIterations ||
    (timed < TIMED_BUDGET_MS * 1e6 && performance.now() - measuring < WALL_CAP_MS && samples.length < 5000)) {
    const ns = Number(await iteration())
    samples.push(ns)
    timed += ns
  }
  samples.sort((a, b) => a - b)
  const mean = timed / samples.length
  const round = (ns: number): number => Math.round(ns / 100) / 10
  return {
    meanUs: round(mean),
    medianUs: round(samples[samples.length >> 1]),
    p99Us: round(samples[Math.min(samples.length - 1, Math.floor(samples.length * 0.99))]),
    opsPerSec: Math.round(1e9 / mean),
    iterations: samples.length
  }
}

async function addOtherSessions (app: FastifyInstance, n: number): Promise<void> {
  const credentials = app.pow.credentials
  for (let i = 0; i < n; i += 50) {
    const batch = []
    for (let j = i; j < Math.min(n, i + 50); j++) batch.push(credentials.put(credentials.generateId(USER), USER))
    await Promise.all(batch)
  }
}

async function opsFor (store: Pow.PowStore, count: number): Promise<Record<string, OpTiming>> {
  const app = await buildApp(store)
  try {
    await addOtherSessions(app, count - 1)
    const cookie = await login(app)
    const listed = await app.inject({ method: 'GET', url: '/sessions', headers: { cookie } })
    expect(listed.json().count === count, `expected ${count} sessions, listed ${listed.body}`)

    const authenticate = await measure(async () => {
      const res = await app.inject({ method: 'GET', url: '/me', headers: { cookie } })
      expect(res.statusCode === 200, `GET /me answered ${res.statusCode}`)
      return lastAuthNs
    })

    const loginTiming = await measure(async () => {
      const fresh = await login(app)
      const ns = lastOpNs
      await app.inject({ method: 'POST', url: '/logout', headers: { cookie: fresh } })
      return ns
    })

    // A browser whose session id was issued 20 minutes ago (renewAfter is 15): its next request
    // renews it. The device is stored with the clock set back; the cookie is signed as
    // fastify-pow signs it (@fastify/cookie's Signer).
    const renewal = await measure(async () => {
      const id = app.pow.credentials.generateId(USER)
      const realNow = Date.now
      Date.now = () => realNow() - 20 * 60_000
      try {
        await app.pow.credentials.put(id, USER)
      } finally {
        Date.now = realNow
      }
      const due = `pow_session=${encodeURIComponent(signer.sign(id))}`
      const res = await app.inject({ method: 'GET', url: '/me', headers: { cookie: due } })
      const renewed = sessionCookie(res)
      expect(res.statusCode === 200 && renewed !== undefined && renewed !== due, 'the session was not renewed')
      const ns = lastAuthNs
      await app.inject({ method: 'POST', url: '/logout', headers: { cookie: renewed as string } })
      return ns
    })

    const sessions = await measure(async () => {
      const res = await app.inject({ method: 'GET', url: '/sessions', headers: { cookie } })
      expect(res.json().count === count, `sessions() listed ${res.body}, expected ${count}`)
      return lastOpNs
    })

    // The count - 1 other sessions of the set-up go first, untimed: every iteration starts alone.
    await app.inject({ method: 'DELETE', url: '/sessions', headers: { cookie } })
    const deleteOthers = await measure(async () => {
      await addOtherSessions(app, count - 1)
      const res = await app.inject({ method: 'DELETE', url: '/sessions', headers: { cookie } })
      expect(res.json().count === count - 1, `deleteOtherSessions() ended ${res.body}, expected ${count - 1}`)
      return lastOpNs
    })

    return { authenticate, login: loginTiming, renewal, sessions, deleteOtherSessions: deleteOthers }
  } finally {
    await app.close()
  }
}

async function main (): Promise<OpsResult> {
  const result: OpsResult = { memory: {}, redis: {} }
  for (const count of COUNTS) {
    result.memory[count] = await opsFor(new MemoryStore(), count)
  }
  const port = Number(process.env.BENCH_REDIS_PORT)
  if (Number.isFinite(port) && port > 0) {
    // Connected first: RedisStore fails fast (503) while its client is still connecting.
    const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true })
    await client.connect()
    try {
      for (const count of COUNTS) {
        result.redis[count] = await opsFor(new RedisStore(client, { namespace: `ops${count}` }), count)
      }
    } finally {
      client.disconnect()
    }
  }
  return result
}

main().then(
  (result) => { process.send?.({ type: 'result', result }) ?? console.log(JSON.stringify(result, null, 2)) },
  (err: Error) => {
    process.send?.({ type: 'error', error: err.stack ?? String(err) })
    console.error(err)
    process.exitCode = 1
  }
)
