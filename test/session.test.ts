import { test } from 'tap'
import { MemoryStore, PowMetadataTooLargeError, type PowEvent } from '../lib/index.js'
import { hashSecret, secretDevice, userBucket } from '../lib/crypto.js'
import { buildApp, me, recordingStore, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { allStores } from './helpers/stores.js'

const MINUTE = 60_000

/** The secret a signed cookie value holds (`<secret>.<signature>`). */
const secretOf = (signed: string | undefined): string => (signed as string).split('.')[0]

/** Every `session:deleted` event of the app, as `<fingerprint>:<reason>`. */
function deletions (app: { pow: { on: (event: 'session:deleted', listener: (e: PowEvent) => void) => unknown } }): string[] {
  const seen: string[] = []
  app.pow.on('session:deleted', (e) => seen.push(`${e.fingerprint}:${String(e.reason)}`))
  return seen
}

test('create signs in with a signed secret naming the device; the user and metadata are read back', async (t) => {
  const app = await buildApp(t)
  const jar = new CookieJar(app)
  const login = await jar.request({ method: 'POST', url: '/login', payload: { id: 1, name: 'Alice', metadata: { device: 'laptop' } } })
  const cookie = login.cookies.find((c) => c.name === 'pow_session')
  t.ok(cookie, 'the session cookie is set')
  t.match(cookie?.value, /^[A-Za-z0-9_-]{69}\.[A-Za-z0-9+/]{43}$/, 'bucket, fingerprint and 256 random bits, then an HMAC-SHA256 signature')
  t.equal(cookie?.value.length, 113)
  t.equal(login.cookies.find((c) => c.name === 'pow_persistent_session'), undefined, 'no remember-me without persistent')
  const response = await jar.request('/me')
  t.equal(response.statusCode, 200)
  const body = response.json()
  t.same(body.user, { id: 1, name: 'Alice' })
  t.match(body.metadata, { device: 'laptop', fingerprint: /^[A-Za-z0-9_-]{22}$/, insertedAt: Number, signedInAt: Number })
  const { bucket, fingerprint } = secretDevice(secretOf(cookie?.value))
  t.equal(bucket, userBucket('1'), "the secret starts with the user's bucket")
  t.equal(fingerprint, body.metadata.fingerprint, 'then the fingerprint of its device')
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

test('the store holds only hashes of session ids and tokens, inside the device record', async (t) => {
  const store = new MemoryStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  const sid = secretOf(jar.get('pow_session'))
  const token = secretOf(jar.get('pow_persistent_session'))
  t.same(secretDevice(token), secretDevice(sid), 'both secrets name the same device')
  const { bucket, fingerprint } = secretDevice(sid)
  const stored = await store.read(bucket, fingerprint)
  t.ok(stored, 'the cookie names the device to read')
  const device = JSON.parse(stored?.data as string)
  t.equal(device.session.hash, hashSecret(sid), 'the device keeps the hash of the session id')
  t.equal(device.token.hash, hashSecret(token), 'and of the token')
  t.same(JSON.parse(stored?.user as string), { id: 1, name: 'user1' }, "with the user's credentials")
  // The first 26 characters name the device and are no secret; the 43 random ones are.
  const dump = JSON.stringify(await store.list('1')) + JSON.stringify(stored)
  t.notMatch(dump, sid.slice(26), 'the random part of the session id is nowhere in the store')
  t.notMatch(dump, token.slice(26), 'nor that of the token')
})

test('a login is one commit; on a browser signed in as the same user the old device goes in the same commit', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const deleted = deletions(app)
  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  t.same(store.calls, ['commit'], 'a fresh browser: one commit, no read')
  const before = await me(jar)

  store.calls.length = 0
  await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  t.same(store.calls, ['read', 'commit'], 'the cookie is read (authentication), then one commit')
  const after = await me(jar)
  t.equal(after.status, 200)
  t.not(after.fingerprint, before.fingerprint, 'a new device')
  t.same(await app.pow.credentials.sessions(1).then((list) => list.map((s) => s.fingerprint)), [after.fingerprint], 'the old device is gone')
  t.same(deleted, [`${before.fingerprint as string}:sign-in`], 'session:deleted, reason sign-in')
})

test('create ends the current device first (fixation): another user is a second commit', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const deleted = deletions(app)
  const jar = await signIn(app, 1, { persistent: true })
  const before = await me(jar)
  const oldSid = jar.get('pow_session') as string
  const oldToken = jar.get('pow_persistent_session') as string

  store.calls.length = 0
  await jar.request({ method: 'POST', url: '/login', payload: { id: 2 } })
  t.same(store.calls, ['read', 'commit', 'commit'], "the other user's device is deleted in its own commit")
  const after = await me(jar)
  t.equal(after.user?.id, 2)
  t.not(after.fingerprint, before.fingerprint)
  t.not(jar.get('pow_session'), oldSid)
  t.equal(jar.get('pow_persistent_session'), undefined, "the previous user's remember-me cookie is cleared")
  t.same(deleted, [`${before.fingerprint as string}:sign-in`])

  const stale = new CookieJar(app)
  stale.set('pow_session', oldSid)
  t.equal((await me(stale)).status, 401, 'the pre-login session id is dead')
  stale.delete('pow_session')
  stale.set('pow_persistent_session', oldToken)
  t.equal((await me(stale)).status, 401, "the previous user's token is dead too")
  t.same(await app.pow.credentials.sessions(1), [], 'user 1 has no device left')
})

test('delete signs out: the device (session and token) gone server-side, both cookies cleared', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const deleted = deletions(app)
  const jar = await signIn(app, 1, { persistent: true })
  const { fingerprint } = await me(jar)
  const copy = jar.clone()
  store.calls.length = 0
  const logout = await jar.request({ method: 'POST', url: '/logout' })
  t.equal(logout.statusCode, 204)
  t.same(store.calls, ['read', 'commit'])
  const cleared = logout.cookies.filter((c) => c.value === '' && (c as { maxAge?: number }).maxAge === 0).map((c) => c.name).sort()
  t.same(cleared, ['pow_persistent_session', 'pow_session'])
  t.equal((await me(jar)).status, 401)
  t.equal((await me(copy)).status, 401, 'a copy of the old cookies signs nobody in')
  copy.delete('pow_session')
  t.equal((await me(copy)).status, 401, 'nor does the copied token alone')
  t.same(deleted, [`${fingerprint as string}:sign-out`])
})

