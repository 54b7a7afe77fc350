import { test } from 'tap'
import { isSecret, secretDevice, userBucket } from '../lib/crypto.js'
import { MemoryStore, type PowEvent } from '../lib/index.js'
import { buildApp, me, recordingStore, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'

const MINUTE = 60_000

test('app.pow.credentials: generateId, put, get, delete by raw session id', async (t) => {
  const app = await buildApp(t)
  const { credentials } = app.pow
  const id = credentials.generateId({ id: 5 } as never)
  t.ok(isSecret(id), 'a secret as a cookie holds it')
  const { bucket, fingerprint } = secretDevice(id)
  t.equal(bucket, userBucket('5'), "in the user's bucket")
  t.not(secretDevice(credentials.generateId({ id: 5 } as never)).fingerprint, fingerprint, 'each id is for a new device')
  await t.rejects(credentials.put('raw-session-id', { id: 5 } as never), /generateId/, 'ids must come from generateId')
  await t.rejects(credentials.put(credentials.generateId({ id: 6 } as never), { id: 5 } as never), /generateId/, "and be the user's")
  await credentials.put(id, { id: 5, name: 'E' } as never, { fingerprint: 'fp5', insertedAt: 1, signedInAt: 2, device: 'tv' })
  const found = await credentials.get(id)
  t.same(found?.user, { id: 5, name: 'E' })
  t.match(found?.metadata, { fingerprint, device: 'tv', insertedAt: Number, signedInAt: Number }, 'the fingerprint is the one in the id')
  t.not(found?.metadata.insertedAt, 1, 'insertedAt given in the metadata is ignored')
  t.not(found?.metadata.signedInAt, 2, 'and so is signedInAt')
  await t.rejects(credentials.put(id, { id: 5 } as never), /stored already/, 'an id is put once')
  t.equal(await credentials.get('other'), null)
  t.equal(await credentials.get(credentials.generateId({ id: 5 } as never)), null, 'an id never put finds nothing')
  t.same((await credentials.users()), [{ id: 5, name: 'E' }])
  t.equal(await credentials.delete(id), true)
  t.equal(await credentials.get(id), null)
  t.equal(await credentials.delete(id), false, 'a second time: no such device')
  t.equal(await credentials.delete('not-an-id'), false)
  t.same(await credentials.users(), [], 'the last device took the user with it')
})

test('credentials.put makes a device a browser can use; get only reads, delete ends the whole device', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const { credentials } = app.pow
  const id = credentials.generateId({ id: 5 } as never)
  await credentials.put(id, { id: 5, name: 'E' } as never, { device: 'tv' })
  const jar = new CookieJar(app)
  jar.set('pow_session', app.pow.sign(id))
  const signedIn = await jar.request('/me')
  t.equal(signedIn.statusCode, 200, 'the id signs a browser in')
  t.match(signedIn.json().metadata, { device: 'tv', fingerprint: secretDevice(id).fingerprint })

  clock.tick(16 * MINUTE)
  store.calls.length = 0
  t.same((await credentials.get(id))?.user, { id: 5, name: 'E' }, 'a renewal is due, get still finds the user')
  t.same(store.calls, ['read'], 'get reads only: the renewal is left to the browser')
  const renewal = await jar.request('/me')
  t.equal(renewal.cookies.length, 1, 'the browser renews')
  const renewed = (jar.get('pow_session') as string).split('.')[0]
  t.not(renewed, id)
  t.same((await credentials.get(renewed))?.user, { id: 5, name: 'E' }, 'the renewed id is found')

  t.equal(await credentials.delete(id), true, 'the old id names the device')
  t.equal((await me(jar)).status, 401, 'and deleting it ended the whole device, the renewed id too')
  t.equal(await credentials.get(renewed), null)
})

