// 3. @fastify/session + connect-redis (node-redis client), with their defaults: `rolling: true`
// saves the session (a Redis SET) and re-sets the cookie on every request, which is what keeps
// its idle timeout sliding. BENCH_ROLLING=0 turns that off (a Redis GET per request, but the
// session then expires a fixed time after login however active it is).
import fastifyCookie from '@fastify/cookie'
import fastifySession from '@fastify/session'
import { RedisStore } from 'connect-redis'
import Fastify from 'fastify'
import { createClient } from 'redis'
import { env, SECRET, serve, sessionRoutes } from './common.js'

const client = createClient({ socket: { host: '127.0.0.1', port: Number(env('BENCH_REDIS_PORT')) } })
await client.connect()

const app = Fastify({ logger: false })
await app.register(fastifyCookie)
await app.register(fastifySession, {
  secret: SECRET,
  store: new RedisStore({ client, prefix: 'fsess:' }),
  saveUninitialized: false,
  rolling: process.env.BENCH_ROLLING !== '0',
  cookie: { secure: false }
})

sessionRoutes(app)

await serve(app, {}, async () => { await client.quit() })