test('delete clears only the cookies the request carried: a sign-out without cookies sets none', async (t) => {
  const app = await buildApp(t, { store: new MemoryStore() })
  const bare = await app.inject({ method: 'POST', url: '/logout', headers: { 'content-type': 'text/plain' }, payload: '' })
  t.equal(bare.statusCode, 204)
  t.equal(bare.headers['set-cookie'], undefined, 'a cross-site post without cookies clears nothing in the browser')
  const jar = await signIn(app, 1, { persistent: true })
  const onlyToken = jar.clone()
  onlyToken.delete('pow_session')
  const tokenOut = await app.inject({ method: 'POST', url: '/logout', headers: { cookie: onlyToken.header() } })
  t.same(tokenOut.cookies.map((c) => `${c.name}=${c.value}`).sort(), ['pow_persistent_session=', 'pow_session='],
    'a remember-me cookie alone signs in (a new session cookie), so sign-out clears both')
  const forged = await app.inject({ method: 'POST', url: '/logout', headers: { cookie: 'pow_session=forged.value' } })
  t.same(forged.cookies.map((c) => `${c.name}=${c.value}`), ['pow_session='], 'a cookie the request carried is cleared, even a forged one')
  const otherCookie = await app.inject({ method: 'POST', url: '/logout', headers: { cookie: 'theme=dark' } })
  t.equal(otherCookie.headers['set-cookie'], undefined)
})

test('session:deleted fires only for a device that was live', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t)
  const deleted = deletions(app)
  const jar = await signIn(app, 1)
  clock.tick(31 * MINUTE)
  const logout = await jar.request({ method: 'POST', url: '/logout' })
  t.equal(logout.statusCode, 204)
  t.same(deleted, [], 'signing out a session that idled out ends no live device')
})

test('update stores new credentials that every device of the user sees', async (t) => {
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
  await signIn(app, 1, { metadata: { ua: 'B' }, persistent: true })
  await signIn(app, 2)
  const list = (await a.request('/sessions')).json().sessions
  t.equal(list.length, 2)
  t.same(list.map((s: { metadata: { ua: string } }) => s.metadata.ua).sort(), ['A', 'B'])
  t.same(list.filter((s: { current: boolean }) => s.current).map((s: { metadata: { ua: string } }) => s.metadata.ua), ['A'])
  t.same(list.filter((s: { remembered: boolean }) => s.remembered).map((s: { metadata: { ua: string } }) => s.metadata.ua), ['B'], 'remembered: the browser with a token')
  t.match(list[0], { fingerprint: /^[A-Za-z0-9_-]{22}$/, insertedAt: Number, signedInAt: Number, current: Boolean, remembered: Boolean })
})

