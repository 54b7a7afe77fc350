import type { LightMyRequestResponse } from 'fastify'
import { test } from 'tap'
import { PowSignInRevokedError } from '../lib/index.js'
import { hashSecret, secretDevice } from '../lib/crypto.js'
import { MemoryStore } from '../lib/index.js'
import { buildApp, me, recordingStore, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'

const MINUTE = 60_000
const DAY = 24 * 60 * MINUTE

const secretOf = (signed: string | undefined): string => (signed as string).split('.')[0]

/** The remember-me cookie a response sets, if any. */
const tokenCookie = (response: LightMyRequestResponse): { value: string, maxAge?: number } | undefined =>
  response.cookies.find((c) => c.name === 'pow_persistent_session') as { value: string, maxAge?: number } | undefined

test('the remember-me cookie is set at login for ttl, not again on an ordinary request, and again on a renewal', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const app = await buildApp(t, { store, persistentSession: { ttl: 7 * DAY } })
  const jar = new CookieJar(app)
  const login = await jar.request({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })
  t.match(String(login.headers['set-cookie']), /pow_persistent_session=[^;]+; Max-Age=604800; Path=\/; HttpOnly; SameSite=Lax/)
  const token = jar.get('pow_persistent_session')

  clock.tick(5 * MINUTE)
  const plain = await jar.request('/me')
  t.equal(plain.statusCode, 200)
  t.same(plain.cookies, [], 'an authenticated request with no renewal due sets no cookie at all')

  clock.tick(11 * MINUTE)
  const renewal = await jar.request('/me')
  t.equal(renewal.statusCode, 200)
  t.ok(renewal.cookies.some((c) => c.name === 'pow_session'), 'the session renewed')
  const moved = tokenCookie(renewal)
  t.equal(moved?.value, token, 'the remember-me cookie is set again with the same token')
  t.equal(moved?.maxAge, 604800, 'its Max-Age moved: a full ttl from the renewal, not from the login')
  const { bucket, fingerprint } = secretDevice(secretOf(token))
  const device = JSON.parse((await store.read(bucket, fingerprint))?.data as string)
  t.equal(device.token.expiresAt, Date.now() + 7 * DAY, "the token's expiry moved in the store too")
  t.equal(device.token.hash, hashSecret(secretOf(token)), 'the token itself did not change')

  clock.tick(MINUTE)
  t.same((await jar.request('/me')).cookies, [], 'the claim of the renewal sets no cookie either')
})

test('a renewal of a request without the remember-me cookie leaves the token alone', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const app = await buildApp(t, { store, persistentSession: { ttl: 7 * DAY } })
  const jar = await signIn(app, 1, { persistent: true })
  const token = secretOf(jar.get('pow_persistent_session'))
  const { bucket, fingerprint } = secretDevice(token)
  const expiresAt = JSON.parse((await store.read(bucket, fingerprint))?.data as string).token.expiresAt
  const sessionOnly = jar.clone()
  sessionOnly.delete('pow_persistent_session')
  clock.tick(16 * MINUTE)
  const renewal = await sessionOnly.request('/me')
  t.equal(renewal.cookies.length, 1)
  t.equal(tokenCookie(renewal), undefined, 'no remember-me cookie for a browser that did not show one')
  t.equal(JSON.parse((await store.read(bucket, fingerprint))?.data as string).token.expiresAt, expiresAt, 'the token keeps its expiry')
})

test("the remember-me cookie's Max-Age is the time left until the token expires, rounded up", async (t) => {
  const clock = fakeClock(t)
  // An absolute bound half a second past the ttl: once a renewal moves the token, the bound decides.
  const app = await buildApp(t, { persistentSession: { ttl: 7 * DAY, absoluteTtl: 7 * DAY + 500 } })
  const jar = await signIn(app, 1, { persistent: true })
  clock.tick(16 * MINUTE)
  const renewal = await jar.request('/me')
  t.equal(tokenCookie(renewal)?.maxAge, 7 * 86400 - 16 * 60 + 1, '7 days and 0.5 s from the sign-in, 16 minutes later: rounded up')
})

