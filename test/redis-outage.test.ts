/**
 * Redis outages against a real redis-server (test/helpers/redis.ts): with Redis stalled
 * (CLIENT PAUSE) or stopped, requests that need the store fail fast with a 503
 * POW_ERR_STORE_UNAVAILABLE within a bounded time, no cookie is touched, nothing is written, and
 * once Redis is back the same cookies work. The outage is logged once, not per request.
 *
 * Elapsed times are measured with the real clock on purpose: bounded latency is the point here.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import { test } from 'tap'
import { RedisStore } from '../lib/index.js'
import { buildApp, me, signIn } from './helpers/app.js'
import type { CookieJar } from './helpers/jar.js'
import { assertUnavailable, loggedApp, timed } from './helpers/outage.js'
import { readyClient, startRedis, waitForClosed, waitForReady, type RedisServer } from './helpers/redis.js'

/** Every key of the server with its type and full content (TTLs aside), for before/after comparisons. */
async function contents (admin: Redis): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {}
  for (const key of (await admin.keys('*')).sort()) {
    const type = await admin.type(key)
    if (type === 'string') out[key] = { type, value: await admin.get(key) }
    else if (type === 'hash') out[key] = { type, value: await admin.hgetall(key) }
    else if (type === 'zset') out[key] = { type, value: await admin.zrange(key, 0, '-1', 'WITHSCORES') }
    else out[key] = { type }
  }
  return out
}

test('Redis stalled: a request answers 503 after commandTimeout, and the same cookies work after the stall', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const app = await buildApp(t, { store: new RedisStore(client, { commandTimeout: 300 }) })
  const jar = await signIn(app, 1, { persistent: true })
  t.equal((await me(jar)).status, 200, 'signed in')
  const cookies = jar.header()

  const pausedAt = performance.now()
  await server.pause(1500)
  const { response, ms } = await timed(jar, '/me')
  assertUnavailable(t, response, 'GET /me while Redis is paused')
  t.ok(ms >= 250, `it waited for the stalled command (${ms.toFixed(0)} ms)`)
  t.ok(ms < 1000, `and answered after commandTimeout, well before the 1500 ms pause ended (${ms.toFixed(0)} ms)`)
  t.equal(jar.header(), cookies, 'the browser keeps its cookies')

  // Commands on one connection run in order: this answers once the pause is over.
  await client.ping()
  t.ok(performance.now() - pausedAt >= 1400, 'Redis really was paused')
  const back = await me(jar)
  t.equal(back.status, 200, 'after the stall the same cookies sign in')
  t.same(back.user, { id: 1, name: 'user1' })
})