test("deleteSession ends another browser of the user, not another user's", async (t) => {
  const app = await buildApp(t)
  const deleted = deletions(app)
  const a = await signIn(app, 1)
  const b = await signIn(app, 1, { persistent: true })
  const bob = await signIn(app, 2)
  const bFingerprint = (await me(b)).fingerprint as string
  const bobFingerprint = (await me(bob)).fingerprint as string

  t.equal((await a.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(bobFingerprint)}` })).statusCode, 404)
  t.equal((await me(bob)).status, 200, 'bob is still signed in')
  t.equal((await a.request({ method: 'DELETE', url: '/sessions/unknown' })).statusCode, 404)
  t.same(deleted, [], 'nothing ended yet')

  t.equal((await a.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(bFingerprint)}` })).statusCode, 204)
  t.equal((await me(b)).status, 401, 'the revoked browser is out')
  b.delete('pow_session')
  t.equal((await me(b)).status, 401, 'its remember-me token too')
  t.equal((await me(a)).status, 200)
  t.same(deleted, [`${bFingerprint}:revoked`])
  t.equal((await a.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(bFingerprint)}` })).statusCode, 404, 'a second time: no such device')
})

test('deleteSession of the current fingerprint signs this browser out', async (t) => {
  const app = await buildApp(t)
  const deleted = deletions(app)
  const a = await signIn(app, 1)
  const fingerprint = (await me(a)).fingerprint as string
  t.equal((await a.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(fingerprint)}` })).statusCode, 204)
  t.equal(a.get('pow_session'), undefined)
  t.equal((await me(a)).status, 401)
  t.same(deleted, [`${fingerprint}:sign-out`])
})

test('deleteOtherSessions ends every other browser and its remember-me token', async (t) => {
  const app = await buildApp(t)
  const deleted = deletions(app)
  const a = await signIn(app, 1, { persistent: true })
  const b = await signIn(app, 1, { persistent: true })
  const c = await signIn(app, 1)
  const bob = await signIn(app, 2)
  const others = [(await me(b)).fingerprint, (await me(c)).fingerprint] as string[]
  const response = await a.request({ method: 'DELETE', url: '/sessions' })
  t.same(response.json().revoked.sort(), [...others].sort())
  t.same(deleted.sort(), others.map((fp) => `${fp}:revoked`).sort())
  t.equal((await me(a)).status, 200)
  t.equal((await me(b)).status, 401)
  b.delete('pow_session')
  t.equal((await me(b)).status, 401, "b's token is dead too")
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
  const jar = await signIn(app, 7)
  t.equal((await store.list('user:7')).length, 1)
  t.equal(secretDevice(secretOf(jar.get('pow_session'))).bucket, userBucket('user:7'), 'the bucket is of the user key')
})

test('maxDevices: a sign-in beyond it ends the least recently used device, never the signing-in one', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, { maxDevices: 2 })
  const events: PowEvent[] = []
  app.pow.on('session:deleted', (e) => events.push(e))
  const a = await signIn(app, 1)
  clock.tick(MINUTE)
  const b = await signIn(app, 1)
  const bob = await signIn(app, 2)
  const aFingerprint = (await me(a)).fingerprint
  const bFingerprint = (await me(b)).fingerprint
  // a renews: its device is written, so b becomes the least recently used.
  clock.tick(16 * MINUTE)
  t.equal((await a.request('/me')).cookies.length, 1, 'a renewed')
  clock.tick(MINUTE)

  const c = await signIn(app, 1)
  const cFingerprint = (await me(c)).fingerprint
  t.equal(events.length, 1, 'one device ended')
  t.match(events[0], { reason: 'evicted', fingerprint: bFingerprint, userKey: '1', user: { id: 1 } })
  t.equal((await me(b)).status, 401, 'the evicted browser is signed out')
  t.equal((await me(a)).status, 200, 'the recently used one stays')
  t.equal((await me(c)).status, 200, 'the signing-in one stays')
  t.equal((await me(bob)).status, 200, "another user's devices do not count")
  t.same((await app.pow.credentials.sessions(1)).map((s) => s.fingerprint).sort(), [aFingerprint, cFingerprint].sort())

  // With a limit of one, each sign-in ends the one before: the browser signing in is never the one to go.
  const one = await buildApp(t, { maxDevices: 1 })
  const jars: CookieJar[] = []
  for (let i = 0; i < 4; i++) {
    jars.push(await signIn(one, 1))
    t.equal((await me(jars[i])).status, 200, `sign-in ${i + 1} is signed in`)
    if (i > 0) t.equal((await me(jars[i - 1])).status, 401, `sign-in ${i} is out`)
  }
})

