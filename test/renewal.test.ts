import { test } from 'tap'
import { hashSecret, secretDevice } from '../lib/crypto.js'
import { MemoryStore } from '../lib/index.js'
import { buildApp, me, recordingStore, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'

const MINUTE = 60_000

const secretOf = (signed: string | undefined): string => (signed as string).split('.')[0]

test('a session older than renewAfter gets a new id with the same fingerprint', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const app = await buildApp(t, { store })
  const renewed: string[] = []
  app.pow.on('session:renewed', (e) => renewed.push(e.fingerprint))
  const jar = await signIn(app, 1)
  const first = await me(jar)
  const firstSid = jar.get('pow_session')
  const signedInAt = (await jar.request('/me')).json().metadata.signedInAt

  clock.tick(15 * MINUTE - 1)
  const early = await jar.request('/me')
  t.equal(early.cookies.length, 0, 'no cookie before renewAfter')

  clock.tick(1)
  const renewal = await jar.request('/me')
  t.equal(renewal.statusCode, 200)
  t.equal(renewal.cookies.length, 1, 'the renewed id is set at renewAfter')
  t.not(jar.get('pow_session'), firstSid)
  const body = renewal.json()
  t.equal(body.metadata.fingerprint, first.fingerprint, 'same fingerprint')
  t.equal(body.metadata.insertedAt, Date.now(), 'insertedAt is the renewal time')
  t.equal(body.metadata.signedInAt, signedInAt, 'signedInAt is kept')
  t.same(renewed, [first.fingerprint], 'session:renewed fired once')
  t.same(secretDevice(secretOf(jar.get('pow_session'))), secretDevice(secretOf(firstSid)), 'the new id names the same device')
  const listed = await store.list('1')
  t.equal(listed.length, 1, 'one device')
  t.equal(JSON.parse(listed[0].data).session.hash, hashSecret(secretOf(jar.get('pow_session'))), 'whose current session id is the new one')
})

test('once the new id is used, the old id keeps working for rotationGrace without renewing again, then dies', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store, session: { rotationGrace: 10_000 } })
  const jar = await signIn(app, 1)
  const old = jar.clone()
  clock.tick(16 * MINUTE)
  await jar.request('/me')
  store.calls.length = 0
  t.equal((await me(jar)).status, 200, 'the browser uses its new id: the renewal is claimed')
  t.same(store.calls, ['read', 'commit'], 'the claim is a write')
  store.calls.length = 0
  t.equal((await me(jar)).status, 200)
  t.same(store.calls, ['read'], 'once claimed, a read only')

  clock.tick(9_000)
  store.calls.length = 0
  const inGrace = await old.request('/me')
  t.equal(inGrace.statusCode, 200, 'a parallel request with the old id is signed in')
  t.equal(inGrace.cookies.length, 0, 'and gets no cookie that could overwrite the new one')
  t.same(store.calls, ['read'], 'no second renewal, no write')

  clock.tick(999)
  t.equal((await me(old)).status, 200, 'a millisecond before the end of the grace')
  clock.tick(2)
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
  store.calls.length = 0
  const refusedBefore = store.refused()
  const responses = await Promise.all(Array.from({ length: 12 }, () => app.inject({ url: '/me', headers: { cookie: header } })))
  t.same(responses.map((r) => r.statusCode), Array(12).fill(200))
  t.equal(responses.filter((r) => r.cookies.length > 0).length, 1, 'one response carries the new id')
  const commits = store.writes().length
  const refused = store.refused() - refusedBefore
  t.equal(commits - refused, 1, `one renewal stored (${commits} commits, ${refused} refused: the losers re-read)`)
  t.equal(store.calls.filter((c) => c === 'read').length, 12 + refused, 'each loser read the device again')
  t.same(responses.map((r) => r.json().metadata.fingerprint), Array(12).fill(fingerprint))
  const winner = responses.find((r) => r.cookies.length > 0)
  jar.store(winner as NonNullable<typeof winner>)
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

test('absoluteTtl: no renewal extends a session past it', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const app = await buildApp(t, { store, session: { ttl: 30 * MINUTE, renewAfter: 15 * MINUTE, absoluteTtl: 60 * MINUTE } })
  const jar = await signIn(app, 1)
  const start = Date.now()
  for (let minute = 16; minute < 60; minute += 16) {
    clock.tick(16 * MINUTE)
    const response = await jar.request('/me')
    t.equal(response.statusCode, 200, `signed in at minute ${minute}`)
    t.equal(response.cookies.length, 1, `renewed at minute ${minute}`)
  }
  const [listed] = await store.list('1')
  const device = JSON.parse(listed.data)
  t.equal(device.session.startedAt, start, 'renewals keep the start of the session')
  t.equal(device.session.expiresAt, start + 60 * MINUTE, 'the renewed session expires at the absolute limit, not ttl after its renewal')
  clock.tick(60 * MINUTE - 48 * MINUTE - 1)
  t.equal((await me(jar)).status, 200, 'signed in just before the absolute limit')
  clock.tick(1)
  t.equal((await me(jar)).status, 401, 'signed out at the absolute limit despite activity')
})

test('absoluteTtl counts from the start of the session: a remember-me sign-in starts a new one', async (t) => {
  const clock = fakeClock(t)
  const app = await buildApp(t, { session: { ttl: 30 * MINUTE, renewAfter: 15 * MINUTE, absoluteTtl: 60 * MINUTE } })
  const jar = await signIn(app, 1, { persistent: true })
  const signedInAt = Date.now()
  for (let minute = 20; minute <= 60; minute += 20) {
    clock.tick(20 * MINUTE)
    const response = await jar.request('/me')
    t.equal(response.statusCode, 200, `signed in at minute ${minute}`)
  }
  // At minute 60 the session reached its limit; the token signed the browser in with a new session.
  const rotated = Date.now()
  for (let minute = 80; minute < 120; minute += 20) {
    clock.tick(20 * MINUTE)
    const response = await jar.request('/me')
    t.equal(response.statusCode, 200, `signed in at minute ${minute}: the new session counts from minute 60`)
    t.equal(response.json().metadata.signedInAt, signedInAt, 'signedInAt stays that of the sign-in with credentials')
  }
  const copy = jar.clone()
  copy.delete('pow_persistent_session')
  clock.tick(rotated + 60 * MINUTE - Date.now())
  t.equal((await me(copy)).status, 401, 'without the token, the browser is out 60 minutes after the remember-me sign-in')
})

test('a renewal is a read and a commit; its claim too; a request needing none only reads', async (t) => {
  const clock = fakeClock(t)
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1)
  store.calls.length = 0
  await me(jar)
  t.same(store.calls, ['read'], 'no renewal due: one read')
  store.calls.length = 0
  clock.tick(16 * MINUTE)
  const renewal = await jar.request('/me')
  t.equal(renewal.cookies.length, 1)
  t.same(store.calls, ['read', 'commit'], 'a renewal: read, then commit')
  store.calls.length = 0
  await me(jar)
  t.same(store.calls, ['read', 'commit'], 'the first request showing the new id claims it')
  store.calls.length = 0
  await me(jar)
  t.same(store.calls, ['read'])
})

test('a request without cookies never touches the store', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = new CookieJar(app)
  t.equal((await me(jar)).status, 401)
  await app.inject({ url: '/me', headers: { cookie: 'other=1; theme=dark' } })
  t.same(store.calls, [])
})
