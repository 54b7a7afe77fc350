/**
 * PostgreSQL outages, made by a TCP proxy between the pool and the server (test/helpers/tcp-proxy.ts),
 * never by stopping the machine's server: with the connection cut (reset at once) or stalled (a
 * black hole only `commandTimeout` notices), a request that needs the store answers a 503
 * POW_ERR_STORE_UNAVAILABLE within a bounded time, sets no cookie and writes no row; once the
 * proxy forwards again the same cookies work. The outage is logged once, not per request.
 *
 * Elapsed times are measured with the real clock on purpose: bounded latency is the point here.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import pg from 'pg'
import type { Test } from 'tap'
import { PostgresStore, type PostgresStoreOptions, type PowOptions } from '../lib/index.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import type { CookieJar } from './helpers/jar.js'
import { assertUnavailable, loggedApp, timed } from './helpers/outage.js'
import { createDatabase, pgTest, type TestDatabase } from './helpers/postgres.js'
import { startProxy, type TcpProxy } from './helpers/tcp-proxy.js'

const COMMAND_TIMEOUT = 500
// Generous: a loaded machine answers late, but never as late as an unbounded wait would.
const MARGIN = 1000
const MINUTE = 60_000

interface Outage {
  db: TestDatabase
  proxy: TcpProxy
  /** The pool of the app's store, through the proxy. */
  pool: pg.Pool
  /** The options of the app's store: the case's own tables, the short commandTimeout, no sweep. */
  options: PostgresStoreOptions
  /** The case's table, quoted. */
  table: string
  /** Every row of the case's table, read directly (not through the proxy). */
  rows: () => Promise<unknown[]>
}

let prefixes = 0

/**
 * For one case: its own tables in the file's database (created directly), a proxy to the server,
 * and a pool through the proxy. Teardowns run last-registered first: the pool is ended (the proxy
 * forwarding again, so that no stalled connection holds it up) before the proxy closes, and both
 * before the database is dropped (a teardown of the parent test).
 */
async function outage (t: Test, db: TestDatabase): Promise<Outage> {
  const tablePrefix = `outage${++prefixes}_`
  await new PostgresStore(db.pool({ max: 1 }), { tablePrefix, sweepInterval: 0 }).migrate()
  const target = new URL(db.url)
  const proxy = await startProxy(t, { host: target.hostname, port: Number(target.port || 5432) })
  const url = new URL(db.url)
  url.hostname = proxy.host
  url.port = String(proxy.port)
  const pool = new pg.Pool({ connectionString: url.href, connectionTimeoutMillis: 1000 })
  pool.on('error', () => {})
  t.teardown(async () => {
    proxy.restore()
    await pool.end()
  })
  const table = `"${tablePrefix}devices"`
  const rows = async (): Promise<unknown[]> => (await db.query(`SELECT * FROM ${table} ORDER BY bucket, fingerprint`)).rows
  return { db, proxy, pool, options: { tablePrefix, commandTimeout: COMMAND_TIMEOUT, sweepInterval: 0 }, table, rows }
}

/**
 * The proxy forwards again, and this returns once the database answers through it: the next
 * request finds a connection ready, as the redis tests wait for their client to be ready.
 */
async function reconnect (o: Outage, options?: { deliver?: boolean }): Promise<void> {
  o.proxy.restore(options)
  await o.pool.query('SELECT 1')
}

function storeOf (o: Outage): PostgresStore {
  return new PostgresStore(o.pool, o.options)
}

/** buildApp with a public route, GET /public, that never needs a session. */
async function appWith (t: Test, options: Partial<PowOptions>): Promise<FastifyInstance> {
  return await buildApp(t, options, (app) => { app.get('/public', async () => ({ ok: true })) })
}

/** Waits (at most 5 s) until no other session of the database runs a statement: a late one has run. */
async function idle (db: TestDatabase): Promise<void> {
  const started = performance.now()
  while (performance.now() - started < 5000) {
    const { rows } = await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()")
    if (rows[0].n === 0) return
    await sleep(20)
  }
}

/** The names of the cookies a response sets. */
function setNames (response: LightMyRequestResponse): string[] {
  return (response.cookies as Array<{ name: string }>).map((c) => c.name).sort()
}

/**
 * The cases share one database (made once: creating one per case would be most of the file's
 * time), each with tables of its own; they run one after the other, in the pgTest at the end.
 */
