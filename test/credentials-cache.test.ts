import { test } from 'tap'
import { MemoryStore } from '../lib/index.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'

test('app.pow.credentials: generateId, put, get, delete by raw session id', async (t) => {
  const app = await buildApp(t)
  const { credentials } = app.pow
  const id = credentials.generateId({ id: 5 } as never)
  await t.rejects(credentials.put('raw-session-id', { id: 5 } as never), /generateId/, 'ids must come from generateId')
  await t.rejects(credentials.put(credentials.generateId({ id: 6 } as never), { id: 5 } as never), /generateId/, "and be the user's")
  await credentials.put(id, { id: 5, name: 'E' } as never, { fingerprint: 'fp5', device: 'tv' })
  const found = await credentials.get(id)
  t.same(found?.user, { id: 5, name: 'E' })
  t.match(found?.metadata, { fingerprint: 'fp5', device: 'tv', insertedAt: Number, signedInAt: Number })
  t.equal(await credentials.get('other'), null)
  t.equal(await credentials.get(credentials.generateId({ id: 5 } as never)), null)
  t.equal(await credentials.delete(id), true)
  t.equal(await credentials.get(id), null)
  t.same(await credentials.users(), [], 'the last session took the user with it')
})

test('app.pow.credentials: sessions, users, updateUser, deleteUserSessions', async (t) => {
  const app = await buildApp(t)
  const { credentials } = app.pow
  const a = await signIn(app, 1, { metadata: { ua: 'A' } })
  const b = await signIn(app, 1, { metadata: { ua: 'B' } })
  await signIn(app, 2)
  const sessions = await credentials.sessions({ id: 1 } as never)
  t.same(sessions.map((s) => s.metadata.ua).sort(), ['A', 'B'])
  t.notOk('current' in sessions[0], 'no browser is current outside a request')
  t.same((await credentials.users()).map((u) => (u as { id: number }).id).sort(), [1, 2])

  await credentials.updateUser({ id: 1, name: 'renamed' } as never)
  t.equal((await me(a)).user?.name, 'renamed')

  const keep = (await me(a)).fingerprint as string
  const deleted: string[] = []
  app.pow.on('session:deleted', (e) => deleted.push(e.fingerprint))
  const revoked = await credentials.deleteUserSessions({ id: 1 } as never, { except: keep })
  t.equal(revoked.length, 1)
  t.same(deleted, revoked, 'one deleted event per fingerprint')
  t.equal((await me(a)).status, 200, 'the kept fingerprint stays (a password change from this browser)')
  t.equal((await me(b)).status, 401)
  await credentials.deleteUserSessions({ id: 1 } as never)
  t.equal((await me(a)).status, 401, 'without except every session ends')
})

test('events: created, renewed, deleted', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t)
  const events: string[] = []
  for (const name of ['session:created', 'session:renewed', 'session:deleted'] as const) {
    app.pow.on(name, (e) => events.push(`${name}:${e.userKey}:${e.request === undefined ? 'no-request' : 'request'}`))
  }
  const jar = await signIn(app, 3)
  clock.tick(16 * 60_000)
  await me(jar)
  await jar.request({ method: 'POST', url: '/logout' })
  t.same(events, ['session:created:3:request', 'session:renewed:3:request', 'session:deleted:3:request'])
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

test('reloadUser refreshes the user on every request; null ends the session', async (t) => {
  const names = new Map<number, string | null>([[1, 'Alice']])
  const store = new MemoryStore()
  const app = await buildApp(t, {
    store,
    reloadUser: async (user) => {
      const name = names.get((user as { id: number }).id)
      return name === null || name === undefined ? null : { ...(user as object), name } as never
    }
  })
  const jar = await signIn(app, 1, { name: 'stale', persistent: true })
  t.equal((await me(jar)).user?.name, 'Alice', 'the reloaded user')
  names.set(1, 'Alicia')
  t.equal((await me(jar)).user?.name, 'Alicia')
  names.set(1, null)
  const gone = await jar.request('/me')
  t.equal(gone.statusCode, 401)
  t.equal(jar.get('pow_session'), undefined, 'the session cookie is cleared')
  t.equal(jar.get('pow_persistent_session'), undefined, 'and the remember-me cookie')
  t.same(await store.listSessions('1'), [], 'the session is deleted server-side')
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

test('a store shared by two apps: sessions of one are seen by the other', async (t) => {
  const store = new MemoryStore()
  const a = await buildApp(t, { store })
  const b = await buildApp(t, { store })
  const jar = await signIn(a, 1)
  const onB = await b.inject({ url: '/me', headers: { cookie: jar.header() } })
  t.equal(onB.statusCode, 200)
})