// The clock does not move here: every sign-in has the same usedAt, and the store may break the
// tie either way (the store contract says so). The browser that signs in must still stay.
test('maxDevices: sign-ins in the same millisecond never end the signing-in browser', async (t) => {
  for (const [name, make] of allStores(t)) {
    await t.test(name, async (t) => {
      fakeClock(t)
      const app = await buildApp(t, { store: await make(), maxDevices: 1 })
      const events: PowEvent[] = []
      app.pow.on('session:deleted', (e) => events.push(e))
      for (let i = 0; i < 12; i++) {
        const jar = await signIn(app, 1)
        const { fingerprint } = secretDevice(secretOf(jar.get('pow_session')))
        t.equal((await me(jar)).status, 200, `sign-in ${i + 1} is signed in`)
        t.notOk(events.some((e) => e.fingerprint === fingerprint), `sign-in ${i + 1} was not reported evicted`)
      }
    })
  }
})

test('maxDevices: a sign-in on an instance whose clock is behind never ends the signing-in browser', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const ahead = await buildApp(t, { store, maxDevices: 1 })
  const behind = await buildApp(t, { store, maxDevices: 1 })
  const old = await signIn(ahead, 1)
  // The second instance's clock is two seconds behind the first's: its sign-in has the lower usedAt.
  clock.setSystemTime(Date.now() - 2000)
  const jar = await signIn(behind, 1)
  t.equal((await me(jar)).status, 200, 'the browser that just signed in is signed in')
  t.equal((await me(old)).status, 401, 'the other device made room')
})

test('maxMetadataBytes: larger metadata is a 400 PowMetadataTooLargeError; nothing stored, no cookie', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store, maxMetadataBytes: 64 }, (instance) => {
    instance.post('/too-large', async (request) => {
      try {
        await request.powSession.create({ id: 9 } as never, { metadata: { note: 'x'.repeat(100) } })
      } catch (err) {
        return { error: err instanceof PowMetadataTooLargeError, user: request.powSession.user }
      }
      return { error: false }
    })
  })
  // {"note":"…"} is 11 bytes of JSON around the note.
  const fits = await app.inject({ method: 'POST', url: '/login', payload: { id: 1, metadata: { note: 'x'.repeat(53) } } })
  t.equal(fits.statusCode, 200, '64 bytes fit')
  const jar = await signIn(app, 2)
  const before = jar.header()
  store.calls.length = 0

  for (const note of ['x'.repeat(54), 'é'.repeat(27)]) {
    const response = await jar.request({ method: 'POST', url: '/login', payload: { id: 3, metadata: { note } } })
    t.equal(response.statusCode, 400, `${Buffer.byteLength(JSON.stringify({ note }))} bytes of JSON do not`)
    t.match(response.json(), { code: 'POW_ERR_METADATA_TOO_LARGE', statusCode: 400 })
    t.equal(response.headers['set-cookie'], undefined, 'no cookie changes')
  }
  t.same(store.writes(), [], 'nothing was written')
  t.same(await app.pow.credentials.sessions(3), [], 'nor stored')
  t.equal(jar.header(), before)
  t.equal((await me(jar)).user?.id, 2, 'the browser is still signed in as before: no device was ended')
  t.same((await jar.request({ method: 'POST', url: '/too-large' })).json(), { error: true, user: { id: 2, name: 'user2' } }, 'the error is a PowMetadataTooLargeError, the request keeps its user')
})

test('isFresh: true within the given time of the sign-in with credentials, and renewals keep signedInAt', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, {}, (instance) => {
    instance.get<{ Querystring: { ms: string } }>('/fresh', async (request) => ({
      fresh: request.powSession.isFresh(Number(request.query.ms)),
      signedInAt: request.powSession.metadata?.signedInAt
    }))
  })
  const fresh = async (jar: CookieJar, ms: number): Promise<{ fresh: boolean, signedInAt?: number }> => (await jar.request(`/fresh?ms=${ms}`)).json()
  t.same(await fresh(new CookieJar(app), 60 * MINUTE), { fresh: false }, 'anonymous: never fresh')
  const jar = await signIn(app, 1)
  const signedInAt = Date.now()
  t.same(await fresh(jar, 0), { fresh: true, signedInAt }, 'right after create')
  clock.tick(16 * MINUTE)
  const renewed = await jar.request('/me')
  t.equal(renewed.cookies.length, 1, 'renewed')
  t.equal(renewed.json().metadata.signedInAt, signedInAt, 'a renewal keeps signedInAt')
  t.equal(renewed.json().metadata.insertedAt, Date.now(), 'and moves insertedAt')
  t.same(await fresh(jar, 16 * MINUTE), { fresh: true, signedInAt })
  t.same(await fresh(jar, 16 * MINUTE - 1), { fresh: false, signedInAt }, 'older than asked: not fresh')
})
