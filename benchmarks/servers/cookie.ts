// 1b. Fastify + @fastify/cookie, no session: the cookie parsed by the plugin's onRequest hook, its
// onSend hook run, the session cookie compared with a fixed id. The floor for any cookie-based
// session: what parsing the cookie and running the plugin's hooks cost before a store is asked.
import fastifyCookie from '@fastify/cookie'
import Fastify from 'fastify'
import { FIXED_SID, serve, USER } from './common.js'

const app = Fastify({ logger: false })
await app.register(fastifyCookie)

app.post('/login', async (_request, reply) => {
  reply.setCookie('sid', FIXED_SID, { path: '/', httpOnly: true, sameSite: 'lax' })
  return USER
})

app.get('/me', async (request, reply) => {
  if (request.cookies.sid !== FIXED_SID) return reply.code(401).send()
  return { id: USER.id, email: USER.email, name: USER.name }
})

await serve(app)
