// 1. Bare Fastify: no session. The "session" is a fixed cookie header compared as a string.
import Fastify from 'fastify'
import { FIXED_COOKIE, serve, USER } from './common.js'

const app = Fastify({ logger: false })

app.post('/login', async (_request, reply) => {
  reply.header('set-cookie', `${FIXED_COOKIE}; Path=/; HttpOnly; SameSite=Lax`)
  return USER
})

app.get('/me', async (request, reply) => {
  if (request.headers.cookie !== FIXED_COOKIE) return reply.code(401).send()
  return { id: USER.id, email: USER.email, name: USER.name }
})

await serve(app)
