/**
 * A Redis Cluster master fails over under load, against real redis-server processes: 3 masters
 * and 3 replicas (test/helpers/redis-failover.ts), one app on a RedisStore over an ioredis
 * Cluster client (commandTimeout 1000 ms; session ttl 20 s, renewAfter 3 s, rotationGrace 2 s),
 * 300 browsers (150 users, two browsers each, all with remember-me) whose users' keys are on
 * every master. Each browser sends GET /me one at a time with its own cookies, 250 requests a
 * second in all, for 3 s; then
 *   a. a master is killed with SIGKILL: its replica is promoted by the cluster (node timeout
 *      1000 ms), and the load goes on for 5 s after that. Only the browsers whose user's slot was
 *      on the killed master may get 503 POW_ERR_STORE_UNAVAILABLE, and only from the kill on;
 *      nothing else but 200 (no 401, no 500);
 *   b. a replica takes over with a graceful CLUSTER FAILOVER: every request answers 200.
 * Afterwards (past rotationGrace) every browser is still signed in as its user (its remember-me
 * token may sign it in again), no browser was taken for a thief (session:reuse,
 * persistent:reuse), and the outage was logged once (at most 2 error lines), not per request.
 * The failover window (first to last 503), the counts and the latencies are printed with
 * t.comment; store calls that failed are counted by method, shard and error message.
 *
 * Real time throughout: the outage log's "once a minute" and the cluster's timeouts are real.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import type { Cluster } from 'ioredis'
import { test, type Test } from 'tap'
import { userBucket } from '../../lib/crypto.js'
import { type PowStore, RedisStore } from '../../lib/index.js'
import { buildApp, signIn } from '../helpers/app.js'
import type { CookieJar } from '../helpers/jar.js'
import { type LogLine, logLines } from '../helpers/outage.js'
import { keySlot, type ReplicatedCluster, startReplicatedCluster } from '../helpers/redis-failover.js'

const COMMAND_TIMEOUT = 1000
const SESSION = { ttl: 20_000, renewAfter: 3000, rotationGrace: 2000 }
const USERS = 150
const BROWSERS_PER_USER = 2
/** GET /me a second, all browsers together. */
const RATE = 250
/** Load before the failover, and after the cluster is ok again. */
const BEFORE_MS = 3000
const AFTER_MS = 5000
const NAMESPACE = 'pow'

const now = (): number => performance.now()

/** The slot of every key of the user's, by the store's key layout `pow:{<bucket>}:...`. */
function userSlot (userKey: string): number {
  return keySlot(`${NAMESPACE}:{${userBucket(userKey)}}:d:`)
}

interface Browser {
  n: number
  userId: number
  slot: number
  /** The port of the master that served the user's slot before the failover. */
  master: number
  jar: CookieJar
  busy: boolean
}

interface Sample {
  browser: number
  start: number
  end: number
  status: number
  code: string | undefined
  userId: number | undefined
  cookies: string[]
}

/** A store call that failed. */
interface Failure {
  at: number
  method: string
  slot: number | undefined
  message: string
}

/** The store, with every failed call recorded (to tell which commands failed, on which shard). */
function observed (store: RedisStore, failures: Failure[]): PowStore {
  const watch = async <T>(method: string, slot: number | undefined, call: () => Promise<T>): Promise<T> => {
    try {
      return await call()
    } catch (err) {
      failures.push({ at: now(), method, slot, message: err instanceof Error ? err.message : String(err) })
      throw err
    }
  }
  return {
    read: async (bucket, fingerprint) => await watch('read', keySlot(`{${bucket}}`), () => store.read(bucket, fingerprint)),
    list: async (userKey) => await watch('list', userSlot(userKey), () => store.list(userKey)),
    commit: async (change) => await watch('commit', userSlot(change.userKey), () => store.commit(change)),
    users: async () => await watch('users', undefined, () => store.users())
  }
}

async function request (b: Browser): Promise<Sample> {
  const start = now()
  const response = await b.jar.request('/me')
  const end = now()
  let body: { code?: string, user?: { id?: number } | null } = {}
  try {
    body = response.json()
  } catch {}
  return {
    browser: b.n,
    start,
    end,
    status: response.statusCode,
    code: body.code,
    userId: body.user?.id,
    cookies: (response.cookies as Array<{ name: string }>).map((c) => c.name)
  }
}

