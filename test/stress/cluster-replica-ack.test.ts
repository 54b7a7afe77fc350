/**
 * What a failover loses of the writes a replica did not have, with and without RedisStore's
 * `waitForReplicas`, on a real Redis Cluster of 3 masters and 3 replicas
 * (test/helpers/redis-failover.ts).
 *
 * The forced lag: the replica of one master is suspended (SIGSTOP), and 48 MB written to that
 * master fill the replication socket's kernel buffers, so that what the master writes after that
 * stays in its own output buffer. Then browsers whose user is on that master sign in and renew
 * (no remember-me, so a lost renewal signs a browser out); the master is killed (SIGKILL), the
 * replica resumed and promoted. Afterwards:
 *   - without the option, the app answered those sign-ins and renewals 200 with new cookies, and
 *     the promoted replica never had them: some browsers are signed out (the control: the lag
 *     really loses writes);
 *   - with `waitForReplicas: 1`, the sign-ins answered 503 and the renewals were served with the
 *     session id as read: every browser that got a 200 sign-in is still signed in.
 * Neither raises a theft event or answers a 5xx other than 503.
 *
 * The second test also measures what waiting costs: sign-ins and renewals through two apps on
 * the same cluster, one with the option and one without, alternating, printed with t.comment.
 *
 * Dates are faked (renewals are due without waiting); the cluster's timeouts are real.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { userBucket } from '../../lib/crypto.js'
import { RedisStore } from '../../lib/index.js'
import { buildApp } from '../helpers/app.js'
import { fakeClock, type InstalledClock } from '../helpers/clock.js'
import { CookieJar } from '../helpers/jar.js'
import { type LogLine, logLines } from '../helpers/outage.js'
import { keySlot, type ReplicatedCluster, startReplicatedCluster } from '../helpers/redis-failover.js'

const NAMESPACE = 'pow'
const COMMAND_TIMEOUT = 1000
/** What the forced-lag app waits for a replica: short, since 40 writes wait it out one after the other. */
const REPLICA_TIMEOUT = 100
/**
 * What the cost-measuring apps wait: on a healthy cluster the acknowledgement comes long before it,
 * but on a loaded 2-core machine it can come after 100 ms, and the measurement is of waiting, not
 * of the timeout.
 */
const HEALTHY = { commandTimeout: 5000, replicaTimeout: 2000 }
/** Tries of a sign-in before the lag (a 503 there is a replica that was slow to answer, not the lag). */
const EARLY_TRIES = 5
const SESSION = { ttl: 600_000, renewAfter: 60_000, rotationGrace: 10_000 }
/** Browsers signed in before the lag (they renew during it), and browsers that sign in during it. */
const EARLY = 20
const LAGGED = 20
const FILLER_MB = 48

interface Browser {
  userId: number
  jar: CookieJar
  /** The status of its sign-in. */
  signIn: number
}

/** The slot of every key of the user's, by the store's key layout. */
function userSlot (userKey: string): number {
  return keySlot(`${NAMESPACE}:{${userBucket(userKey)}}:d:`)
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] ?? 0
}

async function app (
  t: Test, handle: ReplicatedCluster, waitForReplicas: number,
  timeouts = { commandTimeout: COMMAND_TIMEOUT, replicaTimeout: REPLICA_TIMEOUT }
): Promise<{ app: FastifyInstance, lines: LogLine[], alarms: string[] }> {
  const cluster = await handle.readyCluster()
  const { lines, stream } = logLines()
  const built = await buildApp(t, {
    store: new RedisStore(cluster, { namespace: NAMESPACE, waitForReplicas, ...timeouts }),
    session: SESSION,
    persistentSession: false
  }, (app) => { app.log = Fastify({ logger: { level: 'info', stream } }).log })
  const alarms: string[] = []
  built.pow.on('session:reuse', (event) => alarms.push(`session:reuse of user ${event.userKey}`))
  return { app: built, lines, alarms }
}

async function signIn (app: FastifyInstance, userId: number): Promise<Browser> {
  const jar = new CookieJar(app)
  const response = await jar.request({ method: 'POST', url: '/login', payload: { id: userId } })
  return { userId, jar, signIn: response.statusCode }
}

