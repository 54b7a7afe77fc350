import { test } from 'tap'
import Fastify from 'fastify'
import pow from '../lib/index.js'

test('smoke', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pow, { secret: 'x'.repeat(32) })
  app.post('/login', async (req) => { await req.powSession.create({ id: 1, name: 'A' } as any, { persistent: true }); return { ok: true } })
  app.get('/me', async (req) => ({ user: req.powSession.user, md: req.powSession.metadata }))
  const r = await app.inject({ method: 'POST', url: '/login' })
  t.equal(r.statusCode, 200)
  const cookie = r.cookies.map((c) => `${c.name}=${c.value}`).join('; ')
  t.comment(JSON.stringify(r.headers['set-cookie']))
  const me = await app.inject({ url: '/me', headers: { cookie } })
  t.comment(me.body)
  t.same(me.json().user, { id: 1, name: 'A' })
})
