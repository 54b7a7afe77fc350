import { test } from 'tap'
import { MemoryStore } from '../lib/index.js'
import { buildApp, me, recordingStore, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'

const MINUTE = 60_000
const DAY = 24 * 60 * MINUTE

test('the remember-me cookie lasts ttl and its max-age is renewed on every request', async (t) => {
  const app = await buildApp(t, { persistentSession: { ttl: 7 * DAY } })
  const jar = await signIn(app, 1, { persistent: true })
  const header = String((await app.inject({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })).headers['set-cookie'])
  t.match(header, /pow_persistent_session=[^;]+; Max-Age=604800; Path=\/; HttpOnly; SameSite=Lax/)
  const response = await jar.request('/me')
  const renewed = response.cookies.find((c) => c.name === 'pow_persistent_session') as { value: string, maxAge?: number } | undefined
  t.equal(renewed?.maxAge, 604800, 'an authenticated request re-sets the cookie with a full max-age')
  t.equal(renewed?.value, jar.get('pow_persistent_session'), 'with the same token')
})

test('with no session, a valid token signs in once: new session, new token, same fingerprint', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true, metadata: { ua: 'Firefox' } })
  const { fingerprint } = await me(jar)
  const oldToken = jar.get('pow_persistent_session')
  jar.delete('pow_session')

  const events: string[] = []
  app.pow.on('persistent:used', (e) => events.push(`used:${e.fingerprint}`))
  app.pow.on('session:created', (e) => events.push(`created:${e.fingerprint}`))
  const response = await jar.request('/me')
  t.equal(response.statusCode, 200)
  t.equal(response.json().user.id, 1)
  t.equal(response.json().metadata.fingerprint, fingerprint, 'the fingerprint is kept')
  t.equal(response.json().metadata.ua, 'Firefox', 'the metadata is carried over')
  t.ok(jar.get('pow_session'), 'a new session cookie')
  t.not(jar.get('pow_persistent_session'), oldToken, 'a new token')
  t.same(events, [`used:${fingerprint}`, `created:${fingerprint}`])
  t.equal((await jar.request('/sessions')).json().sessions.length, 1)
})

test('the token signs in after the session idled out and the credentials are gone', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true, name: 'Alice' })
  clock.tick(31 * MINUTE)
  t.same(await store.listUsers(), [], 'no live session, no stored credentials')
  const back = await me(jar)
  t.equal(back.status, 200)
  t.same(back.user, { id: 1, name: 'Alice' })
})

test('a used token works inside the grace without another rotation, then is theft', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store, session: { rotationGrace: 10_000 } })
  const jar = await signIn(app, 1, { persistent: true })
  jar.delete('pow_session')
  const thief = jar.clone()
  const bystander = await signIn(app, 1)

  await jar.request('/me')
  const putTokens = store.calls.filter((c) => c === 'putToken').length
  clock.tick(5_000)
  const parallel = await thief.request('/me')
  t.equal(parallel.statusCode, 200, 'a parallel request inside the grace is signed in')
  t.equal(parallel.cookies.length, 0, 'without new cookies')
  t.equal(store.calls.filter((c) => c === 'putToken').length, putTokens, 'and without another rotation')

  const reuse: string[] = []
  app.pow.on('persistent:reuse', (e) => reuse.push(e.fingerprint))
  t.equal((await me(jar)).status, 200, 'the browser uses its new session: the rotation is claimed')
  clock.tick(6_000)
  const theft = await thief.request('/me')
  t.equal(theft.statusCode, 401, 'after the grace the used token is dead')
  t.equal(reuse.length, 1, 'the reuse event fired')
  t.equal(thief.get('pow_persistent_session'), undefined, 'the reused cookie is cleared')
  t.equal((await me(jar)).status, 401, 'the whole fingerprint is revoked: the legitimate copy is out too')
  jar.delete('pow_session')
  t.equal((await me(jar)).status, 401, "and the rotated token doesn't bring it back")
  t.equal((await me(bystander)).status, 200, 'other browsers of the user stay')
})