test('Redis stopped: every request answers 503 at once without touching cookies; after a restart the same cookies work', async (t) => {
  const server = await startRedis(t, { persistence: true })
  const client = await readyClient(server)
  // The default commandTimeout (2 s): failing fast must not depend on it.
  const app = await buildApp(t, { store: new RedisStore(client) })
  const jar = await signIn(app, 1, { persistent: true })
  const first = await me(jar)
  t.equal(first.status, 200, 'signed in')
  const cookies = jar.header()
  const session = jar.get('pow_session')
  const token = jar.get('pow_persistent_session')
  t.ok(session !== undefined && token !== undefined, 'with a session and a remember-me cookie')
  const rememberOnly = jar.clone()
  rememberOnly.delete('pow_session')
  const rememberCookies = rememberOnly.header()

  await server.stop()
  await waitForClosed(client)
  const anonymous = jar.clone()
  anonymous.cookies.clear()
  const attempts: Array<[string, CookieJar, Parameters<CookieJar['request']>[0]]> = [
    ['GET /me', jar, '/me'],
    ['POST /login of a signed-in browser', jar, { method: 'POST', url: '/login', payload: { id: 1, persistent: true } }],
    ['POST /login of a new browser', anonymous, { method: 'POST', url: '/login', payload: { id: 2, persistent: true } }],
    ['POST /logout', jar, { method: 'POST', url: '/logout' }],
    ['a remember-me sign-in (no pow_session)', rememberOnly, '/me'],
    ['GET /me again', jar, '/me']
  ]
  for (const [what, from, request] of attempts) {
    const { response, ms } = await timed(from, request)
    assertUnavailable(t, response, what)
    t.ok(ms < 500, `${what}: answered at once, without waiting for a reconnect (${ms.toFixed(0)} ms)`)
  }
  t.equal(jar.header(), cookies, 'the browser still holds its cookies')
  t.equal(rememberOnly.header(), rememberCookies, 'so does the remember-me-only browser')
  t.equal(anonymous.header(), '', 'and the new browser got none')

  await server.start()
  await waitForReady(client)
  const back = await me(jar)
  t.equal(back.status, 200, 'after the restart the same session cookie signs in')
  t.equal(back.fingerprint, first.fingerprint, 'as the same session')
  t.equal(jar.get('pow_session'), session, 'without a new session id')

  const remembered = await rememberOnly.request('/me')
  t.equal(remembered.statusCode, 200, 'the same remember-me cookie signs in')
  t.same(remembered.json().user, { id: 1, name: 'user1' })
  const set = new Map((remembered.cookies as Array<{ name: string, value: string }>).map((c) => [c.name, c.value]))
  t.ok(set.has('pow_session'), 'with a new session cookie')
  t.ok(set.has('pow_persistent_session') && set.get('pow_persistent_session') !== token, 'and a rotated remember-me token')
  t.equal((await me(rememberOnly)).status, 200, 'the rotated cookies work')
  t.equal((await me(jar)).status, 200, 'and the first browser is still signed in')
})

test('the default commandTimeout bounds a request at 2 s', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const app = await buildApp(t, { store: new RedisStore(client) })
  const jar = await signIn(app, 1)

  const pausedAt = performance.now()
  await server.pause(3000)
  const { response, ms } = await timed(jar, '/me')
  assertUnavailable(t, response, 'GET /me while Redis is paused for 3 s')
  t.ok(ms >= 250, `it waited for the stalled command (${ms.toFixed(0)} ms)`)
  t.ok(ms <= 2500, `and answered within the default commandTimeout (${ms.toFixed(0)} ms)`)

  await client.ping()
  t.ok(performance.now() - pausedAt >= 2900, 'Redis really was paused for the whole request')
  t.equal((await me(jar)).status, 200, 'after the stall the same cookie signs in')
})

test('an outage is logged once when it starts and once when it ends, not per request', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const { app, lines, cookie } = await loggedApp(t, new RedisStore(client))

  await server.stop()
  await waitForClosed(client)
  for (let i = 0; i < 5; i++) {
    const response = await app.inject({ url: '/me', headers: { cookie } })
    t.equal(response.statusCode, 503, `request ${i + 1} during the outage: 503`)
  }
  await server.start()
  await waitForReady(client)
  t.equal((await app.inject({ url: '/me', headers: { cookie } })).statusCode, 200, 'back: 200')

  const fromPow = lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('fastify-pow:'))
  t.same(fromPow.map((l) => l.level), [50, 30], 'fastify-pow logged one error, then one info line')
  const errors = fromPow.filter((l) => l.level === 50)
  t.equal(errors.length, 1, 'exactly one error line from fastify-pow')
  t.match(errors[0]?.msg, /session store/, 'it names the session store')
  t.match(errors[0]?.err?.message, /^Redis connection is /, 'and carries the connection error')
  const infos = fromPow.filter((l) => l.level === 30)
  t.equal(infos.length, 1, 'exactly one info line from fastify-pow')
  t.match(infos[0]?.msg, /answers again/, 'saying the store answers again')
  t.ok(lines.indexOf(errors[0]!) < lines.indexOf(infos[0]!), 'the error comes first')

  // Fastify's default error handler logs every 5xx reply at error level with the error, and the
  // 503 carries the Redis error as its `cause` (serialized as "caused by: ..."), so the
  // connection error itself ends up in one error line per request.
  const mentioningConnection = lines.filter((l) => l.level >= 50 && /Redis connection is/.test(JSON.stringify(l)))
  t.equal(mentioningConnection.length, 1, 'the connection error is in one error-level log line, not one per request')
})

