/**
 * Faults under load, against real redis-server processes (test/helpers/redis.ts): 20 browsers
 * (10 users, two browsers each, about half with remember-me) send a steady stream of requests
 * (authenticated requests that renew every 700 ms, remember-me sign-ins after a "browser
 * restart", logins, logouts, re-logins, revocations of the other browser of the same user,
 * session lists) while Redis is
 *   a. killed with SIGKILL and restarted, twice (append-only file, appendfsync always),
 *   b. stalled: CLIENT PAUSE; a script that blocks the server's event loop as DEBUG SLEEP does
 *      (DEBUG itself is refused: enable-debug-command defaults to no, cannot be changed at
 *      runtime, and the harness passes no server arguments); SIGSTOP/SIGCONT,
 *   c. cut off: CLIENT KILL TYPE normal, eight times, drops the app's connection; ioredis
 *      reconnects (and sends again the commands that had no answer).
 *
 * Each browser sends one request at a time and the test keeps what the server acknowledged: a
 * browser whose login, remember-me sign-in or request answered 200 is signed in; one whose
 * logout or revocation answered 2xx is revoked, and its cookies of that moment are kept as a
 * "revoked copy". After a 503 of a login, logout or revocation the browser's state is unknown (the
 * write may or may not have happened) until a request tells. Checked, in every scenario:
 *   - answers are 200/204, 401 only for browsers that are not signed in, 503
 *     POW_ERR_STORE_UNAVAILABLE only while a fault lasts (and a little after it), nothing else
 *     (no 500), and a 503 of a failed authentication sets no cookie;
 *   - every request is answered within commandTimeout plus a margin (time this process's event
 *     loop could not run left out: parallel test files starve it of CPU);
 *   - a signed-in browser never gets a 401, during the fault or after it, and after recovery (and
 *     after rotationGrace, so that nothing lives on borrowed time) every signed-in browser is
 *     still signed in as the same user and fingerprint: no acknowledged sign-in is lost;
 *   - no revoked copy ever authenticates again, neither with its session cookie nor with its
 *     remember-me cookie alone, during the run or after recovery;
 *   - revoking a signed-in browser answers 204 (or 503), not 404;
 *   - no browser is taken for a thief (session:reuse, persistent:reuse): every browser is honest,
 *     and a renewal or rotation whose answer a fault lost is reissued or claimed, never theft;
 *   - anonymous requests never need the store: always 401, at once, even during the fault.
 * The counts (faults, requests, 503s, logins, renewals, ...) are printed with t.comment.
 *
 * test/faults.test.ts (in npm test) puts the faults that the load hits by chance at an exact
 * point of one request. This file is the stress tier's (npm run test:stress): some 30 s of load.
 *
 * FAULTS_SEED=<n> replays the random choices of a run (printed with t.comment; the timing of
 * the faults is not replayed).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import type { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { RedisStore } from '../../lib/index.js'
import { buildApp } from '../helpers/app.js'
import { CookieJar } from '../helpers/jar.js'
import { readyClient, startRedis, waitForReady, type RedisServer } from '../helpers/redis.js'
import { Mutex, mulberry32 } from '../helpers/tools.js'

const COMMAND_TIMEOUT = 500
/** On top of commandTimeout: the other commands of the request, the answer's way back. */
const LATENCY_MARGIN = Number(process.env.FAULTS_LATENCY_MARGIN ?? 300)
/** How long after a fault ends a 503 still counts as caused by it (the backlog drains). */
const FAULT_SLACK = 400
const SESSION = { ttl: 30_000, renewAfter: 700, rotationGrace: 1000 }
const PERSISTENT = { ttl: 60_000 }
const USERS = 10

// ---------------------------------------------------------------------------------------------
// Small tools.

const BASE_SEED = process.env.FAULTS_SEED !== undefined ? Number(process.env.FAULTS_SEED) : Math.floor(Math.random() * 2 ** 31)

/** The pid of the test's own redis-server, from INFO. */
async function redisPid (admin: Redis): Promise<number> {
  const pid = Number(/process_id:(\d+)/.exec(await admin.info('server'))?.[1])
  if (!Number.isInteger(pid) || pid <= 0) throw new Error('no process_id in INFO server')
  return pid
}

