// 3. @fastify/session + connect-redis (node-redis client), with their defaults: `rolling: true`
// saves the session (a Redis SET) and re-sets the cookie on every request, which is what keeps
// its idle timeout sliding. BENCH_ROLLING=0 turns that off (a Redis GET per request, but the
// session then expires a fixed time after login however active it is).
//
// BENCH_STORE=postgres: connect-pg-simple instead, on the pool of servers/postgres.ts (the same
// size as fastify-pow's PostgresStore server), its `session` table created from its table.sql
// (`createTableIfMissing`). Its defaults too: with `rolling: true` every request is a SELECT of
// the session and an INSERT ... ON CONFLICT DO UPDATE of it (one commit, a WAL flush).
import fastifyCookie from '@fastify/cookie'
import fastifySession from '@fastify/session'
import connectPgSimple from 'connect-pg-simple'
import { RedisStore } from 'connect-redis'
import Fastify from 'fastify'
import { createClient } from 'redis'
import { env, SECRET, serve, sessionRoutes } from './common.js'
import { pgPool } from './postgres.js'

type SessionStore = NonNullable<Parameters<typeof fastifySession>[1]['store']>

let store: SessionStore
let close: () => Promise<void>
if (env('BENCH_STORE', 'redis') === 'postgres') {
  const pool = pgPool()
  // connect-pg-simple extends the `Store` of the session module it is given: @fastify/session's.
  const PGStore = connectPgSimple(fastifySession as unknown as Parameters<typeof connectPgSimple>[0])
  const pgStore = new PGStore({ pool, createTableIfMissing: true })
  store = pgStore as unknown as SessionStore
  close = async () => {
    await pgStore.close()
    await pool.end()
  }
} else {
  const client = createClient({ socket: { host: '127.0.0.1', port: Number(env('BENCH_REDIS_PORT')) } })
  await client.connect()
  store = new RedisStore({ client, prefix: 'fsess:' })
  close = async () => { await client.quit() }
}

const app = Fastify({ logger: false })
await app.register(fastifyCookie)
await app.register(fastifySession, {
  secret: SECRET,
  store,
  saveUninitialized: false,
  rolling: process.env.BENCH_ROLLING !== '0',
  cookie: { secure: false }
})

sessionRoutes(app)

await serve(app, {}, close)
