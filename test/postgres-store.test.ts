/**
 * PostgresStore on the machine's PostgreSQL, in a database of each test's own
 * (test/helpers/postgres.ts): the store contract, the cost of a request in queries, the schema
 * (migrate, the shipped SQL file, schema and prefix options, the checks at registration), expiry
 * and the sweep, the deadline that keeps a late change from landing, and fastify-pow's use of
 * @fastify/postgres.
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import fastifyPostgres from '@fastify/postgres'
import Fastify from 'fastify'
import type pg from 'pg'
import pow, { MemoryStore, PostgresStore, postgresSchema, type PgPool } from '../lib/index.js'
import { randomFingerprint, userBucket } from '../lib/crypto.js'
import { buildApp, me, SECRET, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { createDatabase, pgTest, postgresStore, type TestDatabase } from './helpers/postgres.js'
import { storeContract } from './store-contract.js'

let prefixes = 0

pgTest('PostgresStore passes the store contract', { timeout: 120_000 }, async (t) => {
  const db = await createDatabase(t)
  storeContract(t, async () => {
    // A table prefix per subtest: the subtests share the database, never their rows.
    const store = await postgresStore(db, { tablePrefix: `c${++prefixes}_` })
    return { store, advance: async (ms) => { await sleep(ms) }, close: async () => { await store.close() } }
  })
})

/** Every query the pool's clients are sent, as given to `client.query`. */
function recordQueries (pool: pg.Pool): Array<{ name?: string, text: string }> {
  const sent: Array<{ name?: string, text: string }> = []
  const connect = pool.connect.bind(pool) as PgPool['connect']
  const wrapped = new WeakSet<object>()
  ;(pool as unknown as PgPool).connect = (callback) => {
    connect((err, client, release) => {
      if (client !== undefined && !wrapped.has(client)) {
        wrapped.add(client)
        const query = client.query.bind(client) as (...args: unknown[]) => unknown
        ;(client as { query: (...args: unknown[]) => unknown }).query = (config, ...rest) => {
          sent.push(typeof config === 'string' ? { text: config } : config as { name?: string, text: string })
          return query(config, ...rest)
        }
      }
      callback(err, client, release)
    })
  }
  return sent
}

/** Every row of the table with the id of the transaction that wrote it: any write shows. */
async function rows (db: TestDatabase, table = 'pow_devices'): Promise<unknown[]> {
  return (await db.query(`SELECT xmin::text AS written_by, * FROM ${table} ORDER BY bucket, fingerprint`)).rows
}

pgTest('an authenticated request is one prepared query and no write; a login one query (two once a minute); a renewal two', {}, async (t) => {
  const db = await createDatabase(t)
  // One connection: what it prepared can be seen from it.
  const pool = db.pool({ max: 1 })
  const store = new PostgresStore(pool, { sweepInterval: 0 })
  await store.migrate()
  const clock = fakeClock(t, Date.now())
  const app = await buildApp(t, { store, session: { ttl: 30 * 60_000, renewAfter: 15 * 60_000 } })
  const sent = recordQueries(pool)

  await signIn(app, 2)
  t.same(sent.map((q) => q.name?.replace(/_[0-9a-f]+$/, '')), ['pow_clock', 'pow_commit'], 'the first login: the server\'s clock (measured once a minute) and the commit')
  sent.length = 0
  const jar = await signIn(app, 1)
  t.equal(sent.length, 1, `a login is one query: ${sent.map((q) => q.text.slice(0, 40)).join(' | ')}`)
  t.match(sent[0].text, /"pow_commit"/, 'the call of the commit function')

  sent.length = 0
  const before = await rows(db)
  for (let i = 0; i < 3; i++) t.equal((await me(jar)).status, 200)
  t.equal(sent.length, 3, 'one query per authenticated request')
  t.ok(sent.every((q) => q.name !== undefined && /^SELECT data, user_data, version FROM .* WHERE bucket = \$1 AND fingerprint = \$2/.test(q.text)), 'each a named (prepared) SELECT by primary key')
  t.same(await rows(db), before, 'nothing was written')
  const prepared = await pool.query('SELECT count(*)::int AS n FROM pg_prepared_statements WHERE statement LIKE \'SELECT data, user_data, version FROM%\'')
  t.equal(prepared.rows[0].n, 1, 'the statement is prepared on the connection, once')

  clock.tick(16 * 60_000)
  sent.length = 0
  t.equal((await me(jar)).status, 200)
  t.same(sent.map((q) => q.name?.replace(/_[0-9a-f]+$/, '')), ['pow_read', 'pow_commit'], 'a request that renews the session id: the read and one commit')
})

