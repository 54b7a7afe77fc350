import { test } from 'tap'
import { MemoryStore } from '../lib/index.js'
import { hashToken } from '../lib/crypto.js'
import { buildApp, me, recordingStore, signIn } from './helpers/app.js'
import { CookieJar } from './helpers/jar.js'

test('create signs in with a signed random id; the user and metadata are read back', async (t) => {
  const app = await buildApp(t)
  const jar = new CookieJar(app)
  const login = await jar.request({ method: 'POST', url: '/login', payload: { id: 1, name: 'Alice', metadata: { device: 'laptop' } } })
  const cookie = login.cookies.find((c) => c.name === 'pow_session')
  t.ok(cookie, 'the session cookie is set')
  t.match(cookie?.value, /^[A-Za-z0-9_-]{47}\.[A-Za-z0-9+/]{43}$/, 'a bucket and a 256-bit id, HMAC-SHA256 signature')
  t.equal(login.cookies.find((c) => c.name === 'pow_persistent_session'), undefined, 'no remember-me without persistent')
  const response = await jar.request('/me')
  t.equal(response.statusCode, 200)
  const body = response.json()
  t.same(body.user, { id: 1, name: 'Alice' })
  t.match(body.metadata, { device: 'laptop', fingerprint: /^[A-Za-z0-9_-]{22}$/, insertedAt: Number, signedInAt: Number })
})

test('session cookie defaults: HttpOnly, SameSite=Lax, Path=/, no Max-Age, Secure only in production', async (t) => {
  const app = await buildApp(t)
  const login = await app.inject({ method: 'POST', url: '/login', payload: { id: 1 } })
  const header = ([] as string[]).concat(login.headers['set-cookie'] as string | string[]).find((h) => h.startsWith('pow_session='))
  t.match(header, /; Path=\/; HttpOnly; SameSite=Lax$/)
  t.notMatch(header, /Max-Age|Expires|Secure/)

  const saved = process.env.NODE_ENV
  process.env.NODE_ENV = 'production'
  t.teardown(() => { process.env.NODE_ENV = saved })
  const prod = await buildApp(t)
  const prodLogin = await prod.inject({ method: 'POST', url: '/login', payload: { id: 1 } })
  t.match(String(prodLogin.headers['set-cookie']), /pow_session=[^;]+; Path=\/; HttpOnly; Secure; SameSite=Lax/)
})

test('caller cookie options override the defaults', async (t) => {
  const app = await buildApp(t, { session: { cookieName: 'sid', cookie: { sameSite: 'strict', path: '/app', domain: 'example.com' } } })
  const login = await app.inject({ method: 'POST', url: '/login', payload: { id: 1 } })
  t.match(String(login.headers['set-cookie']), /^sid=[^;]+; Domain=example\.com; Path=\/app; HttpOnly; SameSite=Strict$/)
})

test('a __Host- cookie name gets Secure and works', async (t) => {
  const app = await buildApp(t, { session: { cookieName: '__Host-sid' } })
  const jar = new CookieJar(app)
  const login = await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  t.match(String(login.headers['set-cookie']), /^__Host-sid=[^;]+; Path=\/; HttpOnly; Secure; SameSite=Lax$/)
  t.equal((await me(jar)).status, 200)
})

test('a __Secure- cookie name gets Secure by default', async (t) => {
  const app = await buildApp(t, { persistentSession: { cookieName: '__Secure-remember' } })
  const login = await app.inject({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })
  t.match(String(login.headers['set-cookie']), /__Secure-remember=[^;]+; Max-Age=\d+; Path=\/; HttpOnly; Secure; SameSite=Lax/)
})

test('the store holds only hashes of session ids and tokens', async (t) => {
  const store = new MemoryStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  const sid = (jar.get('pow_session') as string).split('.')[0]
  const token = (jar.get('pow_persistent_session') as string).split('.')[0]
  t.ok(await store.getSession(hashToken(sid)), 'the hash finds the session')
  t.equal(await store.getSession(sid), null, 'the raw id finds nothing')
  const [listed] = await store.listSessions('1')
  t.equal(listed.sidHash, hashToken(sid))
  t.notMatch(JSON.stringify(listed), sid)
  t.equal(await store.getToken(token), null, 'the raw token finds nothing')
  t.ok(await store.getToken(hashToken(token)))
})

test('create ends the current session first (fixation) and starts a new fingerprint', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  const before = await me(jar)
  const oldSid = jar.get('pow_session') as string
  const oldToken = jar.get('pow_persistent_session') as string

  await jar.request({ method: 'POST', url: '/login', payload: { id: 2 } })
  const after = await me(jar)
  t.equal(after.user?.id, 2)
  t.not(after.fingerprint, before.fingerprint)
  t.not(jar.get('pow_session'), oldSid)
  t.equal(jar.get('pow_persistent_session'), undefined, "the previous user's remember-me cookie is cleared")

  const stale = new CookieJar(app)
  stale.set('pow_session', oldSid)
  t.equal((await me(stale)).status, 401, 'the pre-login session id is dead')
  stale.delete('pow_session')
  stale.set('pow_persistent_session', oldToken)
  t.equal((await me(stale)).status, 401, "the previous user's token is dead too")
})

test('delete signs out: session and token gone server-side, both cookies cleared', async (t) => {
  const app = await buildApp(t)
  const jar = await signIn(app, 1, { persistent: true })
  const copy = jar.clone()
  const logout = await jar.request({ method: 'POST', url: '/logout' })
  t.equal(logout.statusCode, 204)
  const cleared = logout.cookies.filter((c) => c.value === '' && (c as { maxAge?: number }).maxAge === 0).map((c) => c.name).sort()
  t.same(cleared, ['pow_persistent_session', 'pow_session'])
  t.equal((await me(jar)).status, 401)
  t.equal((await me(copy)).status, 401, 'a copy of the old cookies signs nobody in')
})