/** Blocks the server's event loop for `ms`, as DEBUG SLEEP does (read-only, so SCRIPT KILL could end it). */
const BUSY_SCRIPT = `
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) * 1000000 + tonumber(n[2]) - start >= tonumber(ARGV[1]) * 1000 then return 1 end
end
`

const now = (): number => performance.now()

/**
 * Records when this process's event loop ran late (CPU starvation by parallel test files, GC,
 * a burst of answers after a fault): time that no request of the test could use, so the timing
 * checks leave it out. A 10 ms timer that fires late by more than 5 ms counts the delay.
 */
class LagMonitor {
  readonly stalls: Array<{ start: number, end: number }> = []
  #timer: NodeJS.Timeout | undefined

  start (): void {
    let previous = now()
    this.#timer = setInterval(() => {
      const at = now()
      if (at - previous > 15) this.stalls.push({ start: previous + 10, end: at })
      previous = at
    }, 10)
  }

  stop (): void {
    clearInterval(this.#timer)
  }

  /** Milliseconds of [start, end] during which the event loop was stalled. */
  within (start: number, end: number): number {
    let total = 0
    for (const s of this.stalls) total += Math.max(0, Math.min(end, s.end) - Math.max(start, s.start))
    return total
  }

  get max (): number {
    return this.stalls.reduce((max, s) => Math.max(max, s.end - s.start), 0)
  }
}

// ---------------------------------------------------------------------------------------------
// The load.

type State = 'anonymous' | 'signed-in' | 'unknown'

/** Requests whose only store calls are the authentication's (GET /me). */
const AUTHENTICATION_ONLY = new Set(['me', 'remember', 'final', 'revoked-probe'])

interface Browser {
  n: number
  userId: number
  jar: CookieJar
  state: State
  persistent: boolean
  fingerprint: string | undefined
  mutex: Mutex
  history: string[]
}

interface RevokedCopy {
  what: string
  jar: CookieJar
  fingerprint: string | undefined
}

interface Sample {
  op: string
  browser: number
  start: number
  end: number
  status: number
}

interface Fault {
  kind: string
  start: number
  end: number
}

class Load {
  readonly samples: Sample[] = []
  readonly faults: Fault[] = []
  readonly browsers: Browser[] = []
  readonly revoked: RevokedCopy[] = []
  readonly violations = {
    status: [] as string[],
    signedInGot401: [] as string[],
    revokedCameBack: [] as string[],
    revoke404: [] as string[],
    anonymous: [] as string[],
    lost: [] as string[]
  }

  readonly counts = {
    logins: 0, logouts: 0, revocations: 0, relogins: 0, rememberMe: 0, renewals: 0, lists: 0, revokedProbes: 0, anonymousProbes: 0
  }

  running = false
  readonly t0 = now()
  readonly lag = new LagMonitor()
  readonly #app: FastifyInstance
  readonly #client: Redis
  readonly #rng: () => number

  constructor (app: FastifyInstance, client: Redis, seed: number) {
    this.#app = app
    this.#client = client
    this.#rng = mulberry32(seed) // seeded, so that a run can be replayed with FAULTS_SEED
    for (let n = 0; n < 2 * USERS; n++) {
      this.browsers.push({
        n,
        userId: Math.floor(n / 2) + 1,
        jar: new CookieJar(app),
        state: 'anonymous',
        persistent: false,
        fingerprint: undefined,
        mutex: new Mutex(),
        history: []
      })
    }
  }