test('nothing is written while Redis is down: the store holds exactly what it held before', async (t) => {
  const server = await startRedis(t, { persistence: true })
  const client = await readyClient(server)
  // The test's own server, so KEYS is fine.
  const admin = await readyClient(server)
  const app = await buildApp(t, { store: new RedisStore(client) })
  const jar = await signIn(app, 1, { persistent: true })
  const rememberOnly = jar.clone()
  rememberOnly.delete('pow_session')
  const before = await contents(admin)
  const size = await admin.dbsize()
  t.ok(size > 0, `the sign-in stored ${size} keys`)

  await server.stop()
  await waitForClosed(client)
  const anonymous = jar.clone()
  anonymous.cookies.clear()
  assertUnavailable(t, await anonymous.request({ method: 'POST', url: '/login', payload: { id: 2, persistent: true } }), 'a login of a new browser')
  assertUnavailable(t, await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } }), 'a login of the signed-in browser')
  assertUnavailable(t, await rememberOnly.request('/me'), 'a remember-me sign-in')
  assertUnavailable(t, await jar.request({ method: 'POST', url: '/logout' }), 'a logout')
  await server.start()
  await waitForReady(admin)
  await waitForReady(client)

  t.equal(await admin.dbsize(), size, 'as many keys as before')
  t.same(await contents(admin), before, 'with the same contents: no half-written session, token or user')
  t.equal((await me(jar)).status, 200, 'and the same session cookie works')
  t.equal((await me(rememberOnly)).status, 200, 'and the same remember-me cookie')
})

/**
 * A store that, when armed, pauses Redis right before its next commit: a stall that begins in the
 * middle of a request, after the device was read and the step decided.
 */
class StallBeforeCommit extends RedisStore {
  stall: (() => Promise<void>) | undefined

  override async commit (...args: Parameters<RedisStore['commit']>): Promise<Awaited<ReturnType<RedisStore['commit']>>> {
    const stall = this.stall
    this.stall = undefined
    if (stall !== undefined) await stall()
    return await super.commit(...args)
  }
}

