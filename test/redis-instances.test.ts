// Two app instances (A and B), each with its own ioredis client and RedisStore, on ONE real
// redis-server: what one instance does to a device, the other sees on its next request.
//
// There are no locks: every write of a device is a commit under the version that was read, so
// when both instances write one device at once, the later commit finds the version moved, writes
// nothing, and its request reads and decides again (docs/sessions.md, "Parallel requests and many
// instances"). The races below hold one of A's store calls (a read or a commit) while B acts.
//
// The fake clock moves Date only, in this process, so both instances share it; Redis key TTLs
// run on real time. Fake advances stay well below the real TTLs that matter (a session's 30 min,
// a token's 30 days); the store's scores all come from the shared fake Date.now().
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { hashSecret, randomFingerprint, secretDevice, userBucket } from '../lib/crypto.js'
import type { PowOptions, PowStore, RedisStore, StoredDevice } from '../lib/index.js'
import type { Device } from '../lib/lifecycle.js'
import { STORE_METHODS } from '../lib/options.js'
import { buildApp, me, recordingStore, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { twoClients } from './helpers/redis.js'

const MINUTE = 60_000
const SESSION = 'pow_session'
const TOKEN = 'pow_persistent_session'

interface Instances {
  a: FastifyInstance
  b: FastifyInstance
  storeA: RedisStore
  storeB: RedisStore
  clientA: Redis
  clientB: Redis
}

/** One redis-server; instances A and B each with their own client and store on it. */
async function twoInstances (t: Test, options: Partial<PowOptions> = {}, wrapA?: (store: RedisStore) => PowStore): Promise<Instances> {
  const { clientA, clientB, storeA, storeB } = await twoClients(t)
  const a = await buildApp(t, { ...options, store: wrapA === undefined ? storeA : wrapA(storeA) })
  const b = await buildApp(t, { ...options, store: storeB })
  return { a, b, storeA, storeB, clientA, clientB }
}

/** The same browser (the same cookies, shared) talking to another instance, as behind a load balancer. */
function via (app: FastifyInstance, jar: CookieJar): CookieJar {
  const other = new CookieJar(app)
  other.cookies = jar.cookies
  return other
}

/** A copy of the jar's cookies for `app`, as a copied cookie file would be. */
function copy (app: FastifyInstance, jar: CookieJar): CookieJar {
  return via(app, jar.clone())
}

/** A copy of the jar's cookies without the session cookie: the browser's remember-me token only. */
function tokenOnly (app: FastifyInstance, jar: CookieJar): CookieJar {
  const other = copy(app, jar)
  other.delete(SESSION)
  return other
}

type HeldMethod = 'read' | 'commit'

interface Held {
  store: PowStore
  /** A's store calls, in the order they went to Redis (a held call once released). */
  calls: string[]
  /** Holds the next call of the method. */
  arm: () => void
  /** Resolves once that call is being held. */
  entered: Promise<void>
  release: () => void
}

/**
 * A store over `store` whose `method` holds its next call, once armed, until `release()`: a
 * request on that instance that is slow on the network, so another instance can act in between.
 * Holding `read`: the request has not seen the device yet. Holding `commit`: it has read the
 * device and decided; its write, under the version it read, waits.
 */
function holdNext (store: PowStore, method: HeldMethod): Held {
  const recorded = recordingStore(store)
  const held: Record<string, unknown> = {}
  for (const name of STORE_METHODS) held[name] = (recorded[name] as (...a: unknown[]) => Promise<unknown>).bind(recorded)
  let armed = false
  let enter!: () => void
  let release!: () => void
  const entered = new Promise<void>((resolve) => { enter = resolve })
  const released = new Promise<void>((resolve) => { release = resolve })
  held[method] = async (...args: unknown[]) => {
    if (armed) {
      armed = false
      enter()
      await released
    }
    return await (recorded[method] as (...a: unknown[]) => Promise<unknown>).apply(recorded, args)
  }
  return {
    store: held as unknown as PowStore,
    calls: recorded.calls,
    arm: () => { armed = true },
    entered,
    release: () => release()
  }
}

function cookieNames (response: LightMyRequestResponse): string[] {
  return (response.cookies as Array<{ name: string }>).map((c) => c.name).sort()
}

function setCookie (response: LightMyRequestResponse, name: string): { name: string, value: string } | undefined {
  return (response.cookies as Array<{ name: string, value: string }>).find((c) => c.name === name)
}

/** The secret a signed cookie value holds. */
function secretOf (value: string): string {
  return value.split('.')[0] as string
}

/** The device a session or remember-me cookie value names, as Redis holds it (with its version), or null. */
async function deviceOf (store: PowStore, value: string): Promise<(Device & { version: number }) | null> {
  const { bucket, fingerprint } = secretDevice(secretOf(value))
  const stored = await store.read(bucket, fingerprint)
  return stored === null ? null : { ...JSON.parse(stored.data) as Device, fingerprint, version: stored.version }
}

test('the two instances use their own connections to the same server', async (t) => {
  const { a, b, storeA, storeB, clientA } = await twoInstances(t)
  t.equal(a.pow.rawStore, storeA, 'A uses store A')
  t.equal(b.pow.rawStore, storeB, 'B uses store B')
  const names = String(await clientA.client('LIST')).split('\n').map((line) => /\bname=(\S*)/.exec(line)?.[1])
  t.ok(names.includes('instance-a') && names.includes('instance-b'), 'two connections, one per instance')

  const fingerprint = randomFingerprint()
  const write = (version: number, data: string): Parameters<PowStore['commit']>[0] => ({
    userKey: 'probe', user: '{}', devices: [{ fingerprint, version, data, ttl: 10_000, usedAt: Date.now() }]
  })
  t.same(await storeA.commit(write(0, '"a"')), { ok: true, evicted: [] }, 'A creates a device')
  const seen = await storeB.read(userBucket('probe'), fingerprint) as StoredDevice
  t.same(seen, { data: '"a"', user: '{}', version: 1 }, 'B reads it: same server')
  t.same(await storeB.commit(write(0, '"b"')), { ok: false, evicted: [] }, 'B cannot create it again')
  t.same(await storeB.commit(write(seen.version, '"b"')), { ok: true, evicted: [] }, 'B writes it under the version it read')
  t.same(await storeA.commit(write(seen.version, '"a2"')), { ok: false, evicted: [] }, 'A\'s write under that version is refused: B moved it')
  t.same(await storeA.read(userBucket('probe'), fingerprint), { data: '"b"', user: '{}', version: 2 }, 'A reads what B wrote')
})

test('a login on A is signed in on B', async (t) => {
  const { a, b } = await twoInstances(t)
  const jar = await signIn(a, 1, { metadata: { device: 'laptop' } })
  const onA = await me(jar)
  t.equal(onA.status, 200)

  const onB = await via(b, jar).request('/me')
  t.equal(onB.statusCode, 200, 'A\'s cookies sign in on B')
  t.same(onB.json().user, { id: 1, name: 'user1' }, 'the same user')
  t.equal(onB.json().metadata.fingerprint, onA.fingerprint, 'the same browser')
  t.equal(onB.json().metadata.device, 'laptop', 'with the metadata stored on A')
  t.same(onB.cookies, [], 'B changes no cookie')

  const sessions = (await via(b, jar).request('/sessions')).json().sessions
  t.equal(sessions.length, 1, 'B lists the session made on A')
  t.equal(sessions[0].fingerprint, onA.fingerprint)
  t.equal(sessions[0].current, true)

  // And the other way round, with another user.
  const other = await signIn(b, 2)
  const otherOnA = await me(via(a, other))
  t.equal(otherOnA.status, 200, 'a login on B is signed in on A')
  t.same(otherOnA.user, { id: 2, name: 'user2' })

  t.equal((await me(new CookieJar(b))).status, 401, 'a browser without cookies is anonymous on B')
})

test('a logout on B is seen by A at once', async (t) => {
  const { a, b } = await twoInstances(t)
  const jar = await signIn(a, 1, { persistent: true })
  const copied = copy(a, jar)
  const copiedToken = tokenOnly(a, jar)
  t.equal((await me(via(b, jar))).status, 200, 'signed in on B before the logout')

  const logout = await via(b, jar).request({ method: 'POST', url: '/logout' })
  t.equal(logout.statusCode, 204)
  t.same(cookieNames(logout), [TOKEN, SESSION].sort(), 'B clears both cookies')

  t.equal((await me(copied)).status, 401, 'A: the cookies copied before the logout are signed out')
  t.equal((await me(copiedToken)).status, 401, 'A: the remember-me token copied before the logout is dead')
  t.equal((await me(copy(b, copied))).status, 401, 'B too')
})

test('a session revoked on B is revoked on A at once, remember-me token included', async (t) => {
  const { a, b } = await twoInstances(t)
  const laptop = await signIn(a, 1, { persistent: true })
  const phone = await signIn(b, 1)
  const laptopFingerprint = (await me(laptop)).fingerprint as string
  const laptopCopy = copy(a, laptop)
  const laptopToken = tokenOnly(a, laptop)
  t.equal((await me(laptopCopy)).status, 200, 'the laptop is signed in on A')

  const listed = (await phone.request('/sessions')).json().sessions as Array<{ fingerprint: string, current: boolean }>
  t.same(listed.map((s) => s.fingerprint).sort(), [laptopFingerprint, (await me(phone)).fingerprint].sort(),
    'B lists the laptop session made on A')
  const revoke = await phone.request({ method: 'DELETE', url: `/sessions/${laptopFingerprint}` })
  t.equal(revoke.statusCode, 204)

  t.equal((await me(laptopToken)).status, 401, 'A: the revoked laptop\'s remember-me token is dead')
  t.equal((await me(laptop)).status, 401, 'A: the revoked laptop is signed out')
  t.equal(laptop.get(TOKEN), undefined, 'and its remember-me cookie is cleared')
  t.equal((await me(laptopCopy)).status, 401, 'A: a copy of its cookies too')
  t.equal((await me(via(a, phone))).status, 200, 'the phone stays signed in on A')
  t.equal((await me(phone)).status, 200, 'and on B')
})

test('parallel stale requests split across A and B: one renewal, no 401', async (t) => {
  const clock = fakeClock(t, Date.now())
  const { a, b, storeA, storeB } = await twoInstances(t)
  const jar = await signIn(a, 1)
  const fingerprint = (await me(jar)).fingerprint
  const oldSid = jar.get(SESSION) as string
  t.equal((await deviceOf(storeA, oldSid))?.version, 1, 'the device as the sign-in wrote it')

  // Past renewAfter (15 min) in app time; the session's real Redis TTL (30 min) is still running.
  clock.tick(16 * MINUTE)
  const header = jar.header()
  const responses = await Promise.all(Array.from({ length: 10 }, (_, i) =>
    (i % 2 === 0 ? a : b).inject({ url: '/me', headers: { cookie: header } })))

  t.same(responses.map((r) => r.statusCode), Array(10).fill(200), 'no request sees a 401 (nor a 503: no request ran out of attempts)')
  t.same(responses.map((r) => r.json().metadata.fingerprint), Array(10).fill(fingerprint), 'all as the same browser')
  const renewed = responses.filter((r) => setCookie(r, SESSION) !== undefined)
  t.equal(renewed.length, 1, 'exactly one response, on either instance, carries a new session id')
  const winner = renewed[0]
  if (winner === undefined) return
  jar.store(winner)
  const newSid = jar.get(SESSION) as string
  t.not(newSid, oldSid)

  const device = await deviceOf(storeB, newSid) as Device & { version: number }
  t.equal(device.version, 2, 'one write after the sign-in: the losers\' commits wrote nothing')
  t.equal(device.session?.hash, hashSecret(secretOf(newSid)), 'the device\'s one current id is the one the winner set')
  t.same(device.retired.map((r) => [r.kind, r.hash]), [['session', hashSecret(secretOf(oldSid))]], 'the old id retired once, nothing else')

  const sessions = (await via(b, jar).request('/sessions')).json().sessions as Array<{ fingerprint: string }>
  t.same(sessions.map((s) => s.fingerprint), [fingerprint], 'one device for the fingerprint')
  t.same((await storeA.list('1')).map((d) => d.fingerprint), [fingerprint], 'A\'s store lists one device')
  t.same((await storeB.list('1')).map((d) => d.fingerprint), [fingerprint], 'B\'s store sees the same')

  for (const app of [a, b]) {
    const again = await via(app, jar).request('/me')
    t.equal(again.statusCode, 200, 'the new id works on both instances')
    t.same(again.cookies, [], 'without another renewal')
  }
})

test('parallel remember-me sign-ins split across A and B: one rotation, no 401', async (t) => {
  const { a, b, storeA } = await twoInstances(t)
  const jar = await signIn(a, 1, { persistent: true })
  const fingerprint = (await me(jar)).fingerprint
  const oldToken = jar.get(TOKEN) as string
  jar.delete(SESSION)
  const header = jar.header()

  const responses = await Promise.all(Array.from({ length: 6 }, (_, i) =>
    (i % 2 === 0 ? a : b).inject({ url: '/me', headers: { cookie: header } })))
  t.same(responses.map((r) => r.statusCode), Array(6).fill(200), 'no request sees a 401')
  t.same(responses.map((r) => r.json().metadata?.fingerprint), Array(6).fill(fingerprint), 'all as the same browser')
  const rotated = responses.filter((r) => setCookie(r, TOKEN) !== undefined)
  t.equal(rotated.length, 1, 'exactly one response rotates the token')
  t.equal(responses.filter((r) => setCookie(r, SESSION) !== undefined).length, 1, 'and signs in with a new session id')
  t.same(responses.filter((r) => r.cookies.length === 0).length, 5, 'the others are signed in for their request only: no cookie')
  const winner = rotated[0]
  if (winner === undefined) return

  const device = await deviceOf(storeA, oldToken) as Device & { version: number }
  t.equal(device.version, 2, 'one write after the sign-in')
  t.equal(device.token?.hash, hashSecret(secretOf((setCookie(winner, TOKEN) as { value: string }).value)), 'the one current token is the rotation\'s')
  t.equal(device.session?.hash, hashSecret(secretOf((setCookie(winner, SESSION) as { value: string }).value)), 'and so is the session id')
  t.same(device.retired.filter((r) => r.kind === 'token').map((r) => r.hash), [hashSecret(secretOf(oldToken))], 'the old token used once')
  t.same((await storeA.list('1')).map((d) => d.fingerprint), [fingerprint], 'one device for the fingerprint')
})

test('a remember-me token used on A is dead on B after the grace, and its device revoked', async (t) => {
  const clock = fakeClock(t, Date.now())
  const { a, b, storeA } = await twoInstances(t, { session: { rotationGrace: 1000 } })
  const alarms: string[] = []
  for (const [name, app] of [['A', a], ['B', b]] as const) {
    app.pow.on('persistent:reuse', () => alarms.push(`${name} persistent:reuse`))
    app.pow.on('session:deleted', (event) => alarms.push(`${name} session:deleted ${String(event.reason)}`))
  }
  const other = await signIn(b, 1)
  const otherFingerprint = (await me(other)).fingerprint
  const jar = await signIn(a, 1, { persistent: true })
  const fingerprint = (await me(jar)).fingerprint
  jar.delete(SESSION)
  const oldToken = jar.get(TOKEN) as string

  const used = await jar.request('/me')
  t.equal(used.statusCode, 200, 'A: the token signs the browser in')
  t.equal(used.json().metadata.fingerprint, fingerprint)
  t.same(cookieNames(used), [TOKEN, SESSION].sort(), 'with a new session id and a new token')
  t.not(jar.get(TOKEN), oldToken, 'the token was rotated')

  const thief = new CookieJar(b)
  thief.set(TOKEN, oldToken)
  clock.tick(500)
  const inGrace = await thief.request('/me')
  t.equal(inGrace.statusCode, 200, 'B: the used token still signs in within the grace')
  t.equal(inGrace.json().metadata.fingerprint, fingerprint)
  t.same(inGrace.cookies, [], 'without new cookies')
  t.equal((await me(copy(b, jar))).status, 200, 'B: the new cookies work (and claim the rotation)')
  t.same(alarms, [], 'no alarm so far')

  clock.tick(600)
  const afterGrace = await thief.request('/me')
  t.equal(afterGrace.statusCode, 401, 'B: the used token is dead after the grace')
  t.equal(thief.get(TOKEN), undefined, 'and its cookie cleared')
  t.same(alarms, ['B persistent:reuse', 'B session:deleted theft'], 'B: a used token whose rotation was claimed came back: theft')
  t.equal(await deviceOf(storeA, oldToken), null, 'the device is gone from Redis')

  t.equal((await me(copy(a, jar))).status, 401, 'A: the legitimate browser\'s new cookies are revoked')
  t.equal((await me(copy(b, jar))).status, 401, 'B: also')
  t.equal((await me(tokenOnly(a, jar))).status, 401, 'A: its new remember-me token too')
  t.equal((await me(tokenOnly(b, jar))).status, 401, 'B: also')
  const others = (await via(a, other).request('/sessions')).json().sessions as Array<{ fingerprint: string }>
  t.same(others.map((s) => s.fingerprint), [otherFingerprint], 'only the stolen device was revoked')
})

test('an update on A is seen by the user\'s sessions on B', async (t) => {
  const { a, b } = await twoInstances(t)
  const laptop = await signIn(a, 1)
  const phone = await signIn(b, 1, { persistent: true })
  const phoneToken = tokenOnly(a, phone)
  t.same((await me(phone)).user, { id: 1, name: 'user1' }, 'before the update')

  const patched = await laptop.request({ method: 'PATCH', url: '/me', payload: { name: 'Alice' } })
  t.equal(patched.statusCode, 200)
  t.same((await me(phone)).user, { id: 1, name: 'Alice' }, 'B: another session of the user sees the new name')
  t.same((await me(via(b, laptop))).user, { id: 1, name: 'Alice' }, 'B: the updating session too')
  const fromToken = await phoneToken.request('/me')
  t.equal(fromToken.statusCode, 200)
  t.same(fromToken.json().user, { id: 1, name: 'Alice' }, 'A: a sign-in with the remember-me token made on B too')

  const stranger = await signIn(b, 2)
  t.same((await me(stranger)).user, { id: 2, name: 'user2' }, 'another user is untouched')
})

test('deleteOtherSessions on A ends the sessions made on B', async (t) => {
  const { a, b } = await twoInstances(t)
  const laptop = await signIn(a, 1)
  const phone = await signIn(b, 1)
  const tablet = await signIn(b, 1, { persistent: true })
  const stranger = await signIn(b, 2)
  const laptopFingerprint = (await me(laptop)).fingerprint
  const phoneFingerprint = (await me(phone)).fingerprint as string
  const tabletFingerprint = (await me(tablet)).fingerprint as string
  const tabletToken = tokenOnly(b, tablet)

  const response = await laptop.request({ method: 'DELETE', url: '/sessions' })
  t.equal(response.statusCode, 200)
  t.same(response.json().revoked.sort(), [phoneFingerprint, tabletFingerprint].sort(), 'A ends the two browsers signed in on B')

  t.equal((await me(phone)).status, 401, 'B: the phone is signed out')
  t.equal((await me(via(a, phone))).status, 401, 'A: also')
  t.equal((await me(tabletToken)).status, 401, 'B: the tablet\'s remember-me token is dead')
  t.equal((await me(tablet)).status, 401, 'B: the tablet is signed out')
  t.equal((await me(laptop)).status, 200, 'A: the laptop stays signed in')
  t.equal((await me(via(b, laptop))).status, 200, 'B: also')
  t.equal((await me(stranger)).status, 200, 'another user is untouched')
  const sessions = (await via(b, laptop).request('/sessions')).json().sessions as Array<{ fingerprint: string, current: boolean }>
  t.same(sessions.map((s) => [s.fingerprint, s.current]), [[laptopFingerprint, true]], 'B lists the laptop only')
})

// Races between instances: a request on A has read the device (or is about to) when B acts on
// it; what A does next must not bring a revoked browser back ("a revoked device cannot come
// back", README), must not leave two current ids, and must not sign an honest browser out.

/** {@link twoInstances}, with A's store call `method` held on demand ({@link holdNext}). */
async function twoInstancesHolding (t: Test, method: HeldMethod): Promise<Instances & { held: Held }> {
  let held!: Held
  const instances = await twoInstances(t, {}, (store) => { held = holdNext(store, method); return held.store })
  return { ...instances, held }
}

/**
 * The laptop's next request (GET /me) on A, held in A's store call, while the phone revokes the
 * laptop on B; then the held call goes on. Returns the laptop's answer, and A's store calls made
 * for it.
 */
async function revokeWhileHeld (t: Test, held: Held, laptop: CookieJar, phone: CookieJar, laptopFingerprint: string): Promise<{ answer: LightMyRequestResponse, calls: string[] }> {
  held.arm()
  held.calls.length = 0
  const inFlight = laptop.request('/me')
  await held.entered
  const revoke = await phone.request({ method: 'DELETE', url: `/sessions/${laptopFingerprint}` })
  t.equal(revoke.statusCode, 204, 'B revokes the laptop')
  held.release()
  const answer = await inFlight
  return { answer, calls: [...held.calls] }
}

/** The phone's GET /sessions no longer lists the laptop. */
async function notListed (t: Test, phone: CookieJar, laptopFingerprint: string): Promise<void> {
  const sessions = (await phone.request('/sessions')).json().sessions as Array<{ fingerprint: string }>
  t.notOk(sessions.some((s) => s.fingerprint === laptopFingerprint), 'B no longer lists the laptop')
}

test('a browser revoked on B while its renewal is in flight on A stays signed out', async (t) => {
  const clock = fakeClock(t, Date.now())
  const { a, b, storeB, held } = await twoInstancesHolding(t, 'commit')
  const laptop = await signIn(a, 1)
  const laptopFingerprint = (await me(laptop)).fingerprint as string
  const cookie = laptop.get(SESSION) as string
  clock.tick(10 * MINUTE)
  const phone = await signIn(b, 1)
  clock.tick(6 * MINUTE) // the laptop's session id is due for renewal, the phone's is not

  // On A, the laptop's request has read the device and decided to renew; its commit waits.
  const { answer, calls } = await revokeWhileHeld(t, held, laptop, phone, laptopFingerprint)
  t.equal(answer.statusCode, 401, 'A: the renewal finds no device: anonymous')
  t.same(answer.cookies, [], 'A: no new session id')
  t.same(calls, ['read', 'commit', 'read'], 'A: its commit, under the version it read, wrote nothing; it read again and found no device')
  t.equal(await deviceOf(storeB, cookie), null, 'the device was not written back')

  t.equal((await me(laptop)).status, 401, 'A: the revoked laptop is signed out after its in-flight request')
  t.equal((await me(copy(b, laptop))).status, 401, 'B: also')
  await notListed(t, phone, laptopFingerprint)
})

test('a browser revoked on B while its remember-me sign-in is in flight on A stays signed out', async (t) => {
  const { a, b, storeB, held } = await twoInstancesHolding(t, 'read')
  const laptop = await signIn(a, 1, { persistent: true })
  const laptopFingerprint = (await me(laptop)).fingerprint as string
  const token = laptop.get(TOKEN) as string
  const phone = await signIn(b, 1)
  laptop.delete(SESSION) // the browser was closed: only its remember-me token is left

  // On A, the laptop's request is about to read the token's device.
  const { answer, calls } = await revokeWhileHeld(t, held, laptop, phone, laptopFingerprint)
  t.equal(answer.statusCode, 401, 'A: the revoked token signs nobody in')
  t.same(answer.cookies.map((c) => [c.name, c.value]), [[TOKEN, '']], 'A: and its cookie is cleared')
  t.same(calls, ['read'], 'A: one read, no device, no write')
  t.equal(await deviceOf(storeB, token), null, 'the device stays gone')

  t.equal((await me(laptop)).status, 401, 'A: the revoked laptop stays signed out')
  await notListed(t, phone, laptopFingerprint)
})

test('a browser revoked on B between the read of its remember-me token on A and its use stays signed out', async (t) => {
  const { a, b, storeB, held } = await twoInstancesHolding(t, 'commit')
  const laptop = await signIn(a, 1, { persistent: true })
  const laptopFingerprint = (await me(laptop)).fingerprint as string
  const token = laptop.get(TOKEN) as string
  const phone = await signIn(b, 1)
  laptop.delete(SESSION) // the browser was closed: only its remember-me token is left
  const closed = copy(a, laptop)

  // On A, the laptop's request has read the token and decided to rotate it; its commit waits.
  const { answer, calls } = await revokeWhileHeld(t, held, laptop, phone, laptopFingerprint)
  t.equal(answer.statusCode, 401, 'A: the rotation finds no device: anonymous')
  t.same(answer.cookies.map((c) => [c.name, c.value]), [[TOKEN, '']], 'A: no new session id or token; the token cookie is cleared')
  t.same(calls, ['read', 'commit', 'read'], 'A: its commit wrote nothing; it read again and found no device')
  t.equal(await deviceOf(storeB, token), null, 'the device was not written back')

  t.equal((await me(copy(a, closed))).status, 401, 'A: the revoked laptop stays signed out')
  t.equal((await me(tokenOnly(b, closed))).status, 401, 'B: its token is dead')
  await notListed(t, phone, laptopFingerprint)
})

test('an update on B while a remember-me sign-in is in flight on A is not lost', async (t) => {
  const { a, b, held } = await twoInstancesHolding(t, 'commit')
  const laptop = await signIn(a, 1, { persistent: true })
  const phone = await signIn(b, 1)
  laptop.delete(SESSION)

  held.arm()
  held.calls.length = 0
  const inFlight = laptop.request('/me') // on A: has read the device (with the user as it was) and decided to rotate
  await held.entered
  const patched = await phone.request({ method: 'PATCH', url: '/me', payload: { name: 'Alice' } })
  t.equal(patched.statusCode, 200, 'B renames the user')
  held.release()
  const answer = await inFlight
  t.equal(answer.statusCode, 200, 'A: the token signs the laptop in')
  t.same(cookieNames(answer), [TOKEN, SESSION].sort(), 'A: rotating it')
  t.same(held.calls, ['read', 'commit'], 'A: its commit went through: new credentials do not move a device\'s version')

  t.same((await me(phone)).user, { id: 1, name: 'Alice' }, 'B: the phone still sees the new name')
  t.same((await me(laptop)).user, { id: 1, name: 'Alice' }, 'A: the laptop sees the new name: A\'s commit kept the credentials B wrote')
  t.same((await me(tokenOnly(b, laptop))).user, { id: 1, name: 'Alice' }, 'B: a sign-in with the laptop\'s new token too')
})