/** GET /me at RATE a second, each browser one request at a time, round robin over the idle ones. */
class Load {
  readonly samples: Sample[] = []
  #running = false
  #done: Promise<void> = Promise.resolve()

  constructor (private readonly browsers: Browser[]) {}

  start (): void {
    this.#running = true
    this.#done = this.#run()
  }

  async stop (): Promise<void> {
    this.#running = false
    await this.#done
  }

  async #run (): Promise<void> {
    const interval = 1000 / RATE
    const inflight = new Set<Promise<void>>()
    let next = now()
    let i = 0
    while (this.#running) {
      // After a stall of this process, no burst of more than 100 ms of requests.
      next = Math.max(next, now() - 100)
      while (next <= now()) {
        next += interval
        for (let k = 0; k < this.browsers.length; k++) {
          const b = this.browsers[i++ % this.browsers.length] as Browser
          if (b.busy) continue
          b.busy = true
          const p = request(b).then((s) => { this.samples.push(s) }).finally(() => {
            b.busy = false
            inflight.delete(p)
          })
          inflight.add(p)
          break
        }
      }
      await sleep(2)
    }
    await Promise.all(inflight)
  }
}

interface Setup {
  app: FastifyInstance
  cluster: Cluster
  browsers: Browser[]
  lines: LogLine[]
  alarms: string[]
  failures: Failure[]
  events: { renewed: number, remembered: number }
  t0: number
}

/**
 * The app on a RedisStore over a Cluster client of `handle`, its log lines kept, and all browsers
 * signed in with remember-me; checks that the users' keys are where the key layout says.
 */
async function setUp (t: Test, handle: ReplicatedCluster): Promise<Setup> {
  const cluster = await handle.readyCluster()
  const failures: Failure[] = []
  const { lines, stream } = logLines()
  const app = await buildApp(t, {
    store: observed(new RedisStore(cluster, { namespace: NAMESPACE, commandTimeout: COMMAND_TIMEOUT }), failures),
    session: SESSION
  }, (app) => {
    // buildApp's app logs nothing; fastify-pow logs through app.log, read when it is registered:
    // a logger of the same kind, writing to the kept lines.
    app.log = Fastify({ logger: { level: 'info', stream } }).log
  })
  const t0 = now()
  const alarms: string[] = []
  for (const kind of ['session:reuse', 'persistent:reuse'] as const) {
    app.pow.on(kind, (event) => alarms.push(`${kind}: user ${event.userKey} fingerprint ${event.fingerprint} at +${Math.round(now() - t0)} ms`))
  }
  const events = { renewed: 0, remembered: 0 }
  app.pow.on('session:renewed', () => { events.renewed++ })
  app.pow.on('persistent:used', () => { events.remembered++ })

  // Which master serves each slot, and the slots as Redis computes them (CLUSTER KEYSLOT).
  const ranges = await handle.admin(handle.masters[0] as number).cluster('SLOTS')
  const masterOfSlot = (slot: number): number => Number(ranges.find(([from, to]) => slot >= from && slot <= to)?.[2]?.[1])
  const admin = handle.admin(handle.masters[0] as number)
  const browsers: Browser[] = []
  for (let userId = 1; userId <= USERS; userId++) {
    const slot = userSlot(String(userId))
    const key = `${NAMESPACE}:{${userBucket(String(userId))}}:ud:${userId}`
    const redisSlot = Number(await admin.cluster('KEYSLOT', key))
    if (redisSlot !== slot) throw new Error(`keySlot(${key}) = ${slot}, but Redis says ${redisSlot}`)
    for (let k = 0; k < BROWSERS_PER_USER; k++) {
      const jar = await signIn(app, userId, { persistent: true })
      browsers.push({ n: browsers.length, userId, slot, master: masterOfSlot(slot), jar, busy: false })
    }
    // The user's index is on the master the layout says (a direct connection: no redirection).
    const exists = await handle.admin(masterOfSlot(slot)).exists(key)
    if (exists !== 1) throw new Error(`${key} is not on master ${masterOfSlot(slot)} (slot ${slot})`)
  }
  for (const port of handle.masters) {
    const users = new Set(browsers.filter((b) => b.master === port).map((b) => b.userId)).size
    t.ok(users >= 10, `master ${port} holds the keys of ${users} users`)
  }
  return { app, cluster, browsers, lines, alarms, failures, events, t0 }
}

