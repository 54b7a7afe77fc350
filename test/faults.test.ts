/**
 * Redis faults at an exact point of one request, against real redis-server processes
 * (test/helpers/redis.ts): Redis ran a commit, but the store never saw its answer in time (the
 * app stalled past commandTimeout), or the connection dropped after the command was sent and
 * ioredis sent it again. The browser must end signed in (or revoked) as the answer it got says,
 * never taken for a thief.
 *
 * The same faults hit by chance under a steady load of 20 browsers (Redis killed and restarted,
 * stalled, its connections dropped) are test/stress/faults-under-load.test.ts, in the stress
 * tier (npm run test:stress).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { LightMyRequestResponse } from 'fastify'
import type { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { RedisStore } from '../lib/index.js'
import type { Device } from '../lib/lifecycle.js'
import type { DeviceChange, DeviceWrite } from '../lib/types.js'
import { buildApp } from './helpers/app.js'
import { CookieJar } from './helpers/jar.js'
import { readyClient, startRedis } from './helpers/redis.js'

// ---------------------------------------------------------------------------------------------
// Each fault at an exact point of one request, where the load of
// test/stress/faults-under-load.test.ts hits it by chance: Redis ran a commit, but the store never
// saw its answer in time (a 503 after the write: a lost answer, which the lifecycle's claims and
// reissues must absorb), or ioredis sent it a second time after a dropped connection, and the
// second run found the device at another version (a version conflict: the request reads again and
// decides again). (They reproduce what the load tests found.)

/** This process does nothing else for `ms`: a GC pause, a CPU-starved container. */
function blockEventLoop (ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end) { /* busy */ }
}

/**
 * `fault` runs right after the next EVALSHA that the store sends once armed: the script is on
 * its way to Redis and the store's commandTimeout has started, its answer not yet read.
 */
function faultAfterNextScript (client: Redis, fault: () => void): { arm: () => void, fired: () => number } {
  const original = client.evalsha as unknown as (...args: unknown[]) => Promise<unknown>
  let armed = false
  let fired = 0
  ;(client as unknown as { evalsha: (...args: unknown[]) => Promise<unknown> }).evalsha = function (this: Redis, ...args: unknown[]) {
    const result = original.apply(this, args)
    if (armed) {
      armed = false
      fired++
      setImmediate(fault)
    }
    return result
  }
  return { arm: () => { armed = true }, fired: () => fired }
}

/** The lifecycle step a device write stores, told from the record it writes (a Device, lib/lifecycle.ts). */
type WriteKind = 'delete' | 'sign-in' | 'renewal' | 'rotation' | 'reissue' | 'other'

function writeKind (write: DeviceWrite): WriteKind {
  if (write.data === null) return 'delete'
  if (write.version === 0) return 'sign-in'
  // The record as lib/devices.ts stores it: without the fingerprint, and without `retired` when
  // nothing is.
  const device = JSON.parse(write.data) as Partial<Device>
  if (device.unclaimedSince === undefined) return 'other'
  // What the step retired, at the moment it issued the device's unclaimed secrets: a reissue
  // supersedes, a rotation uses the token, a renewal retires the session id only.
  const retired = (device.retired ?? []).filter((r) => r.at === device.unclaimedSince)
  if (retired.some((r) => r.superseded === true)) return 'reissue'
  if (retired.some((r) => r.kind === 'token')) return 'rotation'
  return retired.some((r) => r.kind === 'session') ? 'renewal' : 'other'
}

/** Calls `hook` before every `commit` of `store` that writes a device step of `kind`. */
function beforeCommit (store: RedisStore, kind: WriteKind, hook: (change: DeviceChange) => void): void {
  const commit = store.commit.bind(store)
  store.commit = async (change: DeviceChange) => {
    if (change.devices.some((write) => writeKind(write) === kind)) hook(change)
    return await commit(change)
  }
}

