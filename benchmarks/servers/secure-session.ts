// 4. @fastify/secure-session: the user lives in an encrypted cookie, nothing server-side.
import fastifySecureSession from '@fastify/secure-session'
import Fastify from 'fastify'
import { createHash } from 'node:crypto'
import { SECRET, serve, USER } from './common.js'

interface Session { get (key: string): unknown, set (key: string, value: unknown): void }
const sessionOf = (request: unknown): Session => (request as { session: Session }).session

const app = Fastify({ logger: false })
await app.register(fastifySecureSession, {
  key: createHash('sha256').update(SECRET).digest(),
  cookie: { path: '/', httpOnly: true, sameSite: 'lax', secure: false }
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

await serve(app)