/** Lists at most 20 entries in the assertion's diagnostics. */
function none (t: Test, list: string[], message: string): void {
  t.same(list.slice(0, 20), [], `${message}${list.length > 20 ? ` (${list.length} in all, first 20 shown)` : ''}`)
}

function percentile (sorted: number[], p: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number
}

/**
 * After the load and past rotationGrace: every browser is signed in as its user. `remembered`:
 * how many were signed in by their remember-me token (persistent:used) meanwhile.
 */
async function finalCheck (browsers: Browser[], events: Setup['events']): Promise<{ lost: string[], remembered: number }> {
  await sleep(SESSION.rotationGrace + 300)
  const before = events.remembered
  const lost: string[] = []
  for (const b of browsers) {
    const s = await request(b)
    if (s.status !== 200 || s.userId !== b.userId) {
      lost.push(`browser ${b.n} (user ${b.userId}, slot ${b.slot} on ${b.master}): ${s.status} ${s.code ?? ''} user ${s.userId}`)
    }
  }
  return { lost, remembered: events.remembered - before }
}

function statusCounts (samples: Sample[]): string {
  const counts = new Map<number, number>()
  for (const s of samples) counts.set(s.status, (counts.get(s.status) ?? 0) + 1)
  return [...counts].sort(([a], [b]) => a - b).map(([status, n]) => `${status}: ${n}`).join(', ')
}

