/**
 * Replacements are claimed on first use (faults): the answer that carries a renewed
 * session id or a rotated remember-me token can be lost after the store ran the write (a 503 when
 * the reply came too late, a dropped connection). The browser, still holding its old cookies,
 * must stay signed in; and a copy of a cookie that someone else moved on from must still be
 * caught as theft. Run on MemoryStore, a real redis-server and PostgreSQL; the app clock is fake (Date only).
 */
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Test } from 'tap'
import type { PowOptions, PowStore } from '../lib/index.js'
import { buildApp } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { storeKinds } from './helpers/stores.js'

const SESSION = 'pow_session'
const TOKEN = 'pow_persistent_session'
const GRACE = 1000
const OPTIONS: Partial<PowOptions> = { session: { ttl: 30 * 60_000, renewAfter: 60_000, rotationGrace: GRACE } }

interface Alarms { list: string[] }

async function setup (t: Test, makeStore: (t: Test) => Promise<PowStore>): Promise<{ app: FastifyInstance, alarms: Alarms, tick: (ms: number) => void }> {
  const clock = fakeClock(t, Date.now())
  const app = await buildApp(t, { ...OPTIONS, store: await makeStore(t) })
  const alarms: Alarms = { list: [] }
  app.pow.on('persistent:reuse', () => alarms.list.push('persistent:reuse'))
  app.pow.on('session:reuse', () => alarms.list.push('session:reuse'))
  return { app, alarms, tick: (ms) => { clock.tick(ms) } }
}

/** A request whose answer never reaches the browser: the jar keeps its cookies. */
async function lost (jar: CookieJar, url = '/me'): Promise<LightMyRequestResponse> {
  const cookie = jar.header()
  return await jar.app.inject({ url, headers: cookie === '' ? {} : { cookie } })
}

const cookieOf = (res: LightMyRequestResponse, name: string): string | undefined =>
  (res.cookies as Array<{ name: string, value: string }>).find((c) => c.name === name)?.value

const fingerprintOf = async (jar: CookieJar): Promise<string | undefined> => {
  const res = await jar.request('/me')
  return res.statusCode === 200 ? res.json().metadata.fingerprint : undefined
}

/**
 * A victim, a browser signed in with remember-me, then restarted (its session cookie gone), and a
 * thief holding a copy of its remember-me cookie only: both will sign in with the same token.
 */
async function victimAndThief (app: FastifyInstance): Promise<{ victim: CookieJar, thief: CookieJar }> {
  const victim = new CookieJar(app)
  await victim.request({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })
  const thief = victim.clone()
  thief.delete(SESSION)
  victim.delete(SESSION)
  return { victim, thief }
}