test('update stores new credentials that every session of the user sees', async (t) => {
  const app = await buildApp(t)
  const a = await signIn(app, 1, { name: 'Alice' })
  const b = await signIn(app, 1, { name: 'Alice' })
  const other = await signIn(app, 2, { name: 'Bob' })
  const patched = await a.request({ method: 'PATCH', url: '/me', payload: { name: 'Alicia' } })
  t.equal(patched.statusCode, 200)
  t.equal((await me(a)).user?.name, 'Alicia')
  t.equal((await me(b)).user?.name, 'Alicia', 'the other browser sees the update')
  t.equal((await me(other)).user?.name, 'Bob')
})

test('update refuses another user', async (t) => {
  const app = await buildApp(t, {}, (instance) => {
    instance.post('/steal', async (request) => {
      await request.powSession.update({ id: 2, name: 'Bob' } as never)
      return {}
    })
  })
  const jar = await signIn(app, 1)
  const bob = await signIn(app, 2, { name: 'Bob' })
  const steal = await jar.request({ method: 'POST', url: '/steal' })
  t.equal(steal.statusCode, 500)
  t.match(steal.json().message, /must be given the signed-in user/)
  t.equal((await me(bob)).user?.name, 'Bob')
})

test('sessions lists one entry per browser with the current one marked', async (t) => {
  const app = await buildApp(t)
  const a = await signIn(app, 1, { metadata: { ua: 'A' } })
  await signIn(app, 1, { metadata: { ua: 'B' } })
  await signIn(app, 2)
  const list = (await a.request('/sessions')).json().sessions
  t.equal(list.length, 2)
  t.same(list.map((s: { metadata: { ua: string } }) => s.metadata.ua).sort(), ['A', 'B'])
  t.same(list.filter((s: { current: boolean }) => s.current).map((s: { metadata: { ua: string } }) => s.metadata.ua), ['A'])
  t.match(list[0], { fingerprint: String, insertedAt: Number, signedInAt: Number })
})

test("deleteSession ends another browser of the user, not another user's", async (t) => {
  const app = await buildApp(t)
  const a = await signIn(app, 1)
  const b = await signIn(app, 1, { persistent: true })
  const bob = await signIn(app, 2)
  const bFingerprint = (await me(b)).fingerprint as string
  const bobFingerprint = (await me(bob)).fingerprint as string

  t.equal((await a.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(bobFingerprint)}` })).statusCode, 404)
  t.equal((await me(bob)).status, 200, 'bob is still signed in')
  t.equal((await a.request({ method: 'DELETE', url: '/sessions/unknown' })).statusCode, 404)

  t.equal((await a.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(bFingerprint)}` })).statusCode, 204)
  t.equal((await me(b)).status, 401, 'the revoked browser is out, its remember-me token too')
  t.equal((await me(a)).status, 200)
})

test('deleteSession of the current fingerprint signs this browser out', async (t) => {
  const app = await buildApp(t)
  const a = await signIn(app, 1)
  const fingerprint = (await me(a)).fingerprint as string
  t.equal((await a.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(fingerprint)}` })).statusCode, 204)
  t.equal(a.get('pow_session'), undefined)
  t.equal((await me(a)).status, 401)
})

test('deleteOtherSessions ends every other browser and its remember-me token', async (t) => {
  const app = await buildApp(t)
  const a = await signIn(app, 1, { persistent: true })
  const b = await signIn(app, 1, { persistent: true })
  const c = await signIn(app, 1)
  const bob = await signIn(app, 2)
  const response = await a.request({ method: 'DELETE', url: '/sessions' })
  t.equal(response.json().revoked.length, 2)
  t.equal((await me(a)).status, 200)
  t.equal((await me(b)).status, 401)
  t.equal((await me(c)).status, 401)
  t.equal((await me(bob)).status, 200)
  t.equal((await a.request('/sessions')).json().sessions.length, 1)
})

test('helpers that need a user answer 401 when anonymous', async (t) => {
  const app = await buildApp(t)
  const jar = new CookieJar(app)
  for (const [method, url] of [['GET', '/sessions'], ['DELETE', '/sessions'], ['DELETE', '/sessions/x'], ['PATCH', '/me']] as const) {
    const response = await jar.request({ method, url, payload: method === 'PATCH' ? { name: 'x' } : undefined })
    t.equal(response.statusCode, 401, `${method} ${url}`)
    t.equal(response.json().code, 'POW_ERR_NOT_SIGNED_IN')
  }
  t.equal((await jar.request({ method: 'POST', url: '/logout' })).statusCode, 204, 'signing out when anonymous is fine')
})

test('create rejects a user without a usable id, and persistent without the option', async (t) => {
  const app = await buildApp(t, { persistentSession: false }, (instance) => {
    instance.post('/bad-user', async (request) => { await request.powSession.create({ name: 'x' } as never); return {} })
    instance.post('/remember', async (request) => { await request.powSession.create({ id: 1 } as never, { persistent: true }); return {} })
  })
  t.match((await app.inject({ method: 'POST', url: '/bad-user' })).json().message, /userId\(user\) must return/)
  t.match((await app.inject({ method: 'POST', url: '/remember' })).json().message, /needs the persistentSession option/)
})

test('a custom userId names the user key', async (t) => {
  const store = new MemoryStore()
  const app = await buildApp(t, { store, userId: (user) => `user:${(user as { id: number }).id}` })
  await signIn(app, 7)
  t.equal((await store.listSessions('user:7')).length, 1)
})
