// Fastify + @fastify/cookie + one raw SELECT by primary key per request, through the same pool as
// fastify-pow's PostgresStore server (benchmarks/servers/postgres.ts): the floor for a session
// kept in PostgreSQL. The statement is named, so node-postgres prepares it once per connection
// and then sends only a bind and an execute, as PostgresStore does. The user's JSON lives in a
// row whose primary key is the cookie's value.
import fastifyCookie from '@fastify/cookie'
import Fastify from 'fastify'
import { FIXED_SID, serve, USER } from './common.js'
import { pgPool } from './postgres.js'

const pool = pgPool()
await pool.query('CREATE TABLE IF NOT EXISTS raw_sessions (id text PRIMARY KEY, data text NOT NULL)')
await pool.query('INSERT INTO raw_sessions (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = excluded.data', [FIXED_SID, JSON.stringify(USER)])
const READ = { name: 'raw_session_read', text: 'SELECT data FROM raw_sessions WHERE id = $1' }

const app = Fastify({ logger: false })
await app.register(fastifyCookie)

app.post('/login', async (_request, reply) => {
  reply.setCookie('sid', FIXED_SID, { path: '/', httpOnly: true, sameSite: 'lax' })
  return USER
})

app.get('/me', async (request, reply) => {
  const sid = request.cookies.sid
  if (sid === undefined) return reply.code(401).send()
  const { rows } = await pool.query({ ...READ, values: [sid] })
  if (rows.length === 0) return reply.code(401).send()
  return JSON.parse(rows[0].data)
})

await serve(app, {}, async () => { await pool.end() })
