/**
 * Soak, short enough for CI: SOAK_SECONDS (default 60) of a steady request rate against two apps
 * at once, one on a MemoryStore and one on a RedisStore over the test's own redis-server, with
 * TTLs short enough to expire many times over during the run (session ttl 3 s, renewAfter 1 s,
 * rotationGrace 500 ms, remember-me 6 s). 20 browsers per app sign in (half of the logins with
 * remember-me) as users that change every 10 s, make authenticated requests (renewed every
 * second), restart (session cookie gone: a remember-me sign-in), fall idle past the session or
 * the remember-me ttl, update their user, list and revoke sessions, and log out. A 5 s warm-up
 * of the same load, after which everyone logs out, comes before the baselines.
 *
 * Checked:
 *   - no answer but 200/204/401, and 401 only where the TTLs say so (judged on measured times,
 *     see Soak): a browser is signed in while its session or remember-me token must still live,
 *     signed out once they must be gone (a session past its ttl, a token past its ttl even when
 *     the browser sends it after its Max-Age), and a revoked browser is signed out;
 *   - MemoryStore: once the TTLs have passed and one more write has evicted, the store holds
 *     nothing (devices, users, expiry heap nodes all 0), and the heap after full GCs,
 *     compiled code aside, is back within 1.5 MB of its baseline (0.3 to 0.5 MB above it after
 *     60 s: bytecode and type feedback of code first run during the soak). The plugin's bounded
 *     caches (verified cookies, parsed device records) are refilled alike before both
 *     measurements, so that what they hold is not counted as growth;
 *   - Redis: at every sample (once a second, SCAN and PTTL of every key) no key lacks a TTL, and
 *     once the TTLs have passed DBSIZE is back at its baseline (0).
 * The counts (requests, samples, max entries and keys, final keys, heap before and after) are
 * printed with t.comment.
 *
 * SOAK_SECONDS=<s> and SOAK_RATE=<requests per second per app> (default 200) change the load
 * (past SOAK_SECONDS=90, raise tap's per-file timeout: tap --timeout); SOAK_HEAP_MARGIN=<bytes>
 * the heap margin.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import v8 from 'node:v8'
import vm from 'node:vm'
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import type { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { MemoryStore, RedisStore } from '../../lib/index.js'
import { buildApp } from '../helpers/app.js'
import { CookieJar } from '../helpers/jar.js'
import { startRedis } from '../helpers/redis.js'
import { Mutex } from '../helpers/tools.js'

const SOAK_SECONDS = Number(process.env.SOAK_SECONDS ?? 60)
const SOAK_RATE = Number(process.env.SOAK_RATE ?? 200)
const BROWSERS = 20
const SESSION = { ttl: 3000, renewAfter: 1000, rotationGrace: 500 }
const PERSISTENT = { ttl: 6000 }
/** Users change every this many ms, so that old users' keys have to expire. */
const USER_EPOCH_MS = 10_000
const SAMPLE_MS = 1000
/** Load before the heap baseline, so that it holds the optimized code and not only the soak's leftovers do. */
const WARM_UP_SECONDS = 5
/** Heap growth (compiled code aside) left after the soak, the TTLs and a full GC that still counts as "back at baseline". */
const HEAP_MARGIN = Number(process.env.SOAK_HEAP_MARGIN ?? 1.5 * 1024 * 1024)
/**
 * Sign-ins that refill the plugin's bounded caches before each heap measurement: more than the
 * 1024 verified cookie values and the 512 parsed device records (lib/pow.ts, lib/parsed.ts)
 * each app keeps, so that both measurements find them full of entries of the same size.
 */
const CACHE_REFILL = 1100

// The harness runs tests in a plain node process: get a full GC without --expose-gc on the command line.
v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc') as () => void

/**
 * The heap in use after full GCs (the least of five), without compiled code: the soak's hot
 * paths get optimized as it runs, and that code stays (a heap snapshot diff shows the rest of
 * the heap back where it was).
 */