/** User ids whose keys are in the slots of the master on `port`, from `from` on. */
async function usersOn (handle: ReplicatedCluster, port: number, count: number, from: number): Promise<number[]> {
  const ids: number[] = []
  for (let id = from; ids.length < count; id++) {
    if (await handle.masterOf(userSlot(String(id))) === port) ids.push(id)
  }
  return ids
}

/** Fills the master on `port` with FILLER_MB of values under one hash tag of its slots. */
async function fill (handle: ReplicatedCluster, port: number): Promise<void> {
  let tag = 0
  while (await handle.masterOf(keySlot(`{filler-${tag}}`)) !== port) tag++
  const admin = handle.admin(port)
  const value = 'x'.repeat(1024 * 1024)
  for (let i = 0; i < FILLER_MB; i++) await admin.set(`{filler-${tag}}:${i}`, value)
}

interface Outcome {
  early: Browser[]
  lagged: Browser[]
  /** The status and whether a new session cookie came, of each early browser's renewal during the lag. */
  renewals: Array<{ status: number, newCookie: boolean }>
  /** Browsers with a 200 sign-in that are not signed in as their user after the failover. */
  lost: string[]
  other5xx: string[]
  alarms: string[]
}

/** The forced-lag kill described at the top, on a new cluster, with the app's store waiting for `waitForReplicas`. */
async function forcedLagKill (t: Test, clock: InstalledClock, waitForReplicas: number): Promise<Outcome> {
  const handle = await startReplicatedCluster(t)
  const { app: server, alarms } = await app(t, handle, waitForReplicas)
  const victim = handle.masters[0] as number
  const replica = await handle.replicaOf(victim)
  if (replica === undefined) throw new Error(`master ${victim} has no replica`)
  const [earlyIds, laggedIds] = [await usersOn(handle, victim, EARLY, 1), await usersOn(handle, victim, LAGGED, 100_000)]

  const other5xx: string[] = []
  const early: Browser[] = []
  let retried = 0
  for (const id of earlyIds) {
    let browser = await signIn(server, id)
    for (let tries = 1; browser.signIn === 503 && tries < EARLY_TRIES; tries++, retried++) browser = await signIn(server, id)
    early.push(browser)
  }
  if (retried > 0) t.comment(`${retried} tries of sign-ins before the lag answered 503 (a replica slow to acknowledge) and were made again`)
  t.same(early.filter((b) => b.signIn !== 200).map((b) => b.userId), [], 'before the lag every sign-in answers 200')

  handle.suspend(replica)
  let lagged: Browser[] = []
  let renewals: Outcome['renewals'] = []
  try {
    await fill(handle, victim)
    clock.tick(SESSION.renewAfter)
    renewals = []
    for (const b of early) {
      const before = b.jar.header()
      const response = await b.jar.request('/me')
      renewals.push({ status: response.statusCode, newCookie: b.jar.header() !== before })
      if (response.statusCode >= 500 && response.statusCode !== 503) other5xx.push(`renewal of user ${b.userId}: ${response.statusCode}`)
    }
    for (const id of laggedIds) lagged.push(await signIn(server, id))
    lagged = lagged.map((b) => {
      if (b.signIn >= 500 && b.signIn !== 503) other5xx.push(`sign-in of user ${b.userId}: ${b.signIn}`)
      return b
    })
    await handle.kill(victim)
  } finally {
    handle.resume(replica)
  }
  const killedAt = performance.now()
  await handle.waitForClusterOk()
  t.equal(await handle.masterOf(userSlot(String(earlyIds[0]))), replica, `the replica ${replica} serves the killed master's slots`)
  t.comment(`the replica was promoted ${Math.round(performance.now() - killedAt)} ms after the kill`)

  // The app's client finds the new master: until then its users' requests answer 503.
  const lost: string[] = []
  for (const b of [...early, ...lagged].filter((b) => b.signIn === 200)) {
    let response = await b.jar.request('/me')
    for (let tries = 0; response.statusCode === 503 && tries < 100; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      response = await b.jar.request('/me')
    }
    if (response.statusCode !== 200 || response.json().user?.id !== b.userId) lost.push(`user ${b.userId}: ${response.statusCode}`)
  }
  return { early, lagged, renewals, lost, other5xx, alarms }
}

