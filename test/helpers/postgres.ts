/**
 * PostgreSQL for tests: the machine's server (POW_TEST_POSTGRES_URL, default
 * postgres://postgres@127.0.0.1:5432/postgres), in a database of each test's own that is created
 * with a random name (`pow_test_<pid>_<hex>`) and dropped when the test ends, also when it fails.
 * No other database is touched: a run killed before its teardowns leaves its databases behind,
 * and only a person drops them.
 *
 * Without a reachable server the PostgreSQL tests skip with a loud message; under CI=true they fail.
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { test, type Test } from 'tap'
import { PostgresStore, type PostgresStoreOptions } from '../../lib/index.js'

const ADMIN_URL = process.env.POW_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const PREFIX = 'pow_test_'

async function admin<T> (work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: ADMIN_URL, connectionTimeoutMillis: 5000 })
  client.on('error', () => {})
  await client.connect()
  try {
    return await work(client)
  } finally {
    await client.end().catch(() => {})
  }
}

/** Why PostgreSQL cannot be used, or null when it can. */
async function unreachable (): Promise<string | null> {
  try {
    await admin(async (client) => await client.query('SELECT 1'))
    return null
  } catch (err) {
    return `PostgreSQL is not reachable at ${ADMIN_URL} (${(err as Error).message}): start it with \`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\` (.ci/run does this)`
  }
}

const problem = await unreachable()
if (problem !== null && process.env.CI !== 'true') console.error(`\n!!! SKIPPING THE POSTGRESQL TESTS: ${problem}\n`)

/**
 * `test()` for a test that needs PostgreSQL: skipped (loudly, above) without a server, failed
 * without one under CI=true.
 */
export function pgTest (name: string, options: { timeout?: number }, fn: (t: Test) => Promise<void>): void {
  if (problem === null) test(name, options, fn)
  else if (process.env.CI === 'true') test(name, async (t) => { t.fail(problem) })
  else test(name, { skip: problem }, async () => {})
}

/** Whether the PostgreSQL tests run here. */
export const postgresAvailable = problem === null

/** A database of the test's own. */
export interface TestDatabase {
  readonly name: string
  /** `postgres://postgres@127.0.0.1:5432/<name>` (from POW_TEST_POSTGRES_URL). */
  readonly url: string
  /** A new pool on the database, ended when the test ends (before the database is dropped). */
  pool: (config?: pg.PoolConfig) => pg.Pool
  /** Runs SQL on the database through a pool of the harness. */
  query: (text: string, values?: unknown[]) => Promise<pg.QueryResult>
}

/** Creates a database for `t`, dropped in `t`'s teardown. */
export async function createDatabase (t: Test): Promise<TestDatabase> {
  const name = `${PREFIX}${process.pid}_${randomBytes(6).toString('hex')}`
  await admin(async (client) => {
    await client.query(`CREATE DATABASE "${name}"`)
  })
  const url = new URL(ADMIN_URL)
  url.pathname = `/${name}`
  const pools: pg.Pool[] = []
  const pool = (config: pg.PoolConfig = {}): pg.Pool => {
    const created = new pg.Pool({ connectionString: url.href, ...config })
    created.on('error', () => {})
    pools.push(created)
    return created
  }
  const own = pool()
  t.teardown(async () => {
    await Promise.all(pools.map(async (p) => await p.end().catch(() => {})))
    await admin(async (client) => await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`))
  })
  return { name, url: url.href, pool, query: async (text, values) => await own.query(text, values) }
}

/** A migrated PostgresStore on a new pool of `db` (the sweep off unless asked for). */
export async function postgresStore (db: TestDatabase, options: PostgresStoreOptions = {}, config: pg.PoolConfig = {}): Promise<PostgresStore> {
  const store = new PostgresStore(db.pool(config), { sweepInterval: 0, ...options })
  await store.migrate()
  return store
}