async function settledHeap (): Promise<{ data: number, code: number }> {
  let least = { data: Infinity, code: 0 }
  for (let i = 0; i < 5; i++) {
    gc()
    await sleep(20)
    const code = v8.getHeapSpaceStatistics()
      .filter((space) => space.space_name.startsWith('code'))
      .reduce((sum, space) => sum + space.space_used_size, 0)
    const data = process.memoryUsage().heapUsed - code
    if (data < least.data) least = { data, code }
  }
  return least
}

/**
 * A commit of no device for a user who has none: a write that changes nothing, so all it does is
 * what every MemoryStore write does first, evicting the devices whose TTL has passed.
 */
async function evictExpired (store: MemoryStore): Promise<void> {
  const { ok } = await store.commit({ userKey: 'soak: nobody', devices: [] })
  if (!ok) throw new Error('an empty commit must succeed')
}

const mb = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(1)} MB`
const now = (): number => performance.now()

interface Browser {
  n: number
  userId: number
  jar: CookieJar
  signedIn: boolean
  persistent: boolean
  fingerprint: string | undefined
  /** When the browser's last request that answered 200 signed in started and ended. */
  okStart: number
  okEnd: number
  mutex: Mutex
}

/**
 * The steady load on one app, with the checks that the TTLs imply. They are judged on measured
 * times, so that a test process starved of CPU is not taken for a store that expires too soon:
 *   - a session id used at time T was issued at most renewAfter before T (else T renewed it), so
 *     it lives at least until T + ttl - renewAfter (2 s), and at most until T + ttl (3 s);
 *   - a remember-me token is extended by every renewal, so it lives at least until about
 *     T + ttl - renewAfter - one request period (4.9 s), and at most until T + its ttl (6 s).
 */
class Soak {
  readonly statuses = new Map<number, number>()
  readonly violations: string[] = []
  readonly counts = {
    requests: 0, logins: 0, logouts: 0, renewals: 0, rememberMe: 0, idle: 0, expired: 0, tokensExpired: 0, updates: 0, lists: 0, revocations: 0
  }

  running = false
  /** Ends idle browsers' waits when the soak stops. */
  #stop = new AbortController()
  readonly #app: FastifyInstance
  readonly name: string
  readonly #browsers: Browser[] = []
  readonly #t0 = now()

  constructor (app: FastifyInstance, name: string) {
    this.#app = app
    this.name = name
    for (let n = 0; n < BROWSERS; n++) {
      this.#browsers.push({
        n, userId: 0, jar: new CookieJar(app), signedIn: false, persistent: false, fingerprint: undefined, okStart: 0, okEnd: 0, mutex: new Mutex()
      })
    }
  }

  #violation (b: Browser, text: string): void {
    if (this.violations.length < 1000) this.violations.push(`${this.name} browser ${b.n} (user ${b.userId}) at +${Math.round(now() - this.#t0)}ms: ${text}`)
  }

  /** One request of a signed-in browser (or one that was): judged against the TTLs, the browser updated. */
  async #send (b: Browser, what: string, options: InjectOptions | string, jar = b.jar): Promise<LightMyRequestResponse> {
    const start = now()
    const response = await jar.request(options)
    const end = now()
    this.counts.requests++
    this.statuses.set(response.statusCode, (this.statuses.get(response.statusCode) ?? 0) + 1)
    const status = response.statusCode
    if (![200, 204, 401].includes(status)) this.#violation(b, `${what}: answered ${status}: ${response.body.slice(0, 200)}`)
    // The remember-me cookie is set only with a new session id: when the token is issued (a
    // login) or rotated (a remember-me sign-in), or when a renewal moves its expiry. Never on
    // its own (clearing it aside).
    const set = response.cookies as Array<{ name: string, value: string }>
    if (set.some((c) => c.name === 'pow_persistent_session' && c.value !== '') && !set.some((c) => c.name === 'pow_session' && c.value !== '')) {
      this.#violation(b, `${what}: set the remember-me cookie without a new session id`)
    }
    if (!b.signedIn) return response
    if (status === 401) {
      const since = end - b.okStart
      const lives = b.persistent ? 4000 : 1900
      if (since < lives) this.#violation(b, `${what}: 401 ${Math.round(since)} ms after its last request, though its ${b.persistent ? 'remember-me token' : 'session'} lives longer`)
      this.#signOut(b)
    } else if (status === 200 || status === 204) {
      const idle = start - b.okEnd
      if (status === 200 && !b.persistent && idle > SESSION.ttl + 100) this.#violation(b, `${what}: 200 ${Math.round(idle)} ms after its last request: the session outlived its ttl`)
      b.okStart = start
      b.okEnd = end
    }
    return response
  }

  #signOut (b: Browser): void {
    b.signedIn = false
    b.fingerprint = undefined
    b.jar = new CookieJar(this.#app)
  }

  async #login (b: Browser): Promise<void> {
    // Browser pairs share a user; users change every USER_EPOCH_MS.
    b.userId = Math.floor(b.n / 2) * 1_000_000 + Math.floor((now() - this.#t0) / USER_EPOCH_MS) + 1
    const persistent = Math.random() < 0.5
    const start = now()
    const response = await this.#send(b, 'login', { method: 'POST', url: '/login', payload: { id: b.userId, persistent } })
    if (response.statusCode !== 200) return this.#violation(b, `login answered ${response.statusCode}`)
    this.counts.logins++
    b.signedIn = true
    b.persistent = persistent
    b.fingerprint = undefined
    b.okStart = start
    b.okEnd = now()
  }

  async #me (b: Browser, what: string): Promise<void> {
    const remembering = b.jar.get('pow_session') === undefined && b.jar.get('pow_persistent_session') !== undefined
    const response = await this.#send(b, what, '/me')
    if (response.statusCode !== 200) return
    const body = response.json() as { user: { id: number }, metadata: { fingerprint: string } }
    if (body.user.id !== b.userId) this.#violation(b, `${what}: signed in as user ${body.user.id}`)
    if (b.fingerprint !== undefined && body.metadata.fingerprint !== b.fingerprint) this.#violation(b, `${what}: another fingerprint`)
    b.fingerprint = body.metadata.fingerprint
    if (remembering) this.counts.rememberMe++
    else if ((response.cookies as Array<{ name: string }>).some((c) => c.name === 'pow_session')) this.counts.renewals++
  }

  async #idle (b: Browser): Promise<void> {
    this.counts.idle++
    if (!b.persistent || Math.random() < 0.5) {
      // Past the session ttl: remember-me signs the browser in again, or it is signed out.
      if (!await this.#wait(SESSION.ttl + 500)) return this.#signOut(b)
      await this.#me(b, 'after idling past the session ttl')
      if (!b.signedIn) this.counts.expired++
      return
    }
    // Past the remember-me ttl: the token is gone from the store too (sent anyway, past its Max-Age).
    const token = b.jar.get('pow_persistent_session') as string
    if (!await this.#wait(PERSISTENT.ttl + 500)) return this.#signOut(b)
    const jar = b.jar.clone()
    jar.set('pow_persistent_session', token)
    const response = await this.#send(b, 'a remember-me token past its ttl', '/me', jar)
    if (response.statusCode !== 401) this.#violation(b, `a remember-me token past its ttl answered ${response.statusCode}`)
    this.counts.tokensExpired++
    this.#signOut(b)
  }

  /** Sleeps `ms`; false when the soak stopped meanwhile. */
  async #wait (ms: number): Promise<boolean> {
    try {
      await sleep(ms, undefined, { signal: this.#stop.signal })
      return true
    } catch {
      return false
    }
  }

  async #step (b: Browser): Promise<void> {
    if (!b.signedIn) return await this.#login(b)
    const r = Math.random()
    if (r < 0.004) return await this.#idle(b)
    if (r < 0.04) {
      const response = await this.#send(b, 'logout', { method: 'POST', url: '/logout' })
      if (response.statusCode === 204) this.counts.logouts++
      return this.#signOut(b)
    }
    if (r < 0.08 && b.persistent) {
      b.jar.delete('pow_session') // a browser restart
      return await this.#me(b, 'remember-me sign-in')
    }
    if (r < 0.09) {
      const response = await this.#send(b, 'PATCH /me', { method: 'PATCH', url: '/me', payload: { name: `user ${b.userId} ${Math.random()}` } })
      if (response.statusCode === 200) this.counts.updates++
      return
    }
    if (r < 0.11) {
      const response = await this.#send(b, 'GET /sessions', '/sessions')
      if (response.statusCode === 200) this.counts.lists++
      return
    }
    if (r < 0.12 && b.n % 2 === 0) {
      // Sign out the other browser of this user (which waits meanwhile).
      const other = this.#browsers[b.n + 1] as Browser
      return await other.mutex.run(async () => {
        const response = await this.#send(b, 'DELETE /sessions', { method: 'DELETE', url: '/sessions' })
        if (response.statusCode !== 200) return
        this.counts.revocations++
        const revoked = response.json().revoked as string[]
        if (other.signedIn && other.userId === b.userId) {
          const live = now() - other.okStart < (other.persistent ? 4000 : 1900)
          if (live && other.fingerprint !== undefined && !revoked.includes(other.fingerprint)) {
            this.#violation(other, `not among the fingerprints its user revoked: ${revoked.join(', ')}`)
          }
          other.signedIn = false // now a 401 is what it must get
          const answer = await this.#send(other, 'revoked by the other browser', '/me')
          if (answer.statusCode !== 401) this.#violation(other, `revoked by the other browser, answered ${answer.statusCode}`)
          this.#signOut(other)
        }
      })
    }
    return await this.#me(b, 'an active browser')
  }

  async #loop (b: Browser, period: number): Promise<void> {
    await sleep(Math.random() * period)
    let next = now()
    while (this.running) {
      await b.mutex.run(() => this.#step(b))
      next = Math.max(next + period, now() - period)
      await sleep(Math.max(0, next - now()))
    }
  }

  async run (seconds: number, rate: number): Promise<void> {
    this.running = true
    this.#stop = new AbortController()
    const period = 1000 * BROWSERS / rate
    const loops = this.#browsers.map((b) => this.#loop(b, period))
    await sleep(seconds * 1000)
    this.running = false
    this.#stop.abort()
    await Promise.all(loops)
  }

  /**
   * Before the baselines: every kind of request once per browser (login with and without
   * remember-me, an authenticated request, a renewal, a remember-me sign-in, an update, a
   * session list, a revocation, a logout), then WARM_UP_SECONDS of the soak itself, so that the
   * code is compiled and optimized; then every signed-in browser logs out, which leaves little
   * stored (the devices of browsers that were idle when it stopped, until they expire).
   */
  async warmUp (): Promise<void> {
    for (const b of this.#browsers) {
      await this.#login(b)
      await this.#me(b, 'warm-up')
      await this.#send(b, 'warm-up', { method: 'PATCH', url: '/me', payload: { name: 'warm-up' } })
      await this.#send(b, 'warm-up', '/sessions')
    }
    await sleep(SESSION.renewAfter + 100)
    for (const b of this.#browsers) {
      await this.#me(b, 'warm-up renewal')
      if (b.persistent) {
        b.jar.delete('pow_session')
        await this.#me(b, 'warm-up remember-me sign-in')
      }
    }
    for (const b of this.#browsers) {
      if (b.n % 2 !== 0) continue
      // Signs the other browser of the user out.
      await this.#send(b, 'warm-up', { method: 'DELETE', url: '/sessions' })
      const other = this.#browsers[b.n + 1] as Browser
      other.signedIn = false
      const answer = await this.#send(other, 'warm-up: revoked by the other browser', '/me')
      if (answer.statusCode !== 401) this.#violation(other, `revoked by the other browser, answered ${answer.statusCode}`)
    }
    await this.run(WARM_UP_SECONDS, SOAK_RATE)
    for (const b of this.#browsers) {
      if (b.signedIn) await this.#send(b, 'warm-up logout', { method: 'POST', url: '/logout' })
      this.#signOut(b)
    }
    this.statuses.clear()
    for (const key of Object.keys(this.counts) as Array<keyof Soak['counts']>) this.counts[key] = 0
  }

  /**
   * Puts the app's bounded caches in the same state before each heap measurement: fresh devices
   * of the same users sign in, are read once and sign out, one after the other, until every
   * cached cookie and record is one of theirs. Without it the heap after the soak would count the
   * caches filled by the soak's records (larger than the warm-up's: each device carries its
   * retired secrets) as growth, and a leak could hide behind a margin wide enough for them.
   */
  async refillCaches (): Promise<void> {
    for (let i = 0; i < CACHE_REFILL; i++) {
      const jar = new CookieJar(this.#app)
      const login = await jar.request({ method: 'POST', url: '/login', payload: { id: 900_000_000 + i } })
      const me = await jar.request('/me')
      const logout = await jar.request({ method: 'POST', url: '/logout' })
      if (login.statusCode !== 200 || me.statusCode !== 200 || logout.statusCode !== 204) {
        throw new Error(`${this.name}: refilling the caches: ${login.statusCode} ${me.statusCode} ${logout.statusCode}`)
      }
    }
  }

  summary (): string {
    const c = this.counts
    const statuses = [...this.statuses].sort(([a], [b]) => a - b).map(([s, n]) => `${s}: ${n}`).join(', ')
    return `${this.name}: ${c.requests} requests (${statuses}); logins ${c.logins}, renewals ${c.renewals}, remember-me sign-ins ${c.rememberMe}, ` +
      `idle ${c.idle} (${c.expired} signed out by the session ttl, ${c.tokensExpired} remember-me tokens expired), logouts ${c.logouts}, ` +
      `revocations ${c.revocations}, user updates ${c.updates}, session lists ${c.lists}`
  }
}

/** Every key of the test's own server with its PTTL (SCAN, then PTTL in one pipeline). */
async function keysWithTtl (admin: Redis): Promise<Array<[string, number]>> {
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, batch] = await admin.scan(cursor, 'COUNT', 1000)
    cursor = next
    keys.push(...batch)
  } while (cursor !== '0')
  const pipeline = admin.pipeline()
  for (const key of keys) pipeline.pttl(key)
  const results = await pipeline.exec() ?? []
  return keys.map((key, i) => [key, Number(results[i]?.[1])])
}