for (const { name, make: makeStore, test } of storeKinds) {
  test(`${name}: a renewal whose answer was lost leaves the browser signed in, past the grace`, async (t) => {
    const { app, alarms, tick } = await setup(t, makeStore)
    const jar = new CookieJar(app)
    await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
    const fingerprint = await fingerprintOf(jar)
    const old = jar.get(SESSION)
    tick(61_000)
    const renewal = await lost(jar)
    t.equal(renewal.statusCode, 200)
    const unseen = cookieOf(renewal, SESSION)
    t.ok(unseen !== undefined && unseen !== old, 'the lost answer carried a new session id')

    t.equal(await fingerprintOf(jar), fingerprint, 'within the grace the old id works')
    t.equal(jar.get(SESSION), old, 'without a new cookie: the renewal may still be on its way')
    tick(GRACE + 1)
    const back = await jar.request('/me')
    t.equal(back.statusCode, 200, 'past the grace the old id still works: nobody used its replacement')
    const renewed = cookieOf(back, SESSION)
    t.ok(renewed !== undefined && renewed !== old && renewed !== unseen, 'and it is renewed again, to another id')
    t.equal(await fingerprintOf(jar), fingerprint, 'the new id works, the same browser')
    t.same(alarms.list, [], 'nothing was taken for theft')
    const sessions = (await jar.request('/sessions')).json().sessions as Array<{ fingerprint: string }>
    t.same(sessions.map((s) => s.fingerprint), [fingerprint], 'one session listed for the browser')

    // Whoever holds the lost answer's cookie now holds a copy of a cookie the browser moved on from.
    const copy = new CookieJar(app)
    copy.set(SESSION, unseen as string)
    const stolen = await copy.request('/me')
    t.equal(stolen.statusCode, 401, 'the superseded id does not sign in')
    t.equal(copy.get(SESSION), undefined, 'and its cookie is cleared')
    t.same(alarms.list, ['session:reuse'], 'it is theft')
    t.equal((await jar.request('/me')).statusCode, 401, 'the fingerprint is revoked, as for a reused remember-me token')
  })

  test(`${name}: once the new id is used, the old one works for the grace only`, async (t) => {
    const { app, alarms, tick } = await setup(t, makeStore)
    const jar = new CookieJar(app)
    await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
    const copy = jar.clone()
    tick(61_000)
    t.ok(cookieOf(await jar.request('/me'), SESSION), 'renewed')
    t.equal((await jar.request('/me')).statusCode, 200, 'the new id is used')
    t.equal((await copy.request('/me')).statusCode, 200, 'the old id works within the grace')
    t.equal(cookieOf(await copy.request('/me'), SESSION), undefined, 'without a cookie')
    tick(GRACE + 1)
    if (name === 'MemoryStore') t.equal((await copy.request('/me')).statusCode, 401, 'past the grace the old id is dead')
    else t.equal(cookieOf(await copy.request('/me'), SESSION), undefined, 'past the grace (on the app clock) it is not renewed again')
    t.equal((await jar.request('/me')).statusCode, 200)
    t.same(alarms.list, [])
  })

  test(`${name}: a remember-me sign-in whose answer was lost leaves the browser signed in, past the grace`, async (t) => {
    const { app, alarms, tick } = await setup(t, makeStore)
    const jar = new CookieJar(app)
    await jar.request({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })
    const fingerprint = await fingerprintOf(jar)
    jar.delete(SESSION) // a browser restart
    const oldToken = jar.get(TOKEN)
    const rotation = await lost(jar)
    t.equal(rotation.statusCode, 200)
    const unseen = { session: cookieOf(rotation, SESSION), token: cookieOf(rotation, TOKEN) }
    t.ok(unseen.session !== undefined && unseen.token !== undefined, 'the lost answer carried a new session and token')

    const inGrace = await jar.request('/me')
    t.equal(inGrace.statusCode, 200, 'within the grace the used token signs in for the request')
    t.equal(cookieOf(inGrace, SESSION), undefined, 'without new cookies')
    tick(GRACE + 1)
    const back = await jar.request('/me')
    t.equal(back.statusCode, 200, 'past the grace the used token still signs in: nobody used its rotation')
    t.equal(back.json().metadata.fingerprint, fingerprint, 'as the same browser')
    t.not(jar.get(TOKEN), oldToken, 'with a new token')
    t.not(jar.get(TOKEN), unseen.token, 'not the lost one')
    t.equal(await fingerprintOf(jar), fingerprint, 'the new session works')
    t.same(alarms.list, [], 'nothing was taken for theft')

    const copy = new CookieJar(app)
    copy.set(TOKEN, unseen.token as string)
    t.equal((await copy.request('/me')).statusCode, 401, 'the superseded token does not sign in')
    t.same(alarms.list, ['persistent:reuse'], 'it is theft')
    t.equal((await jar.request('/me')).statusCode, 401, 'the fingerprint is revoked')
  })

  test(`${name}: a thief who uses a token before its browser claims the rotation is caught when the browser comes back`, async (t) => {
    const { app, alarms, tick } = await setup(t, makeStore)
    const { victim, thief } = await victimAndThief(app)
    t.equal((await victim.request('/me')).statusCode, 200, 'the victim signs in with the token, and gets new cookies')
    tick(GRACE + 1)
    t.equal((await thief.request('/me')).statusCode, 200, 'the thief, before the victim used them, rotates the token again')
    t.same(alarms.list, [])
    t.equal((await victim.request('/me')).statusCode, 401, 'the victim comes back with superseded cookies: theft')
    t.same(alarms.list, ['session:reuse'])
    t.equal((await thief.request('/me')).statusCode, 401, 'and the thief is signed out with the fingerprint')
  })

  test(`${name}: a used and claimed token past the grace is theft, as before`, async (t) => {
    const { app, alarms, tick } = await setup(t, makeStore)
    const { victim, thief } = await victimAndThief(app)
    t.equal((await victim.request('/me')).statusCode, 200)
    t.equal((await victim.request('/me')).statusCode, 200, 'the new session is used')
    tick(GRACE + 1)
    t.equal((await thief.request('/me')).statusCode, 401, 'the old token is dead')
    t.same(alarms.list, ['persistent:reuse'])
    t.equal((await victim.request('/me')).statusCode, 401, 'and its fingerprint revoked')
  })

  test(`${name}: an old token replayed past the grace without its results ever being used is theft the fourth time`, async (t) => {
    const { app, alarms, tick } = await setup(t, makeStore)
    const { victim, thief } = await victimAndThief(app)
    t.equal((await victim.request('/me')).statusCode, 200, 'the victim signs in with the token and goes away')
    const header = thief.header()
    for (let i = 1; i <= 3; i++) {
      tick(GRACE + 1)
      t.equal((await app.inject({ url: '/me', headers: { cookie: header } })).statusCode, 200, `replay ${i} rotates again`)
    }
    t.same(alarms.list, [])
    tick(GRACE + 1)
    t.equal((await app.inject({ url: '/me', headers: { cookie: header } })).statusCode, 401, 'the fourth replay is refused')
    t.same(alarms.list, ['persistent:reuse'], 'as theft')
    t.equal((await victim.request('/me')).statusCode, 401, 'and the fingerprint revoked')
  })

  test(`${name}: an old session id renews again past the grace at most 3 times`, async (t) => {
    const { app, tick } = await setup(t, makeStore)
    const jar = new CookieJar(app)
    await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
    const header = jar.header()
    tick(61_000)
    t.ok(cookieOf(await lost(jar), SESSION), 'renewed; the answer is lost')
    for (let i = 1; i <= 3; i++) {
      tick(GRACE + 1)
      const again = await app.inject({ url: '/me', headers: { cookie: header } })
      t.equal(again.statusCode, 200, `renewed again, ${i}`)
      t.ok(cookieOf(again, SESSION), 'with a new cookie')
    }
    tick(GRACE + 1)
    t.equal((await app.inject({ url: '/me', headers: { cookie: header } })).statusCode, 401, 'then the old id no longer signs in')
  })
}