type Case = (t: Test, db: TestDatabase) => Promise<void>
const cases: Array<[string, Case]> = []
function outageCase (name: string, fn: Case): void {
  cases.push([name, fn])
}

outageCase('connection cut: every request that needs the store is a 503 at once, nothing is written, and the same cookies work once it is back', async (t, db) => {
  const o = await outage(t, db)
  const { proxy, rows } = o
  const app = await appWith(t, { store: storeOf(o) })
  const jar = await signIn(app, 1, { persistent: true })
  const first = await me(jar)
  t.equal(first.status, 200, 'signed in')
  const cookies = jar.header()
  const session = jar.get('pow_session')
  const rememberOnly = jar.clone()
  rememberOnly.delete('pow_session')
  const rememberCookies = rememberOnly.header()
  const anonymous = jar.clone()
  anonymous.cookies.clear()
  const before = await rows()
  t.ok(before.length > 0, 'the sign-in stored a row')

  proxy.cut()
  const acceptedAtCut = proxy.accepted
  const attempts: Array<[string, CookieJar, Parameters<CookieJar['request']>[0]]> = [
    ['GET /me', jar, '/me'],
    ['POST /login of a new browser', anonymous, { method: 'POST', url: '/login', payload: { id: 2, persistent: true } }],
    ['POST /login of the signed-in browser', jar, { method: 'POST', url: '/login', payload: { id: 1, persistent: true } }],
    ['a remember-me sign-in (no pow_session)', rememberOnly, '/me'],
    ['POST /logout', jar, { method: 'POST', url: '/logout' }],
    ['GET /me again', jar, '/me']
  ]
  for (const [what, from, request] of attempts) {
    const { response, ms } = await timed(from, request)
    assertUnavailable(t, response, what)
    t.ok(ms < COMMAND_TIMEOUT, `${what}: answered at once, without waiting for commandTimeout (${ms.toFixed(0)} ms)`)
  }
  t.ok(proxy.accepted > acceptedAtCut, `the pool did try to connect through the proxy (${proxy.accepted - acceptedAtCut} connections refused)`)
  t.equal(jar.header(), cookies, 'the browser still holds its cookies')
  t.equal(rememberOnly.header(), rememberCookies, 'so does the remember-me-only browser')
  t.equal(anonymous.header(), '', 'and the new browser got none')
  t.same(await rows(), before, 'no row was written, changed or deleted')

  await reconnect(o)
  const back = await jar.request('/me')
  t.equal(back.statusCode, 200, 'once it is back the same session cookie signs in')
  t.same(back.json().user, { id: 1, name: 'user1' }, 'as the same user')
  t.equal(back.json().metadata?.fingerprint, first.fingerprint, 'on the same device')
  t.equal(back.headers['set-cookie'], undefined, 'and no cookie changes: none was due')
  t.equal(jar.get('pow_session'), session)
  const remembered = await rememberOnly.request('/me')
  t.equal(remembered.statusCode, 200, 'the same remember-me cookie signs in')
  t.same(setNames(remembered), ['pow_persistent_session', 'pow_session'], 'with a new session and its token rotated, as a remember-me sign-in does')
  t.equal((await me(anonymous)).status, 401, 'the new browser is not signed in')
})