pgTest('migrate is idempotent, also run by several instances at once; the SQL file is what migrate runs', {}, async (t) => {
  const db = await createDatabase(t)
  const stores = [0, 1, 2].map(() => new PostgresStore(db.pool(), { sweepInterval: 0 }))
  await Promise.all(stores.map(async (store) => { await store.migrate() }))
  await stores[0].migrate()
  const tables = await db.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
  t.same(tables.rows.map((r) => r.table_name), ['pow_devices'], 'one table')
  const indexes = await db.query("SELECT indexname FROM pg_indexes WHERE tablename = 'pow_devices' ORDER BY 1")
  t.same(indexes.rows.map((r) => r.indexname), ['pow_devices_expiry', 'pow_devices_pkey', 'pow_devices_user'])

  const file = await readFile(new URL('../lib/stores/postgres.sql', import.meta.url), 'utf8')
  // After a change of the SQL: npx tsx -e "import('./lib/stores/postgres.ts').then((m) => process.stdout.write(m.postgresSchema()))", below the file's header.
  t.ok(file.endsWith(postgresSchema()), 'lib/stores/postgres.sql holds postgresSchema() with the defaults')
  // Applied by hand, as a team that runs its own migrations would, in a database of its own.
  const other = await createDatabase(t)
  await other.query(`BEGIN; ${file} COMMIT;`)
  const store = new PostgresStore(other.pool(), { sweepInterval: 0 })
  await store.ready()
  t.same((await store.commit({ userKey: 'u', user: '{}', devices: [{ fingerprint: 'f', data: '{}', ttl: 60_000, usedAt: 1 }] })).ok, true, 'the store works on tables made from the file')
})

pgTest('schema and tablePrefix name the table and function; two stores in one database keep apart', {}, async (t) => {
  const db = await createDatabase(t)
  const auth = await postgresStore(db, { schema: 'auth', tablePrefix: 'app1_' })
  const plain = await postgresStore(db)
  const userKey = 'alice'
  await auth.commit({ userKey, user: '{"in":"auth"}', devices: [{ fingerprint: 'f1', data: '{}', ttl: 60_000, usedAt: 1 }] })
  t.equal((await db.query('SELECT count(*)::int AS n FROM auth.app1_devices')).rows[0].n, 1, 'the row is in auth.app1_devices')
  t.equal(await plain.read(userBucket(userKey), 'f1'), null, 'the default store does not see it')
  const functions = await db.query("SELECT n.nspname || '.' || p.proname AS f FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE proname LIKE '%commit' AND n.nspname IN ('auth', 'public') ORDER BY 1")
  t.same(functions.rows.map((r) => r.f), ['auth.app1_commit', 'public.pow_commit'])
})

pgTest('bad options throw naming the option; a pool is required', {}, async (t) => {
  const db = await createDatabase(t)
  const pool = db.pool()
  t.throws(() => new PostgresStore({} as never), /needs a node-postgres Pool/)
  t.throws(() => new PostgresStore(pool, { schema: 'Bad"Name' }), /schema must be/)
  t.throws(() => new PostgresStore(pool, { tablePrefix: 'x; DROP' }), /tablePrefix must be/)
  t.throws(() => new PostgresStore(pool, { commandTimeout: 0 }), /commandTimeout/)
  t.throws(() => new PostgresStore(pool, { sweepInterval: -1 }), /sweepInterval/)
  t.throws(() => new PostgresStore(pool, { sweepLimit: 0.5 }), /sweepLimit/)
  t.throws(() => new PostgresStore(pool, { createTables: 'yes' as never }), /createTables/)
  t.throws(() => postgresSchema({ schema: 'a-b' }), /schema must be/)
})