test('maxDevices: credentials.put beyond it ends the least recently used device, with its event', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, { maxDevices: 1 })
  const deleted: string[] = []
  app.pow.on('session:deleted', (e) => deleted.push(`${e.fingerprint}:${String(e.reason)}`))
  const jar = await signIn(app, 5)
  const { fingerprint } = await me(jar)
  clock.tick(MINUTE)
  const id = app.pow.credentials.generateId({ id: 5 } as never)
  await app.pow.credentials.put(id, { id: 5, name: 'user5' } as never)
  t.ok(await app.pow.credentials.get(id), 'the new device is there')
  t.equal((await me(jar)).status, 401, 'the browser signed in before was evicted')
  t.same(deleted, [`${fingerprint as string}:evicted`], 'session:deleted, reason evicted')
})

test('app.pow.credentials: sessions, users, updateUser, deleteUserSessions; a user or an id', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t)
  const { credentials } = app.pow
  const a = await signIn(app, 1, { metadata: { ua: 'A' } })
  const b = await signIn(app, 1, { metadata: { ua: 'B' } })
  const c = await signIn(app, 1, { metadata: { ua: 'C' }, persistent: true })
  await signIn(app, 2)
  clock.tick(20 * MINUTE)
  t.equal((await me(a)).status, 200, 'a stays active')
  t.equal((await me(b)).status, 200, 'b too')
  clock.tick(11 * MINUTE)
  // c's session idled out; its token still works: it is a device.
  const sessions = await credentials.sessions({ id: 1 } as never)
  t.same(sessions.map((s) => [s.metadata.ua, s.remembered]).sort(), [['A', false], ['B', false], ['C', true]])
  t.notOk('current' in sessions[0], 'no browser is current outside a request')
  t.same(await credentials.sessions(1), sessions, 'the user id as a number')
  t.same(await credentials.sessions('1'), sessions, 'and as a string')
  t.same(await credentials.sessions(3), [], 'a user without devices')
  t.same((await credentials.users()).map((u) => (u as { id: number }).id).sort(), [1], 'user 2 idled out; user 1 has devices')

  await credentials.updateUser({ id: 1, name: 'renamed' } as never)
  t.equal((await me(a)).user?.name, 'renamed')

  const keep = (await me(a)).fingerprint as string
  const cFingerprint = sessions.find((s) => s.metadata.ua === 'C')?.fingerprint as string
  const bFingerprint = sessions.find((s) => s.metadata.ua === 'B')?.fingerprint as string
  const deleted: PowEvent[] = []
  app.pow.on('session:deleted', (e) => deleted.push(e))
  const revoked = await credentials.deleteUserSessions(1, { except: keep, actor: 'admin-cli' })
  t.same(revoked.sort(), [bFingerprint, cFingerprint].sort(), 'the remembered browser is ended too')
  t.same(deleted.map((e) => e.fingerprint).sort(), revoked, 'one deleted event per device')
  t.same(deleted.map((e) => ({ ...e, fingerprint: '' })), [0, 1].map(() => ({ actor: 'admin-cli', user: { id: 1, name: 'renamed' }, userKey: '1', fingerprint: '', reason: 'revoked' })),
    'reason revoked; given an id, the event has the user as stored, and the actor named; no request')
  t.equal((await me(a)).status, 200, 'the kept fingerprint stays (a password change from this browser)')
  t.equal((await me(b)).status, 401)
  t.equal((await me(c)).status, 401, "c's token is dead")

  deleted.length = 0
  await credentials.deleteUserSessions({ id: 1, name: 'renamed' } as never)
  t.equal((await me(a)).status, 401, 'without except every device ends')
  t.match(deleted, [{ reason: 'revoked', fingerprint: keep, user: { id: 1, name: 'renamed' } }], 'given a user, the event has it')
  t.same(await credentials.deleteUserSessions('1'), [], 'nothing left to end')
  t.same(await credentials.users(), [])
})

