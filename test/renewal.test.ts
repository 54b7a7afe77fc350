import { test } from 'tap'
import { hashToken } from '../lib/crypto.js'
import { MemoryStore } from '../lib/index.js'
import { buildApp, me, recordingStore, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'

const MINUTE = 60_000

test('a session older than renewAfter gets a new id with the same fingerprint', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1)
  const first = await me(jar)
  const firstSid = jar.get('pow_session')
  const signedInAt = (await jar.request('/me')).json().metadata.signedInAt

  clock.tick(14 * MINUTE)
  const early = await jar.request('/me')
  t.equal(early.cookies.length, 0, 'no cookie before renewAfter')

  clock.tick(1 * MINUTE)
  const renewal = await jar.request('/me')
  t.equal(renewal.statusCode, 200)
  t.equal(renewal.cookies.length, 1, 'the renewed id is set')
  t.not(jar.get('pow_session'), firstSid)
  const body = renewal.json()
  t.equal(body.metadata.fingerprint, first.fingerprint, 'same fingerprint')
  t.equal(body.metadata.insertedAt, Date.now(), 'insertedAt is the renewal time')
  t.equal(body.metadata.signedInAt, signedInAt, 'signedInAt is kept')
  const listed = await store.listSessions('1')
  t.equal(listed.length, 1, 'one session per fingerprint in the list')
  t.equal(listed[0].sidHash, hashToken((jar.get('pow_session') as string).split('.')[0]))
})

test('once the new id is used, the old id keeps working for rotationGrace without renewing again, then dies', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store, session: { rotationGrace: 10_000 } })
  const jar = await signIn(app, 1)
  const old = jar.clone()
  clock.tick(16 * MINUTE)
  await jar.request('/me')
  t.equal((await me(jar)).status, 200, 'the browser uses its new id: the renewal is claimed')
  const puts = store.calls.filter((c) => c === 'putSession').length

  clock.tick(9_000)
  const inGrace = await old.request('/me')
  t.equal(inGrace.statusCode, 200, 'a parallel request with the old id is signed in')
  t.equal(inGrace.cookies.length, 0, 'and gets no cookie that could overwrite the new one')
  t.equal(store.calls.filter((c) => c === 'putSession').length, puts, 'no second renewal')

  clock.tick(2_000)
  t.equal((await me(old)).status, 401, 'the old id is dead after the grace')
  t.equal((await me(jar)).status, 200, 'the new id lives')
})

test('of concurrent stale requests exactly one renews and none sees a 401', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1)
  const fingerprint = (await me(jar)).fingerprint
  clock.tick(20 * MINUTE)
  const header = jar.header()
  const putsBefore = store.calls.filter((c) => c === 'putSession').length
  const responses = await Promise.all(Array.from({ length: 12 }, () => app.inject({ url: '/me', headers: { cookie: header } })))
  t.same(responses.map((r) => r.statusCode), Array(12).fill(200))
  t.equal(responses.filter((r) => r.cookies.length > 0).length, 1, 'one response carries the new id')
  t.equal(store.calls.filter((c) => c === 'putSession').length - putsBefore, 1, 'one renewal stored')
  t.same(responses.map((r) => r.json().metadata.fingerprint), Array(12).fill(fingerprint))
  const sessions = (await jar.request('/sessions')).json().sessions
  t.equal(sessions.length, 1)
})

test('idle timeout: a session with no request for ttl is gone; activity keeps it alive', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, { session: { ttl: 30 * MINUTE, renewAfter: 15 * MINUTE } })
  const idle = await signIn(app, 1)
  const active = await signIn(app, 2)
  for (let i = 0; i < 12; i++) {
    clock.tick(10 * MINUTE)
    t.equal((await me(active)).status, 200, `active after ${(i + 1) * 10} minutes`)
  }
  t.equal((await me(idle)).status, 401, 'the idle browser is signed out')

  const edge = await signIn(app, 3)
  clock.tick(30 * MINUTE - 1)
  t.equal((await me(edge)).status, 200, 'alive just before ttl')
  const edge2 = await signIn(app, 4)
  clock.tick(30 * MINUTE)
  t.equal((await me(edge2)).status, 401, 'gone at ttl')
})

test('absoluteTtl: no renewal extends a session family past it', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const app = await buildApp(t, { store, session: { ttl: 30 * MINUTE, renewAfter: 15 * MINUTE, absoluteTtl: 60 * MINUTE } })
  const jar = await signIn(app, 1)
  for (let minute = 16; minute < 60; minute += 16) {
    clock.tick(16 * MINUTE)
    t.equal((await me(jar)).status, 200, `signed in at minute ${minute}`)
  }
  const [listed] = await store.listSessions('1')
  t.ok(listed.expiresAt <= listed.record.signedInAt + 60 * MINUTE, 'the renewed session expires by the absolute limit')
  clock.tick(60 * MINUTE - 48 * MINUTE)
  t.equal((await me(jar)).status, 401, 'signed out at the absolute limit despite activity')
})

test('renewal is one lock and one put; a request needing none only reads', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1)
  store.calls.length = 0
  await me(jar)
  t.same(store.calls, ['getSession'])
  store.calls.length = 0
  clock.tick(16 * MINUTE)
  await me(jar)
  t.same(store.calls, ['getSession', 'lock', 'putSession'])
})

test('a request without cookies never touches the store', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = new CookieJar(app)
  t.equal((await me(jar)).status, 401)
  await app.inject({ url: '/me', headers: { cookie: 'other=1; theme=dark' } })
  t.same(store.calls, [])
})