/** Drops the connection after Redis ran the command but before its answer was read; ioredis reconnects and sends it again. */
function loseAnswer (client: Redis): () => void {
  return () => {
    client.stream.pause()
    setTimeout(() => client.stream.destroy(), 100)
  }
}

const cookieNames = (response: LightMyRequestResponse): string[] =>
  (response.cookies as Array<{ name: string }>).map((c) => c.name)

/**
 * A browser about to sign in with its remember-me token, and a fault ready to strike: an app on
 * its own redis-server, its store with `commandTimeout`, rotationGrace 1000 ms, its theft
 * alarms (persistent:reuse, session:reuse) collected. Another browser's remember-me sign-in first (the commit
 * script cached, as on a live server, and the path known to work). Then `jar` signs in with
 * remember-me and loses its session cookie (a browser restart), and `makeFault(client)` is set to
 * run right after the commit of its token's rotation is sent to Redis. Only that one: the
 * browser's later requests (a reissue of the rotation, a claim) must not stall.
 */
async function rememberMeSignInUnderFault (t: Test, commandTimeout: number, makeFault: (client: Redis) => () => void): Promise<{ jar: CookieJar, token: string, fault: { fired: () => number }, alarms: string[] }> {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client, { commandTimeout })
  const app = await buildApp(t, { store, session: { rotationGrace: 1000 } })
  const alarms: string[] = []
  app.pow.on('persistent:reuse', () => alarms.push('persistent:reuse'))
  app.pow.on('session:reuse', () => alarms.push('session:reuse'))
  const other = new CookieJar(app)
  await other.request({ method: 'POST', url: '/login', payload: { id: 2, persistent: true } })
  other.delete('pow_session')
  t.equal((await other.request('/me')).statusCode, 200, 'a remember-me sign-in works')

  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })
  jar.delete('pow_session') // a browser restart
  const token = jar.get('pow_persistent_session') as string
  const fault = faultAfterNextScript(client, makeFault(client))
  let faulted = false
  beforeCommit(store, 'rotation', () => { if (!faulted) { faulted = true; fault.arm() } })
  return { jar, token, fault, alarms }
}

/**
 * Past rotationGrace after the rotation. When its answer was lost, the browser shows its used
 * token again while the rotation is unclaimed, so both secrets are reissued; else the browser
 * shows the rotation's new session id. Either way the browser ends with working secrets that
 * claim the device.
 */
async function signedInPastGrace (t: Test, jar: CookieJar, token: string, alarms: string[], lost: boolean): Promise<void> {
  await sleep(1200) // past rotationGrace
  const back = await jar.request('/me')
  t.equal(back.statusCode, 200, 'after rotationGrace the browser is still signed in')
  if (lost) t.same(cookieNames(back).sort(), ['pow_persistent_session', 'pow_session'], 'with both secrets reissued')
  else t.same(cookieNames(back), [], 'with the rotation\'s session id, which claims the device')
  t.not(jar.get('pow_persistent_session'), token, 'a new remember-me token')
  const claim = await jar.request('/me')
  t.equal(claim.statusCode, 200, 'the reissued session id works')
  t.same(cookieNames(claim), [], 'and claims the device without a new cookie')
  t.same(alarms, [], 'and it was not taken for a thief')
}

test('a remember-me sign-in that Redis ran, answered after commandTimeout (the app stalled), leaves the browser signed in', async (t) => {
  const { jar, token, fault, alarms } = await rememberMeSignInUnderFault(t, 300, () => () => blockEventLoop(600))
  const response = await jar.request('/me')
  t.equal(fault.fired(), 1, 'the app stalled right after sending the rotation')
  t.comment(`the remember-me sign-in answered ${response.statusCode}${response.headers['set-cookie'] === undefined ? ', no cookie' : ''}`)
  const lost = response.statusCode === 503
  if (lost) t.equal(response.headers['set-cookie'], undefined, 'its 503 changes no cookie')
  else t.equal(response.statusCode, 200, 'or, its answer read before the timeout, it signs in')
  await signedInPastGrace(t, jar, token, alarms, lost)
})