/** `calls` of each command in INFO commandstats (scripts' own commands included), 0 for one never run. */
async function commandCalls (server: RedisServer): Promise<Record<string, number>> {
  const calls: Record<string, number> = {}
  for (const [, name, n] of (await server.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls[name as string] = Number(n)
  return calls
}

// Every command a commit's script runs to change something.
const WRITES = ['hset', 'hincrby', 'pexpire', 'zadd', 'zrem', 'del']

/** How many more times each command ran in `after` than in `before`, for the commands given. */
function ran (before: Record<string, number>, after: Record<string, number>, names: string[]): Record<string, number> {
  return Object.fromEntries(names.map((name) => [name, (after[name] ?? 0) - (before[name] ?? 0)]))
}

// The two tests below: a commit that RedisStore gave up on after commandTimeout is still in
// Redis' input buffer and runs once the stall ends. The request was answered 503 with its cookies
// untouched, so that late commit must not change what those cookies point at: the script carries
// a deadline on the server's clock and does nothing past it. Had it written, the next request
// would still be signed in (a renewal or rotation whose answer was lost is reissued), so the
// tests look at the device itself: unchanged, and the commands the late script ran.

test('a remember-me sign-in whose commit timed out in a stall leaves the device and the cookie as they were', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const admin = await readyClient(server)
  const store = new StallBeforeCommit(client, { commandTimeout: 300 })
  const app = await buildApp(t, { store, session: { rotationGrace: 1000 } })
  const jar = await signIn(app, 1, { persistent: true })
  const token = jar.get('pow_persistent_session')
  const rememberOnly = jar.clone()
  rememberOnly.delete('pow_session')
  const warnings: string[] = []
  app.pow.on('persistent:reuse', () => warnings.push('persistent:reuse'))
  const before = await contents(admin)
  const callsBefore = await commandCalls(server)

  let stalled = false
  store.stall = async () => {
    stalled = true
    await server.pause(1500)
  }
  const pausedAt = performance.now()
  assertUnavailable(t, await rememberOnly.request('/me'), 'a remember-me sign-in whose commit stalls')
  t.ok(stalled, 'the stall began after the device was read, before the rotation was written')
  t.equal(rememberOnly.get('pow_persistent_session'), token, 'the browser keeps its remember-me cookie')
  await client.ping() // on the same connection: answered once the late commit has run

  t.same(ran(callsBefore, await commandCalls(server), ['evalsha', ...WRITES]), { evalsha: 1, ...Object.fromEntries(WRITES.map((w) => [w, 0])) },
    'the late commit ran, past its deadline, and wrote nothing')
  t.same(await contents(admin), before, 'the device is as it was: its token unused')
  // Past rotationGrace since the request: had the token been used, it would sign in only within it.
  await sleep(Math.max(0, pausedAt + 1300 - performance.now()))

  const back = await rememberOnly.request('/me')
  const set = new Map((back.cookies as Array<{ name: string, value: string }>).map((c) => [c.name, c.value]))
  t.equal(back.statusCode, 200, 'after the stall the same remember-me cookie signs in')
  t.ok(set.has('pow_session'), 'with a new session cookie')
  const rotated = set.get('pow_persistent_session')
  t.ok(rotated !== undefined && rotated !== '' && rotated !== token, 'and a rotated remember-me token')
  t.same(warnings, [], 'no false theft alarm')
  t.equal((await me(jar)).status, 200, 'and the browser\'s session cookie still works')
})

test('a renewal whose commit timed out in a stall is served unrenewed, and leaves the device and the session cookie as they were', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const admin = await readyClient(server)
  const store = new StallBeforeCommit(client, { commandTimeout: 300 })
  const app = await buildApp(t, {
    store,
    session: { ttl: 60_000, renewAfter: 300, rotationGrace: 300 },
    persistentSession: false
  })
  const jar = await signIn(app, 1)
  const cookies = jar.header()
  await sleep(400) // the session id is now due for renewal
  const before = await contents(admin)
  const callsBefore = await commandCalls(server)

  let stalled = false
  store.stall = async () => {
    stalled = true
    await server.pause(1000)
  }
  // The id shown still works: the request is served with it, unrenewed, and no cookie changes.
  const served = await jar.request('/me')
  t.equal(served.statusCode, 200, 'a renewing request whose commit stalls is served with the current id')
  t.equal(served.headers['set-cookie'], undefined, 'and sets no cookie')
  t.ok(stalled, 'the stall began after the device was read, before the renewal was written')
  t.equal(jar.header(), cookies, 'the browser keeps its cookie')
  await client.ping()

  t.same(ran(callsBefore, await commandCalls(server), ['evalsha', ...WRITES]), { evalsha: 1, ...Object.fromEntries(WRITES.map((w) => [w, 0])) },
    'the late commit ran, past its deadline, and wrote nothing')
  t.same(await contents(admin), before, 'the device is as it was: no renewal behind the browser\'s back')
  await sleep(400) // past rotationGrace

  const back = await jar.request('/me')
  t.equal(back.statusCode, 200, 'after the stall the same session cookie signs in')
  t.equal((back.cookies as Array<{ name: string }>).filter((c) => c.name === 'pow_session').length, 1, 'and renews now')
  t.equal((await me(jar)).status, 200, 'the renewed cookie works')
})
