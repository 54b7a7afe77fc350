// 4. @fastify/secure-session: the user lives in an encrypted cookie, nothing server-side.
import fastifySecureSession from '@fastify/secure-session'
import Fastify from 'fastify'
import { createHash } from 'node:crypto'
import { SECRET, serve, sessionRoutes } from './common.js'

const app = Fastify({ logger: false })
await app.register(fastifySecureSession, {
  key: createHash('sha256').update(SECRET).digest(),
  cookie: { path: '/', httpOnly: true, sameSite: 'lax', secure: false }
})

sessionRoutes(app)

await serve(app)