test('events: created, renewed, deleted', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t)
  const events: string[] = []
  for (const name of ['session:created', 'session:renewed', 'session:deleted'] as const) {
    app.pow.on(name, (e) => events.push(`${name}:${e.userKey}:${e.request === undefined ? 'no-request' : 'request'}${e.reason === undefined ? '' : `:${e.reason}`}`))
  }
  const jar = await signIn(app, 3)
  clock.tick(16 * 60_000)
  await me(jar)
  await me(jar)
  await jar.request({ method: 'POST', url: '/logout' })
  t.same(events, ['session:created:3:request', 'session:renewed:3:request', 'session:deleted:3:request:sign-out'], 'a claim fires nothing')
})

test('a throwing event listener is logged and does not break the request', async (t) => {
  const app = await buildApp(t)
  const logged: unknown[] = []
  app.pow.log.error = ((obj: unknown) => { logged.push(obj) }) as typeof app.pow.log.error
  app.pow.on('session:created', () => { throw new Error('listener bug') })
  const jar = await signIn(app, 1)
  t.equal((await me(jar)).status, 200)
  t.match(logged, [{ err: { message: 'listener bug' }, event: 'session:created' }])
})

test('reloadUser refreshes the user on every request; null ends the device', async (t) => {
  const names = new Map<number, string | null>([[1, 'Alice']])
  const store = new MemoryStore()
  const app = await buildApp(t, {
    store,
    reloadUser: async (user) => {
      const name = names.get((user as { id: number }).id)
      return name === null || name === undefined ? null : { ...(user as object), name } as never
    }
  })
  const deleted: string[] = []
  app.pow.on('session:deleted', (e) => deleted.push(`${e.fingerprint}:${String(e.reason)}`))
  const jar = await signIn(app, 1, { name: 'stale', persistent: true })
  const { fingerprint } = await me(jar)
  t.equal((await me(jar)).user?.name, 'Alice', 'the reloaded user')
  names.set(1, 'Alicia')
  t.equal((await me(jar)).user?.name, 'Alicia')
  names.set(1, null)
  const gone = await jar.request('/me')
  t.equal(gone.statusCode, 401)
  t.equal(jar.get('pow_session'), undefined, 'the session cookie is cleared')
  t.equal(jar.get('pow_persistent_session'), undefined, 'and the remember-me cookie')
  t.same(await store.list('1'), [], 'the device is deleted server-side')
  t.same(deleted, [`${fingerprint as string}:reload`], 'session:deleted, reason reload')
})

test('reloadUser applies to remember-me sign-ins too', async (t) => {
  let exists = true
  const app = await buildApp(t, { reloadUser: async (user) => (exists ? user : null) })
  const jar = await signIn(app, 1, { persistent: true })
  jar.delete('pow_session')
  exists = false
  t.equal((await me(jar)).status, 401, 'a deleted user is not remembered')
  exists = true
  t.equal((await me(jar)).status, 401, 'and the token was revoked')
  t.same(await app.pow.credentials.sessions(1), [])
})

test('reloadUser also applies to a used token inside its grace', async (t) => {
  let exists = true
  const app = await buildApp(t, { reloadUser: async (user) => (exists ? user : null) })
  const jar = await signIn(app, 1, { persistent: true })
  jar.delete('pow_session')
  const usedToken = jar.header()
  t.equal((await me(jar)).status, 200, 'the token is used')
  exists = false
  const inGrace = await app.inject({ url: '/me', headers: { cookie: usedToken } })
  t.equal(inGrace.statusCode, 401, 'a deleted user is not signed in by the grace either')
})

test('a store shared by two apps: devices of one are seen by the other', async (t) => {
  const store = new MemoryStore()
  const a = await buildApp(t, { store })
  const b = await buildApp(t, { store })
  const jar = await signIn(a, 1)
  const onB = await b.inject({ url: '/me', headers: { cookie: jar.header() } })
  t.equal(onB.statusCode, 200)
  t.equal((await b.pow.credentials.sessions(1)).length, 1)
})