test('without waitForReplicas, a failover loses what the lagging replica did not have (the control)', async (t) => {
  const clock = fakeClock(t)
  const outcome = await forcedLagKill(t, clock, 0)
  const answered = outcome.lagged.filter((b) => b.signIn === 200).length
  const renewed = outcome.renewals.filter((r) => r.status === 200 && r.newCookie).length
  t.comment(`during the lag: ${answered} of ${LAGGED} sign-ins answered 200, ${renewed} of ${EARLY} renewals set a new cookie; ` +
    `after the failover ${outcome.lost.length} of those browsers are signed out`)
  t.equal(answered, LAGGED, 'every sign-in during the lag answered 200')
  t.equal(renewed, EARLY, 'every renewal during the lag set a new session cookie')
  t.ok(outcome.lost.length > 0, 'the failover lost some of them: the forced lag loses writes')
  t.same(outcome.other5xx, [], 'no 5xx but 503')
  t.same(outcome.alarms, [], 'no theft raised')
})

test('with waitForReplicas: 1, every sign-in answered 200 survives the failover; what it costs', async (t) => {
  const clock = fakeClock(t)

  // What waiting costs, on a healthy cluster: two apps on it, alternating.
  {
    const handle = await startReplicatedCluster(t)
    const [plain, waiting] = [await app(t, handle, 0, HEALTHY), await app(t, handle, 1, HEALTHY)]
    const ids = await usersOn(handle, handle.masters[1] as number, 60, 1)
    const times = { plain: { signIn: [] as number[], renewal: [] as number[] }, waiting: { signIn: [] as number[], renewal: [] as number[] } }
    const browsers: Array<{ which: 'plain' | 'waiting', browser: Browser }> = []
    const refused: string[] = []
    for (const [i, id] of ids.entries()) {
      const which = i % 2 === 0 ? 'plain' : 'waiting'
      const started = performance.now()
      const browser = await signIn((which === 'plain' ? plain : waiting).app, id)
      times[which].signIn.push(performance.now() - started)
      if (browser.signIn !== 200) refused.push(`sign-in of user ${id} (${which}): ${browser.signIn}`)
      browsers.push({ which, browser })
    }
    clock.tick(SESSION.renewAfter)
    for (const { which, browser } of browsers) {
      const started = performance.now()
      const response = await browser.jar.request('/me')
      times[which].renewal.push(performance.now() - started)
      if (response.statusCode !== 200) refused.push(`renewal of user ${browser.userId} (${which}): ${response.statusCode}`)
    }
    t.same(refused, [], 'on a healthy cluster every sign-in and renewal answers 200, with or without waiting')
    const ms = (values: number[]): string => `${median(values).toFixed(2)} ms`
    t.comment(`median sign-in ${ms(times.plain.signIn)} without, ${ms(times.waiting.signIn)} with waitForReplicas: 1; ` +
      `median renewal ${ms(times.plain.renewal)} without, ${ms(times.waiting.renewal)} with (30 of each, one at a time, alternating)`)
  }

  const outcome = await forcedLagKill(t, clock, 1)
  const refused = outcome.lagged.filter((b) => b.signIn === 503).length
  const deferred = outcome.renewals.filter((r) => r.status === 200 && !r.newCookie).length
  t.comment(`during the lag: ${refused} of ${LAGGED} sign-ins answered 503, ${deferred} of ${EARLY} renewals were served with the id as read; ` +
    `after the failover ${outcome.lost.length} browsers with a 200 sign-in are signed out`)
  t.equal(refused, LAGGED, 'every sign-in the replica did not acknowledge answered 503')
  t.equal(deferred, EARLY, 'every renewal it did not acknowledge served the request with the id as read')
  t.same(outcome.lost, [], 'every browser whose sign-in answered 200 is still signed in after the failover')
  t.same(outcome.other5xx, [], 'no 5xx but 503')
  t.same(outcome.alarms, [], 'no theft raised')
})