outageCase('connection stalled: a request is a 503 after commandTimeout, a login writes nothing even later, and the pool is left healthy', async (t, db) => {
  const o = await outage(t, db)
  const { proxy, rows } = o
  const app = await appWith(t, { store: storeOf(o) })
  const jar = await signIn(app, 1)
  const first = await me(jar)
  t.equal(first.status, 200, 'signed in')
  const cookies = jar.header()
  const anonymous = jar.clone()
  anonymous.cookies.clear()
  const before = await rows()

  proxy.stall()
  const stalledAt = performance.now()
  const signedIn = await timed(jar, '/me')
  assertUnavailable(t, signedIn.response, 'GET /me while stalled')
  t.ok(signedIn.ms >= COMMAND_TIMEOUT - 50, `it waited for the stalled query (${signedIn.ms.toFixed(0)} ms)`)
  t.ok(signedIn.ms < COMMAND_TIMEOUT + MARGIN, `and answered after commandTimeout (${signedIn.ms.toFixed(0)} ms)`)
  const login = await timed(anonymous, { method: 'POST', url: '/login', payload: { id: 2 } })
  assertUnavailable(t, login.response, 'POST /login of a new browser while stalled')
  t.ok(login.ms < COMMAND_TIMEOUT + MARGIN, `answered within commandTimeout and a margin (${login.ms.toFixed(0)} ms)`)
  t.equal(jar.header(), cookies, 'the browser keeps its cookie')
  t.equal(anonymous.header(), '', 'the new browser got none')

  // Past every timeout (the pool's connectionTimeoutMillis included), then back: nothing lands late.
  await sleep(Math.max(0, stalledAt + 2 * COMMAND_TIMEOUT + 300 - performance.now()))
  await reconnect(o)
  await sleep(200)
  t.same(await rows(), before, 'no row was written, during the stall or after it')

  for (let i = 1; i <= 5; i++) {
    const { response, ms } = await timed(jar, '/me')
    t.equal(response.statusCode, 200, `request ${i} after the stall: 200 with the same cookie`)
    t.equal(response.headers['set-cookie'], undefined, `request ${i}: no cookie change`)
    t.ok(ms < COMMAND_TIMEOUT, `request ${i}: answered without a timeout (${ms.toFixed(0)} ms)`)
  }
  t.same((await me(jar)).user, { id: 1, name: 'user1' }, 'as the same user')
  t.equal(o.pool.waitingCount, 0, 'nobody waits for a client of the pool')
  t.equal(o.pool.idleCount, o.pool.totalCount, `every client of the pool is back in it (${o.pool.totalCount})`)
  t.ok(o.pool.totalCount >= 1 && o.pool.totalCount <= 2, `with no stuck client left over from the stall (${o.pool.totalCount} in all)`)
  t.equal(proxy.open, o.pool.totalCount, 'and no connection through the proxy but the pool\'s')
  t.equal((await me(anonymous)).status, 401, 'the login that timed out did not sign the new browser in')
})

outageCase('a commit held up in the server by a lock stops waiting at its deadline and writes nothing', async (t, db) => {
  const o = await outage(t, db)
  const { rows } = o
  const app = await appWith(t, { store: storeOf(o) })
  const jar = await signIn(app, 1, { persistent: true })
  const anonymous = jar.clone()
  anonymous.cookies.clear()
  const before = await rows()

  // Reads go on; the commit's first row lock waits for this table lock, in the server.
  const locker = db.pool({ max: 1 })
  const client = await locker.connect()
  await client.query('BEGIN')
  await client.query(`LOCK TABLE ${o.table} IN EXCLUSIVE MODE`)
  const { response, ms } = await timed(anonymous, { method: 'POST', url: '/login', payload: { id: 2, persistent: true } })
  assertUnavailable(t, response, 'a login whose commit waits for a lock')
  t.ok(ms < COMMAND_TIMEOUT + MARGIN, `answered by commandTimeout (${ms.toFixed(0)} ms)`)
  const waiting = await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
  t.equal(waiting.rows[0].n, 0, 'the commit no longer waits in the server: its lock_timeout ended it at the deadline')

  await client.query('COMMIT')
  client.release()
  // Had it still been waiting, it would run now: nothing may have been written.
  await idle(db)
  t.same(await rows(), before, 'the late commit wrote nothing')
  t.equal((await me(anonymous)).status, 401, 'the new browser is not signed in')
  t.equal((await me(jar)).status, 200, 'and the signed-in browser still is')
})

/** A store that, when armed, calls `before` right before its next commit (after the reads). */
class BeforeCommit extends PostgresStore {
  before: (() => void) | undefined

  override async commit (...args: Parameters<PostgresStore['commit']>): Promise<Awaited<ReturnType<PostgresStore['commit']>>> {
    const before = this.before
    this.before = undefined
    before?.()
    return await super.commit(...args)
  }
}

