// 2. Fastify + one raw ioredis GET per request: the floor for any server-side session.
// The cookie header is checked trivially; the user JSON lives under a key named by the cookie.
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import { env, FIXED_COOKIE, FIXED_SID, serve, USER } from './common.js'

const redis = new Redis({ host: '127.0.0.1', port: Number(env('BENCH_REDIS_PORT')), lazyConnect: true })
await redis.connect()
await redis.set(`raw:user:${FIXED_SID}`, JSON.stringify(USER), 'PX', 30 * 60_000)

const app = Fastify({ logger: false })

app.post('/login', async (_request, reply) => {
  reply.header('set-cookie', `${FIXED_COOKIE}; Path=/; HttpOnly; SameSite=Lax`)
  return USER
})

app.get('/me', async (request, reply) => {
  const cookie = request.headers.cookie
  if (cookie === undefined || !cookie.startsWith('sid=')) return reply.code(401).send()
  const json = await redis.get(`raw:user:${cookie.slice(4)}`)
  if (json === null) return reply.code(401).send()
  return JSON.parse(json)
})

await serve(app, {}, async () => { redis.disconnect() })