test('with no session, a valid token signs in: new session, new token, same fingerprint, signedInAt kept', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store }, (instance) => {
    instance.get('/fresh', async (request) => ({ fresh: request.powSession.isFresh(10 * MINUTE), hour: request.powSession.isFresh(60 * MINUTE) }))
  })
  const jar = await signIn(app, 1, { persistent: true, metadata: { ua: 'Firefox' } })
  const { fingerprint } = await me(jar)
  const signedInAt = (await jar.request('/me')).json().metadata.signedInAt
  t.same((await jar.request('/fresh')).json(), { fresh: true, hour: true }, 'fresh after create')
  const oldToken = jar.get('pow_persistent_session')
  jar.delete('pow_session')
  clock.tick(20 * MINUTE)

  const events: string[] = []
  app.pow.on('persistent:used', (e) => events.push(`used:${e.fingerprint}`))
  app.pow.on('session:created', (e) => events.push(`created:${e.fingerprint}`))
  store.calls.length = 0
  const response = await jar.request('/me')
  t.equal(response.statusCode, 200)
  t.same(store.calls, ['read', 'commit'], 'the token device read, the rotation committed')
  t.equal(response.json().user.id, 1)
  t.equal(response.json().metadata.fingerprint, fingerprint, 'the fingerprint is kept')
  t.equal(response.json().metadata.ua, 'Firefox', 'the metadata is carried over')
  t.equal(response.json().metadata.signedInAt, signedInAt, 'a remember-me sign-in keeps signedInAt')
  t.equal(response.json().metadata.insertedAt, Date.now(), 'the session id is new')
  t.ok(jar.get('pow_session'), 'a new session cookie')
  t.not(jar.get('pow_persistent_session'), oldToken, 'a new token')
  t.equal(tokenCookie(response)?.maxAge, 30 * 86400, 'for a full ttl')
  t.same(events, [`used:${fingerprint as string}`, `created:${fingerprint as string}`])
  t.same((await jar.request('/fresh')).json(), { fresh: false, hour: true }, 'isFresh counts from the sign-in with credentials, not the remember-me one')
  t.equal((await jar.request('/sessions')).json().sessions.length, 1)
})

test('a session that idled out: the token signs in with both cookies shown, and the device was kept meanwhile', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true, name: 'Alice' })
  clock.tick(31 * MINUTE)
  t.same((await app.pow.credentials.users()), [{ id: 1, name: 'Alice' }], 'a remembered browser keeps its device, and the user with it')
  const [listed] = await app.pow.credentials.sessions(1)
  t.match(listed, { remembered: true }, 'listed as remembered')
  store.calls.length = 0
  const back = await jar.request('/me')
  t.equal(back.statusCode, 200)
  t.same(back.json().user, { id: 1, name: 'Alice' })
  t.same(store.calls, ['read', 'read', 'commit'], 'the session device read, the token device read, the rotation committed')
})