// The commit's deadline is a point on the server's clock (measured once a minute), so a commit
// sent before the 503 but delivered after it is past its deadline and writes nothing.
outageCase('a remember-me sign-in whose commit reaches the server after its 503 changes nothing', async (t, db) => {
  const clock = fakeClock(t)
  const o = await outage(t, db)
  const { proxy, rows } = o
  const store = new BeforeCommit(o.pool, o.options)
  const app = await appWith(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  const rememberOnly = jar.clone()
  rememberOnly.delete('pow_session')
  const token = rememberOnly.get('pow_persistent_session')
  const alarms: string[] = []
  app.pow.on('persistent:reuse', () => alarms.push('persistent:reuse'))
  const before = await rows()

  store.before = () => proxy.stall()
  const { response, ms } = await timed(rememberOnly, '/me')
  assertUnavailable(t, response, 'a remember-me sign-in whose commit is held up on the way')
  t.ok(ms < COMMAND_TIMEOUT + MARGIN, `answered after commandTimeout (${ms.toFixed(0)} ms)`)
  t.equal(rememberOnly.get('pow_persistent_session'), token, 'the browser keeps its remember-me cookie')
  // The network was slow, not broken: the commit, sent before the 503, reaches the server now.
  await reconnect(o, { deliver: true })
  await sleep(100)
  await idle(db)
  t.same(await rows(), before, 'the late commit wrote nothing: the token is unused')
  clock.tick(11_000) // past rotationGrace (10 s)

  // Whether or not the late commit wrote, the browser must not pay for it: a rotation whose
  // answer never reached the browser is reissued (lib/lifecycle.ts), so this holds today.
  const back = await rememberOnly.request('/me')
  t.equal(back.statusCode, 200, 'the same remember-me cookie signs in')
  t.same(setNames(back), ['pow_persistent_session', 'pow_session'], 'with a new session and its token rotated')
  t.same(alarms, [], 'no false theft alarm')
  t.equal((await me(rememberOnly)).status, 200, 'the new cookies work')
})

outageCase('a renewal due during an outage: a 503 when the read fails, served unrenewed when only the write does; the device and cookie stay as they were, and once back the same cookie renews', async (t, db) => {
  const clock = fakeClock(t)
  const o = await outage(t, db)
  const { proxy, rows } = o
  const store = new BeforeCommit(o.pool, o.options)
  const app = await appWith(t, { store, persistentSession: false })
  const jar = await signIn(app, 1)
  const cookies = jar.header()
  clock.tick(16 * MINUTE) // past renewAfter (15 minutes): the session id is due for renewal
  const before = await rows()

  proxy.cut()
  assertUnavailable(t, (await timed(jar, '/me')).response, 'a renewing request with the connection cut')
  await reconnect(o)
  t.same(await rows(), before, 'nothing was written')

  let stalled = false
  store.before = () => {
    stalled = true
    proxy.stall()
  }
  const { response, ms } = await timed(jar, '/me')
  // The id shown still works: the request is served with it, unrenewed, and no cookie changes.
  t.equal(response.statusCode, 200, 'a renewing request whose commit stalls is served with the current id')
  t.equal(response.headers['set-cookie'], undefined, 'and sets no cookie')
  t.ok(stalled, 'the stall began after the device was read, before the renewal was written')
  t.ok(ms < COMMAND_TIMEOUT + MARGIN, `answered after commandTimeout (${ms.toFixed(0)} ms)`)
  t.equal(jar.header(), cookies, 'the browser keeps its cookie')
  await reconnect(o)
  await sleep(100)
  t.same(await rows(), before, 'the device is as it was: no renewal behind the browser\'s back')
  clock.tick(11_000) // past rotationGrace (10 s), as in redis-outage.test.ts

  const back = await jar.request('/me')
  t.equal(back.statusCode, 200, 'once back the same session cookie signs in')
  t.same(back.json().user, { id: 1, name: 'user1' })
  t.same(setNames(back), ['pow_session'], 'and renews now')
  t.equal((await me(jar)).status, 200, 'the renewed cookie works')
})

outageCase('an outage is logged once when it starts and once when it ends, not per request', async (t, db) => {
  const o = await outage(t, db)
  const { proxy } = o
  const { app, lines, cookie } = await loggedApp(t, storeOf(o))

  // One outage, however it shows: four requests with the connection cut, one with it stalled.
  proxy.cut()
  for (let i = 1; i <= 5; i++) {
    if (i === 5) proxy.stall()
    const response = await app.inject({ url: '/me', headers: { cookie } })
    t.equal(response.statusCode, 503, `request ${i} during the outage: 503`)
  }
  await reconnect(o)
  t.equal((await app.inject({ url: '/me', headers: { cookie } })).statusCode, 200, 'back: 200')
  t.equal((await app.inject({ url: '/me', headers: { cookie } })).statusCode, 200, 'and again')

  const fromPow = lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('fastify-pow:'))
  t.same(fromPow.map((l) => l.level), [50, 30], 'fastify-pow logged one error, then one info line')
  const error = fromPow.find((l) => l.level === 50)
  t.match(error?.msg, /session store/, 'the error names the session store')
  t.match(error?.err?.message, /terminated|ECONNRESET|timed out/, `and carries the connection error (${error?.err?.message ?? 'none'})`)
  const info = fromPow.find((l) => l.level === 30)
  t.match(info?.msg, /answers again/, 'the info line says the store answers again')
  const message = error?.err?.message ?? '(no error)'
  const mentioning = lines.filter((l) => l.level >= 50 && JSON.stringify(l).includes(message))
  t.equal(mentioning.length, 1, 'the connection error is in one error-level log line, not one per request')
})

