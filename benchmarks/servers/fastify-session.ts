// 3. @fastify/session + connect-redis (node-redis client), with their defaults: `rolling: true`
// saves the session (a Redis SET) and re-sets the cookie on every request, which is what keeps
// its idle timeout sliding. BENCH_ROLLING=0 turns that off (a Redis GET per request, but the
// session then expires a fixed time after login however active it is).
import fastifyCookie from '@fastify/cookie'
import fastifySession from '@fastify/session'
import { RedisStore } from 'connect-redis'
import Fastify from 'fastify'
import { createClient } from 'redis'
import { env, SECRET, serve, USER } from './common.js'

// @fastify/session and @fastify/secure-session both declare `request.session`; this file uses
// only the first, through this narrow view.
interface Session { get (key: string): unknown, set (key: string, value: unknown): void }
const sessionOf = (request: unknown): Session => (request as { session: Session }).session

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

app.post('/login', async (request) => {
  sessionOf(request).set('user', USER)
  return USER
})

app.get('/me', async (request, reply) => {
  const user = sessionOf(request).get('user')
  if (user === undefined || user === null) return reply.code(401).send()
  return user
})

await serve(app, {}, async () => { await client.quit() })