function none (t: Test, list: string[], message: string): void {
  t.same(list.slice(0, 20), [], `${message}${list.length > 20 ? ` (${list.length} in all, first 20 shown)` : ''}`)
}

test(`soak: ${SOAK_SECONDS} s at ${SOAK_RATE} requests/s on a MemoryStore and on Redis at once; everything expires`, async (t) => {
  t.setTimeout((SOAK_SECONDS + 60) * 1000)
  const server = await startRedis(t)
  const admin = server.client()
  const client = server.client()
  const options = { session: SESSION, persistentSession: PERSISTENT }
  const memoryStore = new MemoryStore()
  const memoryApp = await buildApp(t, { ...options, store: memoryStore })
  const redisApp = await buildApp(t, { ...options, store: new RedisStore(client) })
  const memory = new Soak(memoryApp, 'MemoryStore')
  const redis = new Soak(redisApp, 'Redis')
  // Baselines: the empty server, and the heap once the code (the sampler's too) has run and
  // everyone logged out.
  const keysBefore = await server.dbsize()
  // Samples once a second from the warm-up to the end of the soak.
  let sampling = true
  const noTtl: string[] = []
  let samples = 0
  let maxKeys = 0
  let keysScanned = 0
  const maxSize = { devices: 0, users: 0, heap: 0 }
  let maxHeap = 0
  const sampler = (async () => {
    // eslint-disable-next-line no-unmodified-loop-condition -- cleared when the load ends
    while (sampling) {
      await sleep(SAMPLE_MS)
      samples++
      const size = memoryStore.size
      for (const key of Object.keys(maxSize) as Array<keyof typeof maxSize>) maxSize[key] = Math.max(maxSize[key], size[key])
      maxHeap = Math.max(maxHeap, process.memoryUsage().heapUsed)
      const keys = await keysWithTtl(admin)
      keysScanned += keys.length
      maxKeys = Math.max(maxKeys, keys.length)
      for (const [key, pttl] of keys) {
        if (pttl === -1 && noTtl.length < 100) noTtl.push(`sample ${samples}: ${key} (${await admin.type(key)}) has no TTL`)
      }
    }
  })()

  await Promise.all([memory.warmUp(), redis.warmUp()])
  await Promise.all([memory.refillCaches(), redis.refillCaches()])
  await evictExpired(memoryStore)
  const heapBefore = await settledHeap()
  t.comment(`baseline: MemoryStore ${JSON.stringify(memoryStore.size)} after the warm-up, ` +
    `heap ${mb(heapBefore.data)} (and ${mb(heapBefore.code)} of code); Redis ${keysBefore} keys before it`)

  const started = now()
  await Promise.all([memory.run(SOAK_SECONDS, SOAK_RATE), redis.run(SOAK_SECONDS, SOAK_RATE)])
  const loadMs = now() - started
  sampling = false
  await sampler

  // Once every TTL has passed (the longest is the remember-me token's), everything must be gone.
  await sleep(PERSISTENT.ttl + 1000)
  const sizeBeforeEviction = memoryStore.size
  await evictExpired(memoryStore)
  const sizeAfter = memoryStore.size
  await Promise.all([memory.refillCaches(), redis.refillCaches()])
  const heapAfter = await settledHeap()
  let keysAfter = await server.dbsize()
  const waitStarted = now()
  // Redis expires keys lazily and in an active cycle that samples keys: give it a few seconds.
  while (keysAfter !== keysBefore && now() - waitStarted < 10_000) {
    await sleep(100)
    keysAfter = await server.dbsize()
  }
  const leftover = keysAfter === keysBefore ? [] : (await keysWithTtl(admin)).slice(0, 20).map(([key, pttl]) => `${key} PTTL ${pttl}`)
  for (const [key, pttl] of await keysWithTtl(admin)) {
    if (pttl === -1) noTtl.push(`after the soak: ${key} has no TTL`)
  }

  t.comment(memory.summary())
  t.comment(redis.summary())
  t.comment(`${Math.round(loadMs)} ms of load, ${samples} samples; MemoryStore max ${JSON.stringify(maxSize)}, ` +
    `${JSON.stringify(sizeBeforeEviction)} before the last eviction, ${JSON.stringify(sizeAfter)} after`)
  const heapGrowth = heapAfter.data - heapBefore.data
  t.comment(`heap without code: ${mb(heapBefore.data)} before, ${mb(heapAfter.data)} after a full GC ` +
    `(${heapGrowth >= 0 ? '+' : ''}${mb(heapGrowth)}, margin ${mb(HEAP_MARGIN)}); max heap ${mb(maxHeap)} during the soak (without GC); ` +
    `code ${mb(heapBefore.code)} before, ${mb(heapAfter.code)} after`)
  t.comment(`Redis: ${keysBefore} keys before, max ${maxKeys} at a sample (${keysScanned} PTTLs read), ${keysAfter} after (${Math.round(now() - waitStarted)} ms after the TTLs passed)`)

  for (const soak of [memory, redis]) {
    const c = soak.counts
    t.ok(c.requests > SOAK_SECONDS * SOAK_RATE * 0.5, `${soak.name}: a steady load (${c.requests} requests)`)
    t.ok(c.renewals > 0 && c.rememberMe > 0 && c.logouts > 0 && c.revocations > 0, `${soak.name}: renewals, remember-me sign-ins, logouts and revocations happened`)
    // Idling is rare (0.4% of the steps): a short soak may see none.
    if (SOAK_SECONDS >= 30) t.ok(c.expired > 0 && c.tokensExpired > 0, `${soak.name}: sessions and remember-me tokens expired`)
  }
  none(t, memory.violations, 'MemoryStore: answers as the TTLs say')
  none(t, redis.violations, 'Redis: answers as the TTLs say')
  t.ok(maxSize.devices > 0 && maxSize.users > 0 && maxKeys > 0, 'the stores held entries during the soak')
  t.same(sizeAfter, { devices: 0, users: 0, heap: 0 }, 'MemoryStore: nothing left once the TTLs have passed and a write has evicted')
  t.ok(heapGrowth < HEAP_MARGIN, `MemoryStore: heap back at its baseline after a full GC (${mb(heapGrowth)} above it)`)
  t.ok(samples >= Math.floor(SOAK_SECONDS * 1000 / SAMPLE_MS) - 2, `Redis sampled once a second (${samples} samples)`)
  none(t, noTtl, 'Redis: no key without a TTL at any sample')
  t.equal(keysAfter, keysBefore, `Redis: the key count is back at its baseline once the TTLs have passed${leftover.length > 0 ? `; left: ${leftover.join(', ')}` : ''}`)
})