test('sessions() lists a remembered browser whose session idled out; deleteSession of it ends its token', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t)
  const deleted: string[] = []
  app.pow.on('session:deleted', (e) => deleted.push(`${e.fingerprint}:${String(e.reason)}`))
  const remembered = await signIn(app, 1, { persistent: true, metadata: { ua: 'phone' } })
  const forgotten = await signIn(app, 1, { metadata: { ua: 'kiosk' } })
  const rememberedFingerprint = (await me(remembered)).fingerprint as string
  clock.tick(20 * MINUTE)
  const current = await signIn(app, 1, { metadata: { ua: 'laptop' } })
  clock.tick(11 * MINUTE)

  const list = (await current.request('/sessions')).json().sessions as Array<{ fingerprint: string, remembered: boolean, current: boolean, metadata: { ua: string } }>
  t.same(list.map((s) => [s.metadata.ua, s.remembered, s.current]), [['phone', true, false], ['laptop', false, true]],
    'the idled-out remembered browser is listed, remembered; the idled-out one without a token is not')
  t.equal(list[0].fingerprint, rememberedFingerprint)
  t.equal((await me(forgotten)).status, 401)

  const response = await current.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(rememberedFingerprint)}` })
  t.equal(response.statusCode, 204, 'a remembered browser is a device: it can be signed out')
  t.same(deleted, [`${rememberedFingerprint}:revoked`], 'session:deleted, reason revoked')
  const back = await remembered.request('/me')
  t.equal(back.statusCode, 401, 'its token signs nobody in')
  t.equal(remembered.get('pow_persistent_session'), undefined, 'and its cookie is cleared')
  t.same((await current.request('/sessions')).json().sessions.map((s: { metadata: { ua: string } }) => s.metadata.ua), ['laptop'])
})

test('a used token works inside the grace without another rotation, then is theft', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store, session: { rotationGrace: 10_000 } })
  const jar = await signIn(app, 1, { persistent: true })
  const { fingerprint } = await me(jar)
  jar.delete('pow_session')
  const thief = jar.clone()
  const bystander = await signIn(app, 1)

  await jar.request('/me')
  clock.tick(5_000)
  store.calls.length = 0
  const parallel = await thief.request('/me')
  t.equal(parallel.statusCode, 200, 'a parallel request inside the grace is signed in')
  t.equal(parallel.cookies.length, 0, 'without new cookies')
  t.same(store.calls, ['read'], 'and without another rotation')

  const reuse: string[] = []
  const deleted: string[] = []
  app.pow.on('persistent:reuse', (e) => reuse.push(e.fingerprint))
  app.pow.on('session:deleted', (e) => deleted.push(`${e.fingerprint}:${String(e.reason)}`))
  t.equal((await me(jar)).status, 200, 'the browser uses its new session: the rotation is claimed')
  clock.tick(6_000)
  const theft = await thief.request('/me')
  t.equal(theft.statusCode, 401, 'after the grace the used token is dead')
  t.same(reuse, [fingerprint], 'the reuse event fired')
  t.same(deleted, [`${fingerprint as string}:theft`], 'the device was deleted for theft')
  t.equal(thief.get('pow_persistent_session'), undefined, 'the reused cookie is cleared')
  t.equal((await me(jar)).status, 401, 'the whole device is revoked: the legitimate copy is out too')
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
  t.same(lines, [], 'nothing logged so far')
  clock.tick(60_000)
  await app.inject({ url: '/me', headers: { cookie } })
  const warning = lines.find((l) => l.level === 40)
  t.match(warning?.msg, /remember-me token came back after its grace; its device was revoked/)
})

test('concurrent requests with one token: exactly one rotation, all signed in', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  jar.delete('pow_session')
  const header = jar.header()
  store.calls.length = 0
  const responses = await Promise.all(Array.from({ length: 10 }, () => app.inject({ url: '/me', headers: { cookie: header } })))
  t.same(responses.map((r) => r.statusCode), Array(10).fill(200))
  t.equal(responses.filter((r) => r.cookies.length > 0).length, 1, 'the winner sets new cookies; the others are signed in for their request only')
  t.equal(store.writes().length - store.refused(), 1, `one rotation stored (${store.refused()} commits refused: lost races)`)
  t.equal((await app.pow.credentials.sessions({ id: 1 } as never)).length, 1, 'one device for the browser')
  const winner = responses.find((r) => r.cookies.length > 0) as LightMyRequestResponse
  jar.store(winner)
  t.equal((await me(jar)).status, 200, "the winner's cookies work")
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
  for (let i = 0; i < 8; i++) { // two days of activity, a request every 20 minutes
    for (let j = 0; j < 18; j++) {
      clock.tick(20 * MINUTE)
      t.equal((await me(jar)).status, 200)
    }
  }
  jar.delete('pow_session')
  clock.tick(40 * MINUTE)
  t.equal((await me(jar)).status, 200, 'after two days of activity the token still signs in')
})

test('persistentSession.absoluteTtl: an active remembered browser is asked to sign in again after it', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, {
    session: { absoluteTtl: 8 * 60 * MINUTE },
    persistentSession: { ttl: 1 * DAY, absoluteTtl: 2 * DAY }
  })
  const jar = await signIn(app, 1, { persistent: true })
  const signedInAt = Date.now()
  let rotations = 0
  let lastToken = jar.get('pow_persistent_session') as string
  // A request every 20 minutes: every one renews; every 8 hours the session ends and the token signs in.
  for (let i = 1; i < 144; i++) {
    clock.tick(20 * MINUTE)
    const response = await jar.request('/me')
    if (response.statusCode !== 200) {
      t.fail(`signed out after ${i * 20} minutes`)
      return
    }
    if (response.json().metadata.signedInAt !== signedInAt) t.fail(`signedInAt changed after ${i * 20} minutes`)
    if (tokenCookie(response) !== undefined && tokenCookie(response)?.value !== lastToken) {
      rotations++
      lastToken = tokenCookie(response)?.value as string
    }
  }
  t.equal(rotations, 5, 'signed in by the token at 8, 16, 24, 32 and 40 hours')
  const copy = jar.header()
  t.match(copy, /pow_persistent_session=/, 'the browser still holds the token a minute before the bound')
  clock.tick(20 * MINUTE)
  t.equal((await me(jar)).status, 401, 'two days after the sign-in with credentials: asked to sign in again')
  const replayed = await app.inject({ url: '/me', headers: { cookie: copy } })
  t.equal(replayed.statusCode, 401, 'the token signs nobody in, however recently it was rotated')
  t.match(String(replayed.headers['set-cookie']), /pow_persistent_session=; Max-Age=0/, 'and its cookie is cleared')
})

test('persistentSession.absoluteTtl bounds the token cookie of a rotation too', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, { persistentSession: { ttl: 1 * DAY, absoluteTtl: 2 * DAY } })
  const jar = await signIn(app, 1, { persistent: true })
  const HOUR = 60 * MINUTE
  clock.tick(20 * HOUR)
  jar.delete('pow_session')
  const first = await jar.request('/me')
  t.equal(first.statusCode, 200, 'signed in by the token after 20 hours')
  t.equal(tokenCookie(first)?.maxAge, 86400, 'the new token lives a full ttl: the bound is further')
  clock.tick(20 * HOUR - 1)
  jar.delete('pow_session')
  const second = await jar.request('/me')
  t.equal(second.statusCode, 200, 'and again after 40 hours')
  t.equal(tokenCookie(second)?.maxAge, 8 * 3600 + 1, 'this one lives until 2 days after the sign-in (8 h and 1 ms: rounded up), not a full ttl')
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
  const remember = await jar.request({ method: 'POST', url: '/remember' })
  t.equal(tokenCookie(remember)?.maxAge, 30 * 86400)
  const token = jar.get('pow_persistent_session')
  t.ok(token)
  t.same(secretDevice(secretOf(token)), secretDevice(secretOf(jar.get('pow_session'))), "the token names the session's device")
  jar.delete('pow_session')
  const back = await me(jar)
  t.equal(back.status, 200)
  t.equal(back.fingerprint, fingerprint, 'the token was tied to the session fingerprint')
  await jar.request({ method: 'POST', url: '/forget' })
  t.equal(jar.get('pow_persistent_session'), undefined)
  t.equal((await me(jar)).status, 200, 'forgetting the token keeps the session')
  jar.delete('pow_session')
  t.equal((await me(jar)).status, 401)
})

test('powPersistentSession.create on an anonymous browser makes a remembered device', async (t) => {
  const app = await buildApp(t, {}, (instance) => {
    instance.post('/remember/:id', async (request) => {
      await request.powPersistentSession?.create({ id: Number((request.params as { id: string }).id), name: 'Remy' } as never)
      return { user: request.powSession.user }
    })
  })
  const jar = new CookieJar(app)
  const remember = await jar.request({ method: 'POST', url: '/remember/4' })
  t.same(remember.json(), { user: null }, 'the request stays anonymous')
  t.equal(jar.get('pow_session'), undefined, 'no session cookie')
  const [listed] = await app.pow.credentials.sessions(4)
  t.match(listed, { remembered: true }, 'a device with a token only')
  const back = await jar.request('/me')
  t.equal(back.statusCode, 200, 'the next request is signed in by the token')
  t.same(back.json().user, { id: 4, name: 'Remy' })
})

test('maxDevices: a device made by powPersistentSession.create evicts like a sign-in, with its event', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, { maxDevices: 1 }, (instance) => {
    instance.post('/remember', async (request) => {
      await request.powPersistentSession?.create({ id: 1, name: 'user1' } as never)
      return {}
    })
  })
  const deleted: string[] = []
  app.pow.on('session:deleted', (e) => deleted.push(`${e.fingerprint}:${String(e.reason)}`))
  const old = await signIn(app, 1)
  const { fingerprint } = await me(old)
  clock.tick(MINUTE)
  const remembered = new CookieJar(app)
  await remembered.request({ method: 'POST', url: '/remember' })
  t.equal((await me(remembered)).status, 200, 'the new remembered browser is signed in')
  t.equal((await me(old)).status, 401, 'the least recently used device was ended')
  t.same(deleted, [`${fingerprint as string}:evicted`], 'session:deleted, reason evicted')
})

test('powPersistentSession.create throws PowSignInRevokedError when its device was revoked meanwhile', async (t) => {
  const app = await buildApp(t, {}, (instance) => {
    instance.post('/remember-revoked', async (request) => {
      const user = request.powSession.user as never
      // Another request ("sign out everywhere") lands between authentication and the token.
      await instance.pow.credentials.deleteUserSessions(user)
      await request.powPersistentSession?.create(user)
      return {}
    })
    instance.setErrorHandler(async (err, _request, reply) => {
      await reply.code((err as { statusCode?: number }).statusCode ?? 500).send({ revoked: err instanceof PowSignInRevokedError, code: (err as { code?: string }).code })
    })
  })
  const jar = await signIn(app, 1)
  const response = await jar.request({ method: 'POST', url: '/remember-revoked' })
  t.equal(response.statusCode, 401)
  t.same(response.json(), { revoked: true, code: 'POW_ERR_SIGN_IN_REVOKED' })
  t.equal(tokenCookie(response), undefined, 'no remember-me cookie')
  t.same(await app.pow.credentials.sessions(1), [], 'and no device left behind')
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