pgTest('registration: missing tables fail app.ready() saying what to run; createTables creates them', {}, async (t) => {
  const db = await createDatabase(t)
  const missing = Fastify()
  void missing.register(pow, { secret: SECRET, store: new PostgresStore(db.pool(), { sweepInterval: 0 }) })
  await t.rejects(async () => { await missing.ready() }, /PostgresStore: the table public\.pow_devices or its function is missing: run store\.migrate\(\), pass createTables: true/)
  t.equal((await db.query("SELECT to_regclass('pow_devices') AS t")).rows[0].t, null, 'nothing was created')

  const serializable = Fastify()
  void serializable.register(pow, { secret: SECRET, store: new PostgresStore(db.pool({ options: '-c default_transaction_isolation=serializable' }), { createTables: true, sweepInterval: 0 }) })
  await t.rejects(async () => { await serializable.ready() }, /connections run transactions at serializable; the store needs read committed/, 'a pool that defaults to another isolation level is refused')

  const app = await buildApp(t, { store: new PostgresStore(db.pool(), { createTables: true, sweepInterval: 0 }) })
  t.equal((await me(await signIn(app, 1))).status, 200, 'with createTables the tables are made at registration and sessions work')
})

pgTest('expired rows: never returned, deleted by the user\'s next change, and by the sweep, at most sweepLimit per run', {}, async (t) => {
  const db = await createDatabase(t)
  const store = await postgresStore(db, { sweepLimit: 1500 })
  const write = (fingerprint: string, ttl: number) => ({ fingerprint, data: '{}', ttl, usedAt: Date.now() })
  await store.commit({ userKey: 'a', user: '{}', devices: [write('a1', 50), write('a2', 60_000)] })
  const others = Array.from({ length: 1600 }, () => write(randomFingerprint(), 50))
  await store.commit({ userKey: 'b', user: '{}', devices: others })
  await sleep(120)
  t.equal(await store.read(userBucket('a'), 'a1'), null, 'an expired device reads as missing')
  const count = async (): Promise<number> => (await db.query('SELECT count(*)::int AS n FROM pow_devices')).rows[0].n
  t.equal(await count(), 1602, 'but its row is still there')
  await store.commit({ userKey: 'a', devices: [write('a2', 60_000)] })
  t.equal(await count(), 1601, 'the user\'s next change deleted the user\'s expired row')
  t.equal(await store.sweep(), 1500, 'a sweep deletes at most sweepLimit')
  t.equal(await store.sweep(), 100, 'the next one the rest')
  t.equal(await count(), 1, 'the live device stays')
})

pgTest('the periodic sweep runs every sweepInterval and stops at close(); the pool is never ended', {}, async (t) => {
  const db = await createDatabase(t)
  const pool = db.pool()
  const store = new PostgresStore(pool, { sweepInterval: 40 })
  await store.migrate()
  const app = await buildApp(t, { store })
  await store.commit({ userKey: 'a', user: '{}', devices: [{ fingerprint: 'x', data: '{}', ttl: 10, usedAt: 1 }] })
  const count = async (): Promise<number> => (await db.query('SELECT count(*)::int AS n FROM pow_devices')).rows[0].n
  for (let i = 0; i < 50 && await count() > 0; i++) await sleep(20)
  t.equal(await count(), 0, 'the sweep deleted the expired row')
  await app.close()
  await store.commit({ userKey: 'a', user: '{}', devices: [{ fingerprint: 'y', data: '{}', ttl: 10, usedAt: 1 }] })
  await sleep(200)
  t.equal(await count(), 1, 'after close() no sweep runs')
  t.equal((await pool.query('SELECT 1 AS one')).rows[0].one, 1, 'the pool fastify-pow was given still works after app.close()')
})

