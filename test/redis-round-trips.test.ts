import { once } from 'node:events'
import type { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { hashToken, randomToken, userBucket } from '../lib/crypto.js'
import { RedisStore } from '../lib/index.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { startRedis } from './helpers/redis.js'

/** Counts the commands the client sends: each is one round trip here (no pipelining in the store). */
function countCommands (client: Redis): { count: () => number, reset: () => void } {
  let sent = 0
  const original = client.sendCommand.bind(client)
  client.sendCommand = ((command: Parameters<Redis['sendCommand']>[0], stream?: Parameters<Redis['sendCommand']>[1]) => {
    sent++
    return original(command, stream)
  }) as Redis['sendCommand']
  return { count: () => sent, reset: () => { sent = 0 } }
}

async function measure (sessionsOfUser: number, otherUsers: number, t: Test): Promise<Record<string, number>> {
  const clock = fakeClock(t)
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const store = new RedisStore(client)
  const app = await buildApp(t, { store })

  const now = Date.now()
  const fill = async (userKey: string, n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      await store.putSession(hashToken(randomToken(userBucket(userKey))), {
        userKey, fingerprint: `filler-${i}`, insertedAt: now, signedInAt: now, metadata: { i }
      }, { id: Number(userKey) }, 30 * 60_000, 10_000)
    }
  }
  for (let u = 0; u < otherUsers; u++) await fill(String(1000 + u), 1)
  await fill('1', sessionsOfUser - 1)

  const counter = countCommands(client)
  const run = async (fn: () => Promise<unknown>): Promise<number> => {
    counter.reset()
    await fn()
    return counter.count()
  }
  const flow = async (): Promise<Record<string, number>> => {
    const remembered = await signIn(app, 1, { persistent: true })
    remembered.delete('pow_session')
    const other = await signIn(app, 1)
    const otherFingerprint = (await me(other)).fingerprint as string
    const browser = await signIn(app, 1, { persistent: true })
    const result: Record<string, number> = {}
    result.anonymous = await run(() => app.inject('/me'))
    result.login = await run(() => signIn(app, 1))
    result.loginRemembered = await run(() => signIn(app, 1, { persistent: true }))
    result.firstRequest = await run(() => me(browser))
    result.authenticated = await run(() => me(browser))
    result.sessions = await run(() => browser.request('/sessions'))
    result.rememberMeSignIn = await run(() => me(remembered))
    result.revokeOne = await run(() => browser.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(otherFingerprint)}` }))
    clock.tick(16 * 60_000)
    result.renewal = await run(() => me(browser))
    result.deleteOthers = await run(() => browser.request({ method: 'DELETE', url: '/sessions' }))
    result.logout = await run(() => browser.request({ method: 'POST', url: '/logout' }))
    t.equal((await me(browser)).status, 401, 'the flow really ran')
    return result
  }
  // The first flow loads the scripts into Redis (NOSCRIPT, then EVAL); the second is measured.
  await flow()
  return await flow()
}

test('round trips per operation on RedisStore are small constants, whatever the store holds', async (t) => {
  let few: Record<string, number> = {}
  let many: Record<string, number> = {}
  await t.test('1 session of the user', async (t) => { few = await measure(1, 0, t) })
  await t.test('200 sessions of the user, 1000 other users', async (t) => { many = await measure(200, 1000, t) })

  t.same(few, {
    anonymous: 0, // no cookie, no store
    login: 1, // putSession
    loginRemembered: 2, // putSession, putToken
    firstRequest: 1, // one HMGET reads the session and the user
    authenticated: 1, // the same; the remember-me cookie is renewed without the store
    sessions: 2, // getSession, listSessions
    rememberMeSignIn: 2, // getToken, rotateToken (one atomic step)
    revokeOne: 2, // getSession, revoke
    renewal: 4, // getSession, lock, putSession, touchToken
    deleteOthers: 3, // getSession (a renewed session's first read: HMGET, and an EVAL not waited for that claims it), revoke
    logout: 3 // getSession, revoke, deleteToken
  }, 'the expected commands per operation')
  t.same(many, few, 'the same with 200 sessions of the user and 1000 other users')
})
