// Round trips to Redis per operation: a small constant, whatever the store holds. Counted at the
// app's own client (each command is one round trip: the store sends no pipeline), on the test's
// own server, by command name, so that a read where a script was expected (or an EVAL after a
// NOSCRIPT) shows.
import { once } from 'node:events'
import type { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { newSecret, randomFingerprint, userBucket } from '../lib/crypto.js'
import { deviceWrite } from '../lib/devices.js'
import { type Device, signIn as lifecycleSignIn } from '../lib/lifecycle.js'
import { RedisStore } from '../lib/index.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { startRedis } from './helpers/redis.js'

const MINUTE = 60_000
const SESSION = 'pow_session'
const TOKEN = 'pow_persistent_session'

type Counts = Record<string, number>

/**
 * Counts the commands the client sends, by name. TIME (the store's clock check, once a minute
 * before a write) is kept apart: when it falls depends on the real clock, not on the operation.
 */
function countCommands (client: Redis): { take: () => Counts, time: () => number } {
  let sent: Counts = {}
  let time = 0
  const original = client.sendCommand.bind(client)
  client.sendCommand = ((command: Parameters<Redis['sendCommand']>[0], stream?: Parameters<Redis['sendCommand']>[1]) => {
    if (command.name === 'time') time++
    else sent[command.name] = (sent[command.name] ?? 0) + 1
    return original(command, stream)
  }) as Redis['sendCommand']
  return {
    take: () => {
      const taken = sent
      sent = {}
      return taken
    },
    time: () => time
  }
}

const cookiesSet = (response: { cookies: unknown }): string[] =>
  (response.cookies as Array<{ name: string, value: string }>).filter((c) => c.value !== '').map((c) => c.name).sort()

interface Measured {
  counts: Record<string, Counts>
  /** How many devices GET /sessions listed, and DELETE /sessions ended, in the measured flow. */
  listed: number
  revoked: number
}

async function measure (t: Test, sessionsOfUser: number, otherUsers: number): Promise<Measured> {
  const clock = fakeClock(t)
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const counter = countCommands(client)
  const started = performance.now()
  const store = new RedisStore(client)
  // Room for every filler device: a sign-in must not evict them before they are listed.
  const app = await buildApp(t, { store, maxDevices: 10_000 })
  const rules = app.pow.config.rules

  // Devices as a sign-in makes them, written straight through the store, one commit per user.
  const fill = async (userKey: string, n: number): Promise<void> => {
    if (n <= 0) return
    const now = Date.now()
    const bucket = userBucket(userKey)
    const writes = Array.from({ length: n }, (_, i) => {
      const fingerprint = randomFingerprint()
      const step = lifecycleSignIn(userKey, fingerprint, { i }, { session: true, token: i % 2 === 0 }, now, rules, () => newSecret(bucket, fingerprint))
      return deviceWrite(step.device as Device, 0, now, rules)
    })
    const { ok } = await store.commit({ userKey, devices: writes, user: JSON.stringify({ id: Number(userKey), name: `user${userKey}` }) })
    if (!ok) throw new Error('the filler commit was refused')
  }
  for (let u = 0; u < otherUsers; u++) await fill(String(1000 + u), 1)

  const flow = async (): Promise<Measured> => {
    // Browsers set up before the counting starts.
    const remembered = await signIn(app, 1, { persistent: true })
    remembered.delete(SESSION) // a browser restart: the remember-me cookie is left
    const other = await signIn(app, 1)
    const otherFingerprint = (await me(other)).fingerprint as string
    const again = await signIn(app, 1)
    const switching = await signIn(app, 2)
    const browser = await signIn(app, 1, { persistent: true })
    // User 3's browser is left alone until its session idles out; its token still works.
    const idle = await signIn(app, 3, { persistent: true })

    const counts: Record<string, Counts> = {}
    counter.take()
    const run = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
      const result = await fn()
      counts[name] = counter.take()
      return result
    }
    await run('anonymous', async () => await app.inject('/me'))
    await run('login', async () => await signIn(app, 1))
    await run('loginRemembered', async () => await signIn(app, 1, { persistent: true }))
    await run('loginAgain', async () => await again.request({ method: 'POST', url: '/login', payload: { id: 1 } }))
    await run('loginAsAnotherUser', async () => await switching.request({ method: 'POST', url: '/login', payload: { id: 1 } }))
    await run('firstRequest', async () => await me(browser))
    const authenticated = await run('authenticated', async () => await browser.request('/me'))
    // The remember-me cookie is not set again on every request: only when its token changes or its expiry moves.
    t.same(authenticated.cookies, [], 'an authenticated request of a remembered browser sets no cookie')
    const sessions = await run('sessions', async () => await browser.request('/sessions'))
    const rotation = await run('rememberMeSignIn', async () => await remembered.request('/me'))
    t.same(cookiesSet(rotation), [TOKEN, SESSION].sort(), 'the remember-me sign-in rotated')
    await run('rememberMeClaim', async () => await me(remembered))
    await run('rememberMeAfterClaim', async () => await me(remembered))
    await run('revokeOne', async () => await browser.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(otherFingerprint)}` }))
    clock.tick(16 * MINUTE)
    const renewal = await run('renewal', async () => await browser.request('/me'))
    t.same(cookiesSet(renewal), [TOKEN, SESSION].sort(), 'the renewal set a new session id, and the token again (its expiry moved)')
    const claim = await run('renewedClaim', async () => await browser.request('/me'))
    t.same(claim.cookies, [], 'the claim sets no cookie')
    await run('renewedAfterClaim', async () => await me(browser))
    const deleted = await run('deleteOthers', async () => await browser.request({ method: 'DELETE', url: '/sessions' }))
    await run('logout', async () => await browser.request({ method: 'POST', url: '/logout' }))
    clock.tick(15 * MINUTE) // 31 minutes since user 3's sign-in: its session idled out
    const idleSignIn = await run('rememberMeWithIdleSession', async () => await idle.request('/me'))
    t.equal(idleSignIn.statusCode, 200, 'the idle browser signs in with its token')
    t.same(cookiesSet(idleSignIn), [TOKEN, SESSION].sort(), 'rotating it')

    t.equal((await me(browser)).status, 401, 'the flow really ran')
    return { counts, listed: sessions.json().sessions.length, revoked: deleted.json().revoked.length }
  }
  // The first flow loads the scripts into Redis (an EVALSHA answered NOSCRIPT, then EVAL) and
  // ends with all of user 1's devices revoked; then the user gets its filler devices, and the
  // second flow, which lists and revokes them, is measured.
  await flow()
  await fill('1', sessionsOfUser - 1)
  const measured = await flow()

  // The clock check: at least once (the first write), and no more than once a minute since.
  const minutes = (performance.now() - started) / MINUTE
  t.ok(counter.time() >= 1 && counter.time() <= 1 + Math.floor(minutes),
    `TIME sent ${counter.time()} times in ${(minutes * 60).toFixed(1)} s: once a minute at most`)
  return measured
}

test('round trips per operation on RedisStore are small constants, whatever the store holds', async (t) => {
  let few!: Measured
  let many!: Measured
  await t.test('1 device of the user', async (t) => { few = await measure(t, 1, 0) })
  await t.test('200 devices of the user, 1000 other users', async (t) => { many = await measure(t, 200, 1000) })

  t.same(few.counts, {
    anonymous: {}, // no cookie, no store
    login: { evalsha: 1 }, // one commit: the new device, the user's credentials, the limit
    loginRemembered: { evalsha: 1 }, // the same commit carries the token
    loginAgain: { hmget: 1, evalsha: 1 }, // the authentication's read; the old device ends in the sign-in's commit
    loginAsAnotherUser: { hmget: 1, evalsha: 2 }, // the other user's device ends in a commit of its own (its own slot)
    firstRequest: { hmget: 1 }, // one HMGET reads the device and the user
    authenticated: { hmget: 1 },
    sessions: { hmget: 1, evalsha: 1 }, // the authentication, then the list script
    rememberMeSignIn: { hmget: 1, evalsha: 1 }, // no session cookie: the token's device, then the rotation's commit
    rememberMeClaim: { hmget: 1, evalsha: 1 }, // the first request showing the new session id claims it
    rememberMeAfterClaim: { hmget: 1 },
    revokeOne: { hmget: 2, evalsha: 1 }, // the authentication, the read of the other device, its delete
    renewal: { hmget: 1, evalsha: 1 }, // the read, one commit: new id, the old one retired, the token's expiry moved
    renewedClaim: { hmget: 1, evalsha: 1 }, // the first request showing the renewed id claims it
    renewedAfterClaim: { hmget: 1 },
    deleteOthers: { hmget: 1, evalsha: 2 }, // the authentication, the list script, one commit deleting them all
    logout: { hmget: 1, evalsha: 1 }, // one commit for the one device the cookies named
    rememberMeWithIdleSession: { hmget: 2, evalsha: 1 } // the session's device, the token's device, the rotation
  }, 'the expected commands per operation')
  t.same(many.counts, few.counts, 'the same with 200 devices of the user and 1000 other users')
  // The flow's seven devices of user 1 (the browsers set up, the two logins, the two re-logins)
  // are listed; DELETE /sessions ends all but the browser itself and the one revoked before.
  t.same([few.listed, few.revoked], [7, 5], 'the flow\'s own devices are listed, then ended')
  t.same([many.listed, many.revoked], [206, 204], 'with the 199 filler devices: all listed by one script, all ended by one commit')
})