pgTest('a change that the database runs after its caller gave up writes nothing', {}, async (t) => {
  const db = await createDatabase(t)
  const store = await postgresStore(db, { commandTimeout: 300 })
  // Another transaction holds the table: the change waits behind it, past commandTimeout.
  const blocker = await db.pool().connect()
  await blocker.query('BEGIN; LOCK TABLE pow_devices IN ACCESS EXCLUSIVE MODE')
  const started = performance.now()
  await t.rejects(store.commit({ userKey: 'late', user: '{}', devices: [{ fingerprint: 'f', data: '{}', ttl: 60_000, usedAt: 1 }] }), /timed out after 300 ms|lock timeout/, 'the change fails by its deadline: the client times out or the function stops waiting for the lock')
  t.ok(performance.now() - started < 1000, 'the caller is answered at commandTimeout')
  await sleep(100)
  await blocker.query('COMMIT')
  blocker.release()
  // The change now runs on the server, finds its deadline passed, and rolls back.
  await sleep(300)
  t.same(await rows(db), [], 'no row was written, even after the lock was released')
  t.equal((await store.commit({ userKey: 'late', user: '{}', devices: [{ fingerprint: 'f', data: '{}', ttl: 60_000, usedAt: 1 }] })).ok, true, 'the next change goes through')
})

pgTest('a change that waits for the user\'s lock while its device expires and is swept is refused: no row is left without credentials', {}, async (t) => {
  const db = await createDatabase(t)
  const store = await postgresStore(db, { commandTimeout: 5000 })
  const userKey = 'racer'
  await store.commit({ userKey, user: '{"id":1}', devices: [{ fingerprint: 'f', version: 0, data: '"d1"', ttl: 600, usedAt: 1 }] })
  const read = await store.read(userBucket(userKey), 'f')
  // The key of the user's lock, as lib/stores/postgres.ts makes it: another transaction holds it.
  const lockClass = createHash('sha256').update('fastify-pow:public.pow_').digest().readInt32BE(0)
  const holder = await db.pool().connect()
  const sweeper = await db.pool().connect()
  t.teardown(() => { holder.release(); sweeper.release() })
  await holder.query('BEGIN')
  await holder.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [lockClass, userKey])
  const renewal = store.commit({ userKey, devices: [{ fingerprint: 'f', version: read?.version, data: '"d2"', ttl: 60_000, usedAt: 2 }] })
  await sleep(800)
  // The device has expired meanwhile; a sweep deletes it and holds on before committing.
  await sweeper.query('BEGIN')
  t.equal((await sweeper.query('DELETE FROM pow_devices WHERE expires_at <= now()')).rowCount, 1, 'the sweep takes the expired row')
  await holder.query('COMMIT')
  await sleep(100)
  await sweeper.query('COMMIT')
  t.same(await renewal, { ok: false, evicted: [] }, 'the renewal is refused: the device it read is gone')
  t.same(await rows(db), [], 'and wrote nothing')
})

pgTest('with @fastify/postgres registered first, fastify-pow stores sessions in app.pg and says so; registered after, it warns', {}, async (t) => {
  const db = await createDatabase(t)
  const lines: Array<{ level: number, msg: string }> = []
  const logger = { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } }

  const first = Fastify({ logger })
  t.teardown(() => first.close())
  await first.register(fastifyPostgres, { connectionString: db.url })
  await first.register(pow, { secret: SECRET })
  await first.ready()
  t.ok(first.pow.rawStore instanceof PostgresStore, 'the store is a PostgresStore on app.pg')
  t.ok(lines.some((l) => l.level === 30 && /sessions are stored in PostgreSQL \(app\.pg/.test(l.msg)), 'and the log says so')
  t.not((await db.query("SELECT to_regclass('pow_devices') AS t")).rows[0].t, null, 'the table was created at start')

  lines.length = 0
  const late = Fastify({ logger })
  t.teardown(() => late.close())
  await late.register(pow, { secret: SECRET })
  await late.register(fastifyPostgres, { connectionString: db.url })
  await late.ready()
  t.ok(late.pow.rawStore instanceof MemoryStore, 'registered after, sessions stay in memory')
  t.ok(lines.some((l) => l.level === 40 && /@fastify\/postgres was registered after fastify-pow/.test(l.msg)), 'with a warning saying what to do')

  const named = Fastify()
  t.teardown(() => named.close())
  await named.register(fastifyPostgres, { connectionString: db.url, name: 'sessions' })
  void named.register(pow, { secret: SECRET })
  await t.rejects(async () => { await named.ready() }, /"store" is needed: app\.pg holds several pools/, 'named pools only: the store option must say which')
})