  #ms (at: number): string {
    return `+${Math.round(at - this.t0)}ms`
  }

  #note (b: Browser, text: string): void {
    b.history.push(`${this.#ms(now())} ${text}`)
    if (b.history.length > 14) b.history.shift()
  }

  #violation (list: string[], b: Browser | undefined, text: string): void {
    list.push(b === undefined ? text : `browser ${b.n} (user ${b.userId}): ${text}\n      ${b.history.join('\n      ')}`)
  }

  /** One request: timed, recorded, checked for statuses no request may ever get. */
  async #send (b: Browser | undefined, op: string, jar: CookieJar, options: InjectOptions | string): Promise<LightMyRequestResponse> {
    const start = now()
    const response = await jar.request(options)
    const end = now()
    const status = response.statusCode
    this.samples.push({ op, browser: b?.n ?? -1, start, end, status })
    if (b !== undefined) {
      const set = (response.cookies as Array<{ name: string, value: string }>).map((c) => `${c.name}${c.value === '' ? '(cleared)' : ''}`)
      this.#note(b, `${op} ${status} in ${Math.round(end - start)}ms${set.length > 0 ? ' set ' + set.join(',') : ''}`)
    }
    if (![200, 204, 401, 404, 503].includes(status)) {
      this.#violation(this.violations.status, b, `${op} answered ${status}: ${response.body.slice(0, 200)}`)
    }
    if (status === 503 && response.json().code !== 'POW_ERR_STORE_UNAVAILABLE') {
      this.#violation(this.violations.status, b, `${op} answered a 503 that is not POW_ERR_STORE_UNAVAILABLE: ${response.body}`)
    }
    // A 503 of a request whose authentication failed changes no cookie. (A handler's store call
    // that fails after a renewal in onRequest answers 503 with the renewed cookie, rightly.)
    if (status === 503 && AUTHENTICATION_ONLY.has(op) && response.headers['set-cookie'] !== undefined) {
      this.#violation(this.violations.status, b, `${op} answered 503 with set-cookie ${String(response.headers['set-cookie'])}`)
    }
    return response
  }

  #unexpected (b: Browser, op: string, response: LightMyRequestResponse): void {
    if (response.statusCode === 401 && b.state === 'signed-in') {
      this.#violation(this.violations.signedInGot401, b, `${op}: 401 for a signed-in browser`)
    } else if (response.statusCode !== 503) {
      this.#violation(this.violations.status, b, `${op}: unexpected ${response.statusCode} (state ${b.state})`)
    }
  }

  /** The browser's cookies, kept to check that they never authenticate again. */
  #keepRevoked (b: Browser, jar: CookieJar, what: string): void {
    if (jar.header() === '') return
    this.revoked.push({ what: `browser ${b.n} (user ${b.userId}) ${what} at ${this.#ms(now())}`, jar, fingerprint: b.fingerprint })
  }

  #reset (b: Browser): void {
    b.jar = new CookieJar(this.#app)
    b.state = 'anonymous'
    b.fingerprint = undefined
    b.persistent = false
  }

  async login (b: Browser, persistent: boolean): Promise<void> {
    const relogin = b.state === 'signed-in'
    const before = b.jar.clone()
    const response = await this.#send(b, relogin ? 'relogin' : 'login', b.jar, { method: 'POST', url: '/login', payload: { id: b.userId, persistent } })
    if (response.statusCode === 200) {
      relogin ? this.counts.relogins++ : this.counts.logins++
      // create() ended the browser's previous session and token first.
      if (relogin) this.#keepRevoked(b, before, 'signed in again (old cookies)')
      b.state = 'signed-in'
      b.persistent = persistent
      b.fingerprint = undefined
    } else if (response.statusCode === 503) {
      b.state = 'unknown'
    } else {
      this.#unexpected(b, 'login', response)
    }
  }

  /** GET /me, for a signed-in browser or one whose state is unknown. */
  async me (b: Browser, op = 'me'): Promise<void> {
    const response = await this.#send(b, op, b.jar, '/me')
    if (response.statusCode === 200) {
      const body = response.json() as { user: { id: number }, metadata: { fingerprint: string } }
      if (body.user.id !== b.userId) this.#violation(this.violations.status, b, `${op}: signed in as user ${body.user.id}`)
      const fingerprint = body.metadata.fingerprint
      if (b.state === 'signed-in' && b.fingerprint !== undefined && fingerprint !== b.fingerprint) {
        this.#violation(this.violations.status, b, `${op}: fingerprint changed from ${b.fingerprint} to ${fingerprint}`)
      }
      if (this.revoked.some((r) => r.fingerprint === fingerprint)) {
        this.#violation(this.violations.revokedCameBack, b, `${op}: signed in with the revoked fingerprint ${fingerprint}`)
      }
      if (b.state === 'unknown') b.persistent = b.jar.get('pow_persistent_session') !== undefined
      b.state = 'signed-in'
      b.fingerprint = fingerprint
      if (op === 'remember') this.counts.rememberMe++
      else if ((response.cookies as Array<{ name: string }>).some((c) => c.name === 'pow_session')) this.counts.renewals++
    } else if (response.statusCode === 401 && b.state === 'unknown') {
      this.#reset(b)
    } else if (response.statusCode !== 503) {
      this.#unexpected(b, op, response)
    }
  }

  /** A browser restart: the session cookie is gone, the remember-me cookie signs in. */
  async remember (b: Browser): Promise<void> {
    b.jar.delete('pow_session')
    await this.me(b, 'remember')
  }

  async logout (b: Browser): Promise<void> {
    const before = b.jar.clone()
    const response = await this.#send(b, 'logout', b.jar, { method: 'POST', url: '/logout' })
    if (response.statusCode === 204) {
      this.counts.logouts++
      this.#keepRevoked(b, before, 'logged out')
      this.#reset(b)
    } else if (response.statusCode === 503) {
      b.state = 'unknown'
    } else {
      this.#unexpected(b, 'logout', response)
    }
  }

  /** `b` signs out the other browser of its user (an odd-numbered one), which waits meanwhile. */
  async revokeSibling (b: Browser): Promise<void> {
    const s = this.browsers[b.n + 1] as Browser
    await s.mutex.run(async () => {
      if (s.state !== 'signed-in' || s.fingerprint === undefined) return await this.me(b)
      const before = s.jar.clone()
      const response = await this.#send(b, 'revoke', b.jar, { method: 'DELETE', url: `/sessions/${s.fingerprint}` })
      this.#note(s, `revoked by browser ${b.n}: ${response.statusCode}`)
      if (response.statusCode === 204) {
        this.counts.revocations++
        this.#keepRevoked(s, before, `revoked by browser ${b.n}`)
        this.#reset(s)
      } else if (response.statusCode === 503) {
        s.state = 'unknown'
      } else if (response.statusCode === 404) {
        this.#violation(this.violations.revoke404, s, `browser ${b.n} revoked this signed-in browser's fingerprint ${s.fingerprint}: 404, as if it did not exist`)
        s.state = 'unknown'
      } else {
        this.#unexpected(b, 'revoke', response)
      }
    })
  }

  async list (b: Browser): Promise<void> {
    const response = await this.#send(b, 'sessions', b.jar, '/sessions')
    if (response.statusCode === 200) {
      this.counts.lists++
      const sessions = response.json().sessions as Array<{ fingerprint: string, current: boolean }>
      const current = sessions.filter((s) => s.current)
      if (current.length !== 1 || (b.fingerprint !== undefined && current[0]?.fingerprint !== b.fingerprint)) {
        this.#violation(this.violations.status, b, `sessions: the list does not show this browser once as current: ${JSON.stringify(sessions)}`)
      }
    } else if (response.statusCode !== 503) {
      this.#unexpected(b, 'sessions', response)
    }
  }

  async step (b: Browser): Promise<void> {
    const r = this.#rng()
    if (b.state === 'anonymous') return await this.login(b, r < 0.5)
    if (b.state === 'unknown') return await this.me(b)
    if (r < 0.03) return await this.logout(b)
    if (r < 0.05) return await this.login(b, this.#rng() < 0.5)
    if (r < 0.08 && b.n % 2 === 0) return await this.revokeSibling(b)
    if (r < 0.15 && b.persistent) return await this.remember(b)
    if (r < 0.18) return await this.list(b)
    return await this.me(b)
  }

  async #browserLoop (b: Browser): Promise<void> {
    while (this.running) {
      await b.mutex.run(() => this.step(b))
      await sleep(5 + this.#rng() * 20)
    }
  }

  /** Revoked copies must never authenticate: with their session cookie, or their remember-me cookie alone. */
  async probeRevoked (copy: RevokedCopy, phase: string): Promise<void> {
    const variants: Array<[string, CookieJar]> = [['cookies', copy.jar.clone()]]
    if (copy.jar.get('pow_persistent_session') !== undefined) {
      const rememberOnly = copy.jar.clone()
      rememberOnly.delete('pow_session')
      variants.push(['remember-me cookie alone', rememberOnly])
    }
    for (const [what, jar] of variants) {
      const response = await this.#send(undefined, 'revoked-probe', jar, '/me')
      this.counts.revokedProbes++
      if (response.statusCode === 200) {
        this.#violation(this.violations.revokedCameBack, undefined, `${phase}: ${copy.what}: its ${what} signed in again as fingerprint ${response.json().metadata?.fingerprint}`)
      } else if (response.statusCode !== 401 && response.statusCode !== 503) {
        this.#violation(this.violations.status, undefined, `${phase}: ${copy.what}: its ${what} answered ${response.statusCode}`)
      }
    }
  }

  async #revokedLoop (): Promise<void> {
    while (this.running) {
      if (this.revoked.length > 0) await this.probeRevoked(this.revoked[Math.floor(this.#rng() * this.revoked.length)] as RevokedCopy, 'during the run')
      await sleep(10)
    }
  }

  /** A request without cookies needs no store: 401 at once, whatever Redis does. */
  async #anonymousLoop (): Promise<void> {
    const jar = new CookieJar(this.#app)
    while (this.running) {
      const start = now()
      const response = await jar.request('/me')
      const ms = now() - start
      this.counts.anonymousProbes++
      if (response.statusCode !== 401) this.violations.anonymous.push(`anonymous GET /me answered ${response.statusCode}`)
      if (ms - this.lag.within(start, start + ms) > 250) this.violations.anonymous.push(`anonymous GET /me took ${Math.round(ms)} ms at ${this.#ms(start)}`)
      await sleep(20)
    }
  }

  /** Signs every browser in (about half with remember-me) and learns their fingerprints. */
  async signInAll (): Promise<void> {
    for (const b of this.browsers) {
      await this.login(b, b.n % 4 < 2)
      await this.me(b)
      if (b.state !== 'signed-in') throw new Error(`browser ${b.n} could not sign in before the faults`)
    }
  }

  start (): Promise<void> {
    this.running = true
    this.lag.start()
    return Promise.all([
      ...this.browsers.map((b) => this.#browserLoop(b)),
      this.#revokedLoop(),
      this.#anonymousLoop()
    ]).then(() => this.lag.stop())
  }

  /**
   * Records a fault from now until `inject` resolves (it injects the fault and waits until Redis
   * answers again) and the app's client is ready again.
   */
  async fault (kind: string, inject: () => Promise<void>): Promise<void> {
    const fault: Fault = { kind, start: now(), end: Infinity }
    this.faults.push(fault)
    try {
      await inject()
      await waitForReady(this.#client)
    } finally {
      fault.end = now()
    }
  }

  /** After the load: every browser still signed in is signed in as itself; no revoked copy is. */
  async finalCheck (): Promise<{ signedIn: number, unknown: number }> {
    let signedIn = 0
    let unknown = 0
    for (const b of this.browsers) {
      if (b.state === 'signed-in') {
        signedIn++
        const response = await this.#send(b, 'final', b.jar, '/me')
        const fingerprint = response.statusCode === 200 ? response.json().metadata.fingerprint : undefined
        if (response.statusCode !== 200) {
          this.#violation(this.violations.lost, b, `after recovery: ${response.statusCode} for a signed-in browser (${b.persistent ? 'with' : 'without'} remember-me)`)
        } else if (b.fingerprint !== undefined && fingerprint !== b.fingerprint) {
          this.#violation(this.violations.lost, b, `after recovery: fingerprint ${fingerprint} instead of ${b.fingerprint}`)
        }
      } else if (b.state === 'unknown') {
        unknown++
        const response = await this.#send(b, 'final', b.jar, '/me')
        if (response.statusCode !== 200 && response.statusCode !== 401) {
          this.#violation(this.violations.status, b, `after recovery: ${response.statusCode} for a browser in an unknown state`)
        }
      }
    }
    for (const copy of this.revoked) await this.probeRevoked(copy, 'after recovery')
    return { signedIn, unknown }
  }

  /**
   * 503s outside every fault (plus slack) and answers slower than commandTimeout plus margin,
   * leaving out the time this process's event loop was stalled.
   */
  timing (): { outside: string[], slow: string[], maxMs: number } {
    const outside: string[] = []
    const slow: string[] = []
    let maxMs = 0
    for (const s of this.samples) {
      const ms = s.end - s.start - this.lag.within(s.start, s.end)
      maxMs = Math.max(maxMs, ms)
      if (ms > COMMAND_TIMEOUT + LATENCY_MARGIN) {
        slow.push(`${s.op} of browser ${s.browser} took ${Math.round(s.end - s.start)} ms (${s.status}) at ${this.#ms(s.start)}, ` +
          `${Math.round(ms)} ms of it with the event loop running`)
      }
      if (s.status === 503 && !this.faults.some((f) => s.end >= f.start && s.start <= f.end + FAULT_SLACK + this.lag.within(f.end, s.start))) {
        outside.push(`${s.op} of browser ${s.browser} answered 503 at ${this.#ms(s.start)}-${this.#ms(s.end)}, outside every fault (${this.timeline()})`)
      }
    }
    return { outside, slow, maxMs }
  }

  timeline (): string {
    return this.faults.map((f) => `${f.kind} ${this.#ms(f.start)}-${this.#ms(f.end)}`).join(', ')
  }

  count503 (fault?: Fault): number {
    return this.samples.filter((s) => s.status === 503 && (fault === undefined || (s.end >= fault.start && s.start <= fault.end + FAULT_SLACK))).length
  }
}

/** Lists at most 20 entries in the assertion's diagnostics. */
function none (t: Test, list: string[], message: string): void {
  t.same(list.slice(0, 20), [], `${message}${list.length > 20 ? ` (${list.length} in all, first 20 shown)` : ''}`)
}

/**
 * Runs one scenario: an app on RedisStore over `server`, all browsers signed in, the load
 * started; `faults(load)` injects the faults (recording each with load.fault) while the load
 * runs; then the load goes on for `after` ms, stops, and everything is checked once
 * rotationGrace has passed.
 */
async function scenario (
  t: Test, server: RedisServer, seed: number, faults: (load: Load, client: Redis) => Promise<void>, after = 1500
): Promise<Load> {
  const client = await readyClient(server)
  let started = now()
  let drops = 0
  const events: string[] = []
  client.on('close', () => { drops++ })
  for (const event of ['close', 'ready', 'reconnecting', 'end', 'connect']) {
    client.on(event, () => events.push(`${event} +${Math.round(now() - started)}`))
  }
  client.on('error', (err: Error) => events.push(`error ${err.message} +${Math.round(now() - started)}`))
  const app = await buildApp(t, {
    store: new RedisStore(client, { commandTimeout: COMMAND_TIMEOUT }),
    session: SESSION,
    persistentSession: PERSISTENT
  })
  const alarms: string[] = []
  for (const kind of ['session:reuse', 'persistent:reuse'] as const) {
    app.pow.on(kind, (event) => alarms.push(`${kind}: user ${event.userKey} fingerprint ${event.fingerprint} at +${Math.round(now() - started)}ms`))
  }
  const load = new Load(app, client, seed)
  await load.signInAll()
  started = load.t0
  const running = load.start()
  try {
    await sleep(1000)
    await faults(load, client)
    await waitForReady(client)
    await sleep(after)
  } finally {
    load.running = false
    await running
  }
  const loadMs = now() - started
  // Past rotationGrace: a session id retired by a renewal whose cookie never arrived is gone now.
  await sleep(SESSION.rotationGrace + 300)
  const { signedIn, unknown } = await load.finalCheck()
  const { outside, slow, maxMs } = load.timing()

  const c = load.counts
  if (process.env.FAULTS_DEBUG !== undefined) t.comment(events.join('\n'))
  const perFault = load.faults.map((f) => `${f.kind} ${Math.round(f.end - f.start)} ms: ${load.count503(f)} 503s`).join('; ')
  t.comment(`seed ${seed}; ${load.faults.length} faults injected (${perFault}); app connection closed ${drops} times`)
  t.comment(`faults at ${load.timeline()}`)
  t.comment(`${load.samples.length} requests in ${Math.round(loadMs)} ms + final checks, ${load.count503()} answered 503, ` +
    `slowest ${Math.round(maxMs)} ms with the event loop running (bound ${COMMAND_TIMEOUT + LATENCY_MARGIN} ms); ` +
    `event loop late ${load.lag.stalls.length} times, at most ${Math.round(load.lag.max)} ms`)
  t.comment(`logins ${c.logins}, re-logins ${c.relogins}, logouts ${c.logouts}, revocations ${c.revocations}, ` +
    `remember-me sign-ins ${c.rememberMe}, renewals ${c.renewals}, session lists ${c.lists}; anonymous probes ${c.anonymousProbes}; ` +
    `revoked copies ${load.revoked.length}, probed ${c.revokedProbes} times`)
  t.comment(`after recovery: ${signedIn} browsers signed in, ${unknown} in an unknown state after a 503 of a login, logout or revocation`)

  t.ok(load.revoked.length > 0, 'some browsers were revoked or logged out during the run')
  none(t, load.violations.status, 'only 200, 204, 401 for browsers that are not signed in, and 503 POW_ERR_STORE_UNAVAILABLE (without cookies for a failed authentication)')
  none(t, outside, '503s only during a fault')
  none(t, slow, `every request answered within commandTimeout + ${LATENCY_MARGIN} ms`)
  none(t, load.violations.anonymous, 'anonymous requests: 401 at once, without the store')
  none(t, load.violations.signedInGot401, 'no 401 for a signed-in browser that was not revoked, during the fault or after')
  none(t, load.violations.lost, 'no acknowledged sign-in lost: every signed-in browser still signed in after recovery')
  none(t, load.violations.revokedCameBack, 'no revoked session or remember-me token came back')
  none(t, load.violations.revoke404, 'revoking a signed-in browser answers 204 (or 503), never 404')
  none(t, alarms, 'no browser taken for a thief')
  return load
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

test('faults under load: Redis killed (SIGKILL) and restarted, with appendfsync always', async (t) => {
  const server = await startRedis(t, { persistence: true })
  const admin = await readyClient(server)
  const load = await scenario(t, server, BASE_SEED + 1, async (load) => {
    for (let i = 0; i < 2; i++) {
      if (i > 0) await sleep(1500)
      const pid = await redisPid(admin)
      await load.fault('SIGKILL + restart', async () => {
        process.kill(pid, 'SIGKILL')
        await sleep(500) // down under load; the harness sees the process exit meanwhile
        await server.start()
        const restarted = await redisPid(admin)
        if (restarted === pid) throw new Error('redis-server was not restarted')
      })
    }
  })
  t.ok(load.count503() > 0, 'the kills were seen as 503s')
})

test('faults under load: Redis stalled by CLIENT PAUSE, a blocking script (as DEBUG SLEEP) and SIGSTOP', async (t) => {
  const server = await startRedis(t)
  const admin = await readyClient(server)
  let stoppedPid: number | undefined
  t.teardown(() => { if (stoppedPid !== undefined) process.kill(stoppedPid, 'SIGCONT') })
  const STALL = 1500
  const load = await scenario(t, server, BASE_SEED + 2, async (load) => {
    await load.fault('CLIENT PAUSE', async () => {
      await server.pause(STALL)
      await admin.ping() // answered once the pause is over
    })
    await sleep(1500)
    await load.fault('busy script', async () => {
      await admin.eval(BUSY_SCRIPT, 0, STALL)
    })
    await sleep(1500)
    const pid = await redisPid(admin)
    await load.fault('SIGSTOP', async () => {
      stoppedPid = pid
      process.kill(pid, 'SIGSTOP')
      await sleep(STALL)
      process.kill(pid, 'SIGCONT')
      stoppedPid = undefined
      await admin.ping()
    })
  })
  for (const fault of load.faults) t.ok(load.count503(fault) > 0, `${fault.kind}: requests that needed the store answered 503`)
})

test('faults under load: connections dropped by CLIENT KILL TYPE normal, ioredis reconnects', async (t) => {
  const server = await startRedis(t)
  const admin = await readyClient(server)
  let killed = 0
  const load = await scenario(t, server, BASE_SEED + 3, async (load, client) => {
    for (let i = 0; i < 8; i++) {
      await sleep(300)
      await load.fault('CLIENT KILL', async () => {
        const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
        killed += Number(await admin.call('CLIENT', 'KILL', 'TYPE', 'normal'))
        await Promise.race([closed, sleep(1000)])
        await waitForReady(client)
      })
    }
  })
  t.comment(`CLIENT KILL closed ${killed} connections`)
  t.ok(killed >= load.faults.length, 'every CLIENT KILL closed connections')
})