/** Failed store calls, by method, shard and message. */
function failureSummary (failures: Failure[], victim: number | undefined, masterOfSlot: (slot: number) => number | undefined): string[] {
  const counts = new Map<string, number>()
  for (const f of failures) {
    const master = f.slot === undefined ? undefined : masterOfSlot(f.slot)
    const shard = master === undefined ? 'no slot' : master === victim ? `killed shard ${master}` : `healthy shard ${master}`
    const key = `${f.method} on ${shard}: ${f.message.replace(/MOVED \d+ /, 'MOVED <slot> ')}`
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  return [...counts].sort(([, a], [, b]) => b - a).map(([key, n]) => `${n} x ${key}`)
}

const storeLines = (lines: LogLine[]): LogLine[] => lines.filter((l) => l.msg.startsWith('fastify-pow: the session store'))
const showLine = (l: LogLine): string => `level ${l.level}: ${l.msg}${l.err?.message !== undefined ? ` (${l.err.message})` : ''}`

test('a Cluster master killed (SIGKILL) under load: only its users get 503s, until its replica is promoted', async (t) => {
  const handle = await startReplicatedCluster(t)
  const { browsers, lines, alarms, failures, events } = await setUp(t, handle)
  const victim = handle.masters[1] as number
  const replica = await handle.replicaOf(victim)
  if (replica === undefined) throw new Error(`master ${victim} has no replica`)
  const victims = browsers.filter((b) => b.master === victim)
  const victimUsers = new Set(victims.map((b) => b.userId)).size

  const load = new Load(browsers)
  const started = now()
  load.start()
  let killedAt = Infinity
  let promotedAt = Infinity
  try {
    await sleep(BEFORE_MS)
    killedAt = now()
    await handle.kill(victim)
    await handle.waitForClusterOk()
    promotedAt = now()
    await sleep(AFTER_MS)
  } finally {
    await load.stop()
  }
  const stoppedAt = now()
  const ms = (at: number): string => `${at >= killedAt ? '+' : ''}${Math.round(at - killedAt)} ms`

  // The killed master's slots are its replica's now.
  const served = await handle.masterOf(victims[0]?.slot ?? 5461)
  t.equal(served, replica, `the replica ${replica} serves the killed master's slots`)

  const samples = load.samples
  const byN = (s: Sample): Browser => browsers[s.browser] as Browser
  const failed = samples.filter((s) => s.status === 503)
  const offenders: string[] = []
  for (const s of failed) {
    const b = byN(s)
    if (b.master !== victim) {
      offenders.push(`browser ${b.n} (user ${b.userId}, slot ${b.slot} on healthy master ${b.master}): 503 ${s.code} at ${ms(s.start)}..${ms(s.end)}`)
    } else if (s.end < killedAt) {
      offenders.push(`browser ${b.n} (user ${b.userId}, slot ${b.slot} on ${b.master}): 503 ${s.code} at ${ms(s.start)}..${ms(s.end)}, before the kill`)
    }
  }
  const other5xx = samples.filter((s) => s.status >= 500 && s.status !== 503).map((s) => `browser ${s.browser}: ${s.status} at ${ms(s.start)}`)
  const wrong503 = failed.filter((s) => s.code !== 'POW_ERR_STORE_UNAVAILABLE').map((s) => `browser ${s.browser}: 503 ${s.code} at ${ms(s.start)}`)
  const signedOut = samples.filter((s) => s.status !== 200 && s.status !== 503).map((s) => `browser ${s.browser} (user ${byN(s).userId}): ${s.status} at ${ms(s.start)}`)
  const wrongUser = samples.filter((s) => s.status === 200 && s.userId !== byN(s).userId).map((s) => `browser ${s.browser}: signed in as ${s.userId}`)

  const first503 = failed.reduce((min, s) => Math.min(min, s.start), Infinity)
  const last503 = failed.reduce((max, s) => Math.max(max, s.end), -Infinity)
  const victimAfter = samples.filter((s) => byN(s).master === victim && s.start >= killedAt)
  const recovered = victimAfter.filter((s) => s.status === 200 && s.start > last503).reduce((min, s) => Math.min(min, s.end), Infinity)
  const latencies = samples.map((s) => s.end - s.start).sort((a, b) => a - b)
  const healthyLatencies = samples.filter((s) => byN(s).master !== victim).map((s) => s.end - s.start).sort((a, b) => a - b)
  const outage = storeLines(lines)
  const errors = outage.filter((l) => l.level >= 50)
  const masterOfPort = (slot: number): number | undefined => browsers.find((b) => b.slot === slot)?.master

  t.comment(`killed master ${victim} (slots of ${victimUsers} of ${USERS} users, ${victims.length} browsers) at +${Math.round(killedAt - started)} ms of load; ` +
    `the cluster was ok again (replica ${replica} promoted) at ${ms(promotedAt)}; load stopped at ${ms(stoppedAt)}`)
  t.comment(failed.length === 0
    ? 'no 503 at all'
    : `failover window seen by the app: first 503 at ${ms(first503)}, last 503 answered at ${ms(last503)}: ${Math.round(last503 - first503)} ms; ` +
      `first 200 of a killed-shard browser after it at ${ms(recovered)}`)
  t.comment(`${samples.length} requests in ${Math.round(stoppedAt - started)} ms (${statusCounts(samples)}); 503s: ${failed.length}, ` +
    `to ${new Set(failed.map((s) => s.browser)).size} browsers of ${new Set(failed.map((s) => byN(s).userId)).size} users; ` +
    `${victimAfter.length} requests of killed-shard browsers after the kill`)
  t.comment(`latency: p50 ${percentile(latencies, 0.5).toFixed(1)} ms, p99 ${percentile(latencies, 0.99).toFixed(1)} ms, max ${percentile(latencies, 1).toFixed(0)} ms; ` +
    `healthy shards only: p99 ${percentile(healthyLatencies, 0.99).toFixed(1)} ms, max ${percentile(healthyLatencies, 1).toFixed(0)} ms`)
  t.comment(`during the load: renewals ${events.renewed}, remember-me sign-ins ${events.remembered}`)
  t.comment(`store calls failed: ${failures.length}${failures.length > 0 ? '\n  ' + failureSummary(failures, victim, masterOfPort).join('\n  ') : ''}`)
  t.comment(`outage log lines (${outage.length}):\n  ${outage.map(showLine).join('\n  ')}`)

  none(t, other5xx, 'no 5xx but 503')
  none(t, wrong503, 'every 503 is POW_ERR_STORE_UNAVAILABLE')
  none(t, offenders, `503s only for browsers whose user's slot was on the killed master ${victim}, from the kill on`)
  none(t, signedOut, 'no browser signed out during the load: 200 or 503 only')
  none(t, wrongUser, 'every 200 is the browser\'s own user')
  t.ok(failed.length > 0, 'the killed master\'s users got 503s')

  const { lost, remembered } = await finalCheck(browsers, events)
  t.comment(`final check: ${browsers.length - lost.length} of ${browsers.length} browsers signed in, ${remembered} of them by their remember-me token`)
  none(t, lost, 'after the failover every browser is still signed in as its user')
  none(t, alarms, 'no browser taken for a thief (session:reuse, persistent:reuse)')
  t.ok(errors.length >= 1, 'the outage was logged')
  t.ok(errors.length <= 2, `at most 2 error lines for the outage: ${errors.length}\n${errors.map(showLine).join('\n')}`)
})

test('a graceful CLUSTER FAILOVER under load: no error at all', async (t) => {
  const handle = await startReplicatedCluster(t)
  const { browsers, lines, alarms, failures, events } = await setUp(t, handle)
  const master = handle.masters[1] as number
  const replica = await handle.replicaOf(master)
  if (replica === undefined) throw new Error(`master ${master} has no replica`)

  const load = new Load(browsers)
  const started = now()
  load.start()
  let failoverAt = Infinity
  let promotedAt = Infinity
  let okAt = Infinity
  try {
    await sleep(BEFORE_MS)
    failoverAt = now()
    await handle.failover(replica)
    promotedAt = now()
    await handle.waitForClusterOk({ replicas: true })
    okAt = now()
    await sleep(AFTER_MS)
  } finally {
    await load.stop()
  }
  const stoppedAt = now()
  const ms = (at: number): string => `${at >= failoverAt ? '+' : ''}${Math.round(at - failoverAt)} ms`
  const moved = browsers.find((b) => b.master === master)
  t.equal(await handle.masterOf(moved?.slot ?? 5461), replica, `the replica ${replica} serves ${master}'s slots`)

  const samples = load.samples
  const byN = (s: Sample): Browser => browsers[s.browser] as Browser
  const errors = samples.filter((s) => s.status !== 200)
    .map((s) => `browser ${s.browser} (user ${byN(s).userId}, slot ${byN(s).slot} on ${byN(s).master}): ${s.status} ${s.code ?? ''} at ${ms(s.start)}..${ms(s.end)}`)
  const wrongUser = samples.filter((s) => s.status === 200 && s.userId !== byN(s).userId).map((s) => `browser ${s.browser}: signed in as ${s.userId}`)
  const latencies = samples.map((s) => s.end - s.start).sort((a, b) => a - b)
  const around = samples.filter((s) => s.end >= failoverAt && s.start <= okAt).map((s) => s.end - s.start).sort((a, b) => a - b)
  const slowest = samples.reduce((max, s) => (s.end - s.start > max.end - max.start ? s : max), samples[0] as Sample)
  const outage = storeLines(lines)
  const masterOfPort = (slot: number): number | undefined => browsers.find((b) => b.slot === slot)?.master

  t.comment(`CLUSTER FAILOVER on replica ${replica} of ${master} at +${Math.round(failoverAt - started)} ms of load: ` +
    `replica a master at ${ms(promotedAt)}, cluster ok with every replica linked at ${ms(okAt)}; load stopped at ${ms(stoppedAt)}`)
  t.comment(`${samples.length} requests in ${Math.round(stoppedAt - started)} ms (${statusCounts(samples)})`)
  t.comment(`max latency ${(slowest.end - slowest.start).toFixed(0)} ms (browser ${slowest.browser} on ${byN(slowest).master}, at ${ms(slowest.start)}); ` +
    `p50 ${percentile(latencies, 0.5).toFixed(1)} ms, p99 ${percentile(latencies, 0.99).toFixed(1)} ms; ` +
    `during the failover: ${around.length} requests, p99 ${percentile(around, 0.99).toFixed(1)} ms`)
  t.comment(`during the load: renewals ${events.renewed}, remember-me sign-ins ${events.remembered}`)
  t.comment(`store calls failed: ${failures.length}${failures.length > 0 ? '\n  ' + failureSummary(failures, undefined, masterOfPort).join('\n  ') : ''}`)
  t.comment(`outage log lines (${outage.length})${outage.length > 0 ? ':\n  ' + outage.map(showLine).join('\n  ') : ''}`)

  none(t, errors, 'every request answered 200: no 5xx, no 401')
  none(t, outage.map(showLine), 'no store failure logged: no renewal went unwritten')
  none(t, wrongUser, 'every 200 is the browser\'s own user')
  const { lost, remembered } = await finalCheck(browsers, events)
  t.comment(`final check: ${browsers.length - lost.length} of ${browsers.length} browsers signed in, ${remembered} of them by their remember-me token`)
  none(t, lost, 'after the failover every browser is still signed in as its user')
  none(t, alarms, 'no browser taken for a thief (session:reuse, persistent:reuse)')
})