test('token reuse is logged as a warning', async (t) => {
  const clock = fakeClock(t)
  const lines: Array<{ level: number, msg: string }> = []
  const { Writable } = await import('node:stream')
  const stream = new Writable({ write (chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb() } })
  const Fastify = (await import('fastify')).default
  const pow = (await import('../lib/index.js')).default
  const app = Fastify({ logger: { level: 'warn', stream } })
  t.teardown(() => app.close())
  await app.register(pow, { secret: 'x'.repeat(32) })
  app.post('/login', async (request) => { await request.powSession.create({ id: 1 } as never, { persistent: true }); return {} })
  app.get('/me', async (request) => ({ user: request.powSession.user }))
  const login = await app.inject({ method: 'POST', url: '/login' })
  const token = login.cookies.find((c) => c.name === 'pow_persistent_session')?.value
  const cookie = `pow_persistent_session=${token}`
  const rotated = await app.inject({ url: '/me', headers: { cookie } })
  const session = rotated.cookies.find((c) => c.name === 'pow_session')?.value
  t.equal((await app.inject({ url: '/me', headers: { cookie: `pow_session=${session}` } })).json().user?.id, 1, 'the new session is used')
  clock.tick(60_000)
  await app.inject({ url: '/me', headers: { cookie } })
  const warning = lines.find((l) => l.level === 40)
  t.match(warning?.msg, /remember-me token came back after its grace/)
})

test('concurrent requests with one token: exactly one rotation, all signed in', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  jar.delete('pow_session')
  const header = jar.header()
  const responses = await Promise.all(Array.from({ length: 10 }, () => app.inject({ url: '/me', headers: { cookie: header } })))
  t.same(responses.map((r) => r.statusCode), Array(10).fill(200))
  t.equal(responses.filter((r) => r.cookies.length > 0).length, 1)
  t.equal((await app.pow.credentials.sessions({ id: 1 } as never)).length, 1, 'one session for the browser')
  t.equal(store.calls.filter((c) => c === 'putSession' || c === 'putToken').length, 2, 'no other write than the login')
})

test('a token past its ttl signs nobody in and its cookie is cleared', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, { persistentSession: { ttl: 2 * DAY } })
  const jar = await signIn(app, 1, { persistent: true })
  const cookie = jar.header()
  clock.tick(2 * DAY + 1)
  const response = await app.inject({ url: '/me', headers: { cookie } })
  t.equal(response.statusCode, 401)
  t.match(String(response.headers['set-cookie']), /pow_persistent_session=; Max-Age=0/)
})

test('session renewal extends the token, so an active user stays remembered', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, { persistentSession: { ttl: 1 * DAY } })
  const jar = await signIn(app, 1, { persistent: true })
  for (let i = 0; i < 8; i++) { // two days of activity every 6 hours would idle out; keep requests within 20 minutes
    for (let j = 0; j < 18; j++) {
      clock.tick(20 * MINUTE)
      t.equal((await me(jar)).status, 200)
    }
  }
  jar.delete('pow_session')
  clock.tick(40 * MINUTE)
  t.equal((await me(jar)).status, 200, 'after two days of activity the token still signs in')
})

test('powPersistentSession.create and delete manage remember-me on their own', async (t) => {
  const app = await buildApp(t, {}, (instance) => {
    instance.post('/remember', async (request) => {
      await request.powPersistentSession?.create(request.powSession.user as never)
      return {}
    })
    instance.post('/forget', async (request) => {
      await request.powPersistentSession?.delete()
      return {}
    })
  })
  const jar = await signIn(app, 1)
  const { fingerprint } = await me(jar)
  await jar.request({ method: 'POST', url: '/remember' })
  const token = jar.get('pow_persistent_session')
  t.ok(token)
  jar.delete('pow_session')
  const back = await me(jar)
  t.equal(back.status, 200)
  t.equal(back.fingerprint, fingerprint, 'the token was tied to the session fingerprint')
  await jar.request({ method: 'POST', url: '/forget' })
  t.equal(jar.get('pow_persistent_session'), undefined)
  jar.delete('pow_session')
  t.equal((await me(jar)).status, 401)
})

test('persistentSession: false turns remember-me off', async (t) => {
  const app = await buildApp(t, { persistentSession: false }, (instance) => {
    instance.get('/has', async (request) => ({ persistent: request.powPersistentSession }))
  })
  t.same((await app.inject('/has')).json(), { persistent: null })
  const jar = await signIn(app, 1)
  jar.set('pow_persistent_session', 'whatever')
  t.equal((await me(jar)).status, 200)
})