outageCase('during an outage, requests without a session are served as usual and never wait for the store', async (t, db) => {
  const o = await outage(t, db)
  const { proxy } = o
  const app = await appWith(t, { store: storeOf(o) })
  const jar = await signIn(app, 1)
  const anonymous = jar.clone()
  anonymous.cookies.clear()

  for (const [what, start] of [['cut', () => proxy.cut()], ['stalled', () => proxy.stall()]] as const) {
    start()
    const accepted = proxy.accepted
    const open = await timed(anonymous, '/public')
    t.equal(open.response.statusCode, 200, `connection ${what}: a public route answers 200`)
    t.ok(open.ms < COMMAND_TIMEOUT, `at once (${open.ms.toFixed(0)} ms)`)
    t.equal(open.response.headers['set-cookie'], undefined, 'setting no cookie')
    const who = await timed(anonymous, '/me')
    t.equal(who.response.statusCode, 401, `connection ${what}: GET /me without a cookie is the route's own 401, not a 503`)
    t.ok(who.ms < COMMAND_TIMEOUT, `at once (${who.ms.toFixed(0)} ms)`)
    t.equal(proxy.accepted, accepted, 'neither request tried to reach the database')
    assertUnavailable(t, await jar.request('/me'), `connection ${what}: a signed-in request`)
    await reconnect(o)
  }
  t.equal((await me(jar)).status, 200, 'back: the signed-in browser still is')
})

// An app starts during an outage: PostgresStore.ready() logs that it could not check the table
// instead of failing app.ready(), and requests that need the store answer 503 until it is back.
outageCase('an app starting during an outage does so within a bounded time', async (t, db) => {
  const o = await outage(t, db)
  const { proxy } = o
  for (const [what, start] of [['cut', () => proxy.cut()], ['stalled', () => proxy.stall()]] as const) {
    start()
    const started = performance.now()
    let app: FastifyInstance | undefined
    let failure: Error | undefined
    try {
      app = await appWith(t, { store: storeOf(o) })
    } catch (err) {
      failure = err as Error
    }
    const ms = performance.now() - started
    t.ok(ms < COMMAND_TIMEOUT + MARGIN, `connection ${what}: app.ready() settles within commandTimeout and a margin (${ms.toFixed(0)} ms)`)
    t.equal(failure?.message, undefined, `connection ${what}: the app starts`)
    if (app !== undefined) {
      t.equal((await app.inject('/public')).statusCode, 200, `connection ${what}: and serves a public route`)
      t.equal((await app.inject('/me')).statusCode, 401, `connection ${what}: and anonymous requests`)
    }
    await reconnect(o)
  }
  const app = await appWith(t, { store: storeOf(o) })
  t.equal((await app.inject('/public')).statusCode, 200, 'once the database is back an app starts')
})

outageCase('createTables while the database was unreachable at start: the table is created once it answers', async (t, db) => {
  const o = await outage(t, db)
  const options = { ...o.options, tablePrefix: `${String(o.options.tablePrefix)}late_`, createTables: true }
  o.proxy.cut()
  const app = await appWith(t, { store: new PostgresStore(o.pool, options) })
  await reconnect(o)
  const table = async (): Promise<unknown> => (await db.query('SELECT to_regclass($1) AS t', [`${options.tablePrefix}devices`])).rows[0].t
  t.equal(await table(), null, 'no table yet')
  t.equal((await app.inject('/public')).statusCode, 200, 'a request without a session is served')
  const first = await app.inject({ method: 'POST', url: '/login', payload: { id: 1 } })
  t.equal(first.statusCode, 503, 'the first sign-in finds no table: a 503, and the table is created')
  for (let i = 0; i < 50 && await table() === null; i++) await sleep(20)
  t.not(await table(), null, 'the table is there')
  t.equal((await me(await signIn(app, 1))).status, 200, 'the next sign-in works')
})

pgTest('PostgreSQL outages through a TCP proxy', { timeout: 90_000 }, async (t) => {
  const db = await createDatabase(t)
  for (const [name, fn] of cases) await t.test(name, async (t) => { await fn(t, db) })
})