test('a renewal that Redis ran, answered after commandTimeout (the app stalled), leaves the browser signed in', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client, { commandTimeout: 300 })
  const app = await buildApp(t, {
    store,
    session: { ttl: 60_000, renewAfter: 300, rotationGrace: 500 },
    persistentSession: false
  })
  const alarms: string[] = []
  app.pow.on('session:reuse', () => alarms.push('session:reuse'))
  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  t.equal((await jar.request('/me')).statusCode, 200, 'signed in')
  await sleep(400) // the session id is due for renewal

  const fault = faultAfterNextScript(client, () => blockEventLoop(600))
  // Only the first renewal: the browser's later requests (a reissue, a claim) must not stall.
  let faulted = false
  beforeCommit(store, 'renewal', () => { if (!faulted) { faulted = true; fault.arm() } })
  const old = jar.get('pow_session')
  const response = await jar.request('/me')
  t.equal(fault.fired(), 1, 'the app stalled right after sending the renewed session')
  t.comment(`the renewing request answered ${response.statusCode}${response.headers['set-cookie'] === undefined ? ', no cookie' : ''}`)
  if (response.statusCode === 503) {
    t.equal(response.headers['set-cookie'], undefined, 'its 503 changes no cookie')
    t.equal(jar.get('pow_session'), old, 'the browser keeps its session id')
  }

  await sleep(700) // past rotationGrace
  const back = await jar.request('/me')
  t.equal(back.statusCode, 200, 'after rotationGrace the browser is still signed in')
  if (response.statusCode === 503) t.same(cookieNames(back), ['pow_session'], 'the lost renewal is reissued')
  const claim = await jar.request('/me')
  t.equal(claim.statusCode, 200, 'its new session id works')
  t.same(cookieNames(claim), [], 'without another cookie')
  t.same(alarms, [], 'nothing was taken for theft')
})

test('a revocation whose answer was lost on a dropped connection (ioredis sends it again) answers 204, not 404', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client, { commandTimeout: 2000 })
  const app = await buildApp(t, { store })
  const first = new CookieJar(app)
  await first.request({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })
  const second = new CookieJar(app)
  await second.request({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })
  const fingerprint = (await second.request('/me')).json().metadata.fingerprint as string
  const third = new CookieJar(app)
  await third.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  const thirdFingerprint = (await third.request('/me')).json().metadata.fingerprint as string
  t.equal((await first.request({ method: 'DELETE', url: `/sessions/${thirdFingerprint}` })).statusCode, 204, 'a revocation works')

  const fault = faultAfterNextScript(client, loseAnswer(client))
  beforeCommit(store, 'delete', () => fault.arm())
  const response = await first.request({ method: 'DELETE', url: `/sessions/${fingerprint}` })
  t.equal(fault.fired(), 1, 'the connection dropped after the revocation was sent')
  t.equal((await second.request('/me')).statusCode, 401, 'the other browser is signed out')
  t.equal(response.statusCode, 204, 'so the revocation answers 204 (not 404, "unknown device", nor a 503)')
  const rememberOnly = second.clone()
  rememberOnly.delete('pow_session')
  t.equal((await rememberOnly.request('/me')).statusCode, 401, 'its remember-me token went with its device')
})

test('a remember-me sign-in whose answer was lost on a dropped connection (ioredis sends it again) leaves the browser signed in', async (t) => {
  const { jar, token, fault, alarms } = await rememberMeSignInUnderFault(t, 2000, loseAnswer)
  const response = await jar.request('/me')
  t.equal(fault.fired(), 1, 'the connection dropped after the rotation was sent')
  // The second run of the commit finds the device moved on (the first run rotated it): the
  // request reads it again and finds its token used within the grace, as a parallel request would.
  t.equal(response.statusCode, 200, 'the request is signed in')
  t.same(cookieNames(response), [], 'for this request only: no new cookie')
  t.equal(jar.get('pow_persistent_session'), token, 'the browser keeps its used token')
  await signedInPastGrace(t, jar, token, alarms, true)
})
