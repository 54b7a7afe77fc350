// 5. / 6. fastify-pow on MemoryStore (BENCH_STORE=memory), RedisStore on ioredis (BENCH_STORE=redis)
// or PostgresStore on a node-postgres Pool (BENCH_STORE=postgres, the pool of servers/postgres.ts;
// its table and function created by `migrate()` before listening, the sweep at its default).
//
// Only what the chosen store needs is loaded (ioredis, pg, the prefill), so that every variant
// holds the same modules as an application with that store would.
//
// fastify-pow is imported from the build (dist/lib, what `npm install fastify-pow` runs), not the
// TypeScript source; benchmarks/run.ts builds it first when it is missing or older than lib/.
//
// MemoryStore: BENCH_PREFILL=n stores n more sessions (n distinct users, one session each, as a
// login would write them) straight into the store before listening, for the growth figures.
// With BENCH_HEAP=1 (needs --expose-gc) it also measures the heap that costs. A Redis is filled
// beforehand by benchmarks/fill-redis.ts in another process, so that the fill's garbage and
// heap growth stay out of the measured server.
import { pathToFileURL } from 'node:url'
import path from 'node:path'
import Fastify from 'fastify'
import type { Redis } from 'ioredis'
import type pg from 'pg'
import type * as Pow from '../../lib/index.js'
import { env, SECRET, serve, USER } from './common.js'

const dist = pathToFileURL(path.resolve(import.meta.dirname, '../../dist/lib/index.js')).href
const { default: fastifyPow, MemoryStore, PostgresStore, RedisStore, userBucket } = await import(dist) as typeof Pow

const kind = env('BENCH_STORE')
const prefill = Number(env('BENCH_PREFILL', '0'))
const namespace = env('BENCH_NAMESPACE', 'pow')
const redisPort = kind === 'redis' ? Number(env('BENCH_REDIS_PORT')) : 0

/** A connected client: RedisStore fails fast (503) while its client is still connecting. */
async function redisClient (): Promise<Redis> {
  const { Redis } = await import('ioredis')
  const redis = new Redis({ host: '127.0.0.1', port: redisPort, lazyConnect: true })
  await redis.connect()
  return redis
}

const info: Record<string, unknown> = { store: kind, prefill }
let store: Pow.PowStore
let client: Redis | undefined
let pool: pg.Pool | undefined
if (kind === 'memory') {
  const memory = new MemoryStore()
  store = memory
  if (prefill > 0) {
    // Loaded only here: the prefill imports lib/ from source, modules a measured server need not hold.
    const { fill, memoryAfterGc, userJsonBytes } = await import('./prefill.js')
    const measure = process.env.BENCH_HEAP === '1'
    const before = measure ? memoryAfterGc() : 0
    const started = performance.now()
    await fill(memory, prefill, 1, userBucket)
    info.fillMs = performance.now() - started
    if (measure) {
      const after = memoryAfterGc()
      // The stored form of a user: its JSON as UTF-8 (what MemoryStore keeps per user).
      const userBytes = userJsonBytes(prefill)
      info.heap = {
        sessions: prefill,
        deltaBytes: after - before,
        bytesPerSession: (after - before) / prefill,
        userJsonBytes: userBytes,
        bytesPerSessionBeyondUser: (after - before) / prefill - userBytes,
        storeSize: memory.size
      }
    }
  }
} else if (kind === 'redis') {
  client = await redisClient()
  store = new RedisStore(client, { namespace })
} else if (kind === 'postgres') {
  const { pgPool } = await import('./postgres.js')
  pool = pgPool()
  const postgres = new PostgresStore(pool)
  await postgres.migrate()
  store = postgres
} else {
  throw new Error(`BENCH_STORE must be memory, redis or postgres, not ${kind}`)
}

const app = Fastify({ logger: false })
await app.register(fastifyPow, { secret: SECRET, store })

app.post('/login', async (request) => {
  await request.powSession.create(USER)
  return USER
})

app.get('/me', async (request, reply) => {
  const user = request.powSession.user
  if (user === null) return reply.code(401).send()
  return user
})

await serve(app, info, async () => {
  client?.disconnect()
  await pool?.end()
})
