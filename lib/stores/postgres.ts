import { createHash } from 'node:crypto'
import { userBucket } from '../crypto.js'
import type { CommitResult, DeviceChange, PowStore, StoredDevice } from '../types.js'

export interface PostgresStoreOptions {
  /** The schema of the table and function. Default `public`. */
  schema?: string | undefined
  /** The start of their names: `<prefix>devices`, `<prefix>commit`. Default `pow_`. */
  tablePrefix?: string | undefined
  /** Create the table and function when fastify-pow is registered, if they are missing. Default false. */
  createTables?: boolean | undefined
  /** Milliseconds after which a query counts as failed (a 503). Default 2000. */
  commandTimeout?: number | undefined
  /** Milliseconds between sweeps of expired rows; 0 turns the sweep off. Default 5 minutes. */
  sweepInterval?: number | undefined
  /** The most expired rows one sweep deletes, in batches of at most 1000. Default 10000. */
  sweepLimit?: number | undefined
}

/** The part of a node-postgres client that the store uses. */
export interface PgClient {
  query: (config: { name?: string, text: string, values?: unknown[] }, callback: (err: Error | undefined, result: { rows: any[], rowCount: number | null }) => void) => void
  once: (event: 'error', listener: (err: Error) => void) => unknown
  removeListener: (event: 'error', listener: (err: Error) => void) => unknown
}

/** The part of a node-postgres `Pool` that the store uses (`new Pool()` of `pg`, or `app.pg.pool` of @fastify/postgres). */
export interface PgPool {
  connect: (callback: (err: Error | undefined, client: PgClient | undefined, release: (err?: Error | boolean) => void) => void) => void
  on: (event: 'error', listener: (err: Error) => void) => unknown
}

// The longest delay a Node.js timer takes (2^31 - 1 ms).
const MAX_TIMER_MS = 2_147_483_647
// About 317 years: beyond any ttl fastify-pow writes, and far inside what timestamptz holds.
const MAX_TTL_MS = 10_000_000_000_000
const SWEEP_BATCH = 1000
// How often the offset between this process's clock and the server's is measured again.
const CLOCK_CHECK_INTERVAL = 60_000

/** Wall-clock time that fake clocks in tests (which replace Date) leave alone. */
function realNow (): number {
  return performance.timeOrigin + performance.now()
}

/** An error the server answered with (node-postgres' DatabaseError), as opposed to a connection that failed. */
function answered (err: unknown): boolean {
  return typeof (err as { severity?: unknown } | null)?.severity === 'string'
}

/** Where the store reports what it does not throw. */
export interface StoreLog {
  warn: (obj: object, msg: string) => void
  error: (obj: object, msg: string) => void
}
const NAME_RE = /^[a-z_][a-z0-9_]*$/

/** The names the SQL uses, quoted, for a schema and prefix. */
interface Names {
  schema: string
  table: string
  commit: string
  /** `<prefix>devices` unquoted, for messages and index names. */
  plain: string
  /** The first key of the advisory lock that serializes one user's changes. */
  lockClass: number
}

function names (schema: string, prefix: string): Names {
  const q = (name: string): string => `"${name}"`
  const lockClass = createHash('sha256').update(`fastify-pow:${schema}.${prefix}`).digest().readInt32BE(0)
  return { schema: q(schema), table: `${q(schema)}.${q(prefix + 'devices')}`, commit: `${q(schema)}.${q(prefix + 'commit')}`, plain: `${schema}.${prefix}devices`, lockClass }
}

/**
 * The schema: one table of devices and the function that applies a change. Idempotent (a second
 * run changes nothing), for `migrate()` and for `lib/stores/postgres.sql`.
 *
 * A row is a device, addressed by the bucket of its user and its fingerprint: `data` is the
 * device record (JSON written by lib/lifecycle.ts, opaque here), `user_data` a copy of the
 * user's credentials (so that a read is one row), `version` is 1 when created and bumped by every
 * write, `used_at` orders the user's devices for limits, and `expires_at` (on the database's
 * clock) ends it. Every query leaves expired rows out; the writes that meet them and a sweep
 * delete them.
 */
export function postgresSchema (options: { schema?: string | undefined, tablePrefix?: string | undefined } = {}): string {
  const { schema = 'public', tablePrefix = 'pow_' } = options
  checkNames(schema, tablePrefix)
  const { table, commit, lockClass } = names(schema, tablePrefix)
  const index = (suffix: string): string => `"${tablePrefix}devices_${suffix}"`
  return `CREATE SCHEMA IF NOT EXISTS "${schema}";

CREATE TABLE IF NOT EXISTS ${table} (
  bucket text NOT NULL,
  fingerprint text NOT NULL,
  user_key text NOT NULL,
  data text NOT NULL,
  user_data text NOT NULL,
  version bigint NOT NULL,
  used_at double precision NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (bucket, fingerprint)
);
CREATE INDEX IF NOT EXISTS ${index('user')} ON ${table} (user_key, used_at);
CREATE INDEX IF NOT EXISTS ${index('expiry')} ON ${table} (expires_at);

-- Applies a change of one user's devices: every version precondition is checked before any
-- write; NULL when one fails (nothing written), else the fingerprints the limit evicted.
-- Changes of one user run one at a time (an advisory lock), and the devices it checked stay
-- locked until it ends (the sweep cannot take one away meanwhile). Past its deadline (ms since
-- the epoch on this server's clock) it writes nothing, since its caller has answered a 503 by
-- then; it waits for no lock beyond it either.
CREATE OR REPLACE FUNCTION ${commit} (
  p_user_key text, p_bucket text, p_user text, p_limit integer, p_fingerprints text[],
  p_versions bigint[], p_data text[], p_ttls bigint[], p_used double precision[], p_deadline double precision
) RETURNS text[] LANGUAGE plpgsql AS $pow$
DECLARE
  n integer := coalesce(array_length(p_fingerprints, 1), 0);
  v_now timestamptz;
  found_version bigint;
  found_versions bigint[] := '{}';
  inherited text;
  written text[] := '{}';
  excess bigint;
  evicted text[] := '{}';
BEGIN
  PERFORM set_config('lock_timeout', greatest(1, floor(p_deadline - extract(epoch FROM clock_timestamp()) * 1000))::bigint || 'ms', true);
  PERFORM pg_advisory_xact_lock(${lockClass}, hashtext(p_user_key));
  v_now := clock_timestamp();
  FOR i IN 1..n LOOP
    SELECT version INTO found_version FROM ${table}
      WHERE bucket = p_bucket AND fingerprint = p_fingerprints[i] AND expires_at > v_now FOR UPDATE;
    IF NOT FOUND THEN found_version := 0; END IF;
    IF p_versions[i] IS NOT NULL AND p_versions[i] <> found_version THEN RETURN NULL; END IF;
    found_versions := found_versions || found_version;
  END LOOP;
  DELETE FROM ${table} WHERE user_key = p_user_key AND expires_at <= v_now;
  IF p_user IS NOT NULL THEN
    UPDATE ${table} SET user_data = p_user WHERE user_key = p_user_key AND user_data <> p_user;
  END IF;
  FOR i IN 1..n LOOP
    IF p_data[i] IS NULL THEN
      DELETE FROM ${table} WHERE bucket = p_bucket AND fingerprint = p_fingerprints[i];
    ELSE
      IF found_versions[i] > 0 THEN
        -- A live device, locked above: it keeps its credentials unless the change carries new ones.
        UPDATE ${table} SET user_key = p_user_key, data = p_data[i], user_data = coalesce(p_user, user_data),
            version = version + 1, used_at = p_used[i], expires_at = v_now + p_ttls[i] * interval '1 millisecond'
          WHERE bucket = p_bucket AND fingerprint = p_fingerprints[i];
      END IF;
      -- A new device (an expired row at its address is replaced), or one this change deleted.
      IF found_versions[i] = 0 OR NOT FOUND THEN
        IF p_user IS NULL AND inherited IS NULL THEN
          SELECT user_data INTO inherited FROM ${table}
            WHERE user_key = p_user_key AND expires_at > v_now ORDER BY used_at DESC LIMIT 1;
          IF inherited IS NULL THEN
            RAISE EXCEPTION 'PostgresStore: a new device needs the user''s credentials (DeviceChange.user)';
          END IF;
        END IF;
        INSERT INTO ${table} AS d (bucket, fingerprint, user_key, data, user_data, version, used_at, expires_at)
          VALUES (p_bucket, p_fingerprints[i], p_user_key, p_data[i], coalesce(p_user, inherited), 1, p_used[i],
            v_now + p_ttls[i] * interval '1 millisecond')
          ON CONFLICT (bucket, fingerprint) DO UPDATE SET
            user_key = excluded.user_key, data = excluded.data, user_data = excluded.user_data,
            version = d.version + 1, used_at = excluded.used_at, expires_at = excluded.expires_at;
      END IF;
    END IF;
    IF p_data[i] IS NOT NULL THEN written := written || p_fingerprints[i]; END IF;
  END LOOP;
  IF p_limit IS NOT NULL THEN
    SELECT count(*) - p_limit INTO excess FROM ${table} WHERE user_key = p_user_key AND expires_at > v_now;
    IF excess > 0 THEN
      WITH victims AS (
        SELECT bucket, fingerprint FROM ${table}
          WHERE user_key = p_user_key AND expires_at > v_now AND fingerprint <> ALL (written)
          ORDER BY used_at, fingerprint LIMIT excess
      ), gone AS (
        DELETE FROM ${table} d USING victims v WHERE d.bucket = v.bucket AND d.fingerprint = v.fingerprint
          RETURNING d.fingerprint
      ) SELECT coalesce(array_agg(fingerprint), '{}') INTO evicted FROM gone;
    END IF;
  END IF;
  IF extract(epoch FROM clock_timestamp()) * 1000 > p_deadline THEN
    RAISE EXCEPTION 'PostgresStore: the change ran past its deadline; nothing was written';
  END IF;
  RETURN evicted;
END
$pow$;
`
}

function checkNames (schema: unknown, tablePrefix: unknown): void {
  if (typeof schema !== 'string' || !NAME_RE.test(schema) || schema.length > 63) {
    throw new TypeError('PostgresStore: schema must be lower-case letters, digits and "_" (at most 63), not starting with a digit')
  }
  if (typeof tablePrefix !== 'string' || !(tablePrefix === '' || NAME_RE.test(tablePrefix)) || tablePrefix.length > 40) {
    throw new TypeError('PostgresStore: tablePrefix must be lower-case letters, digits and "_" (at most 40), not starting with a digit')
  }
}

function milliseconds (value: unknown, name: string, fallback: number, zero: boolean): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (value === 0 && !zero) || value > MAX_TIMER_MS) {
    throw new TypeError(`PostgresStore: ${name} must be a ${zero ? 'non-negative' : 'positive'} number of milliseconds, at most ${MAX_TIMER_MS}`)
  }
  return value
}

/** A named statement: prepared once per connection, then sent as a bind and an execute. */
interface Statement { name: string, text: string }

/**
 * A `PowStore` in PostgreSQL through a node-postgres `Pool` (for example `app.pg.pool` of
 * @fastify/postgres), which it never ends. Reading a device is one prepared `SELECT` by primary
 * key; every change is one call of a PL/pgSQL function, one transaction.
 */
export class PostgresStore implements PowStore {
  readonly #pool: PgPool
  readonly #names: Names
  readonly #schemaOptions: { schema: string, tablePrefix: string }
  readonly #createTables: boolean
  readonly #timeout: number
  readonly #sweepInterval: number
  readonly #sweepLimit: number
  readonly #sql: { read: Statement, list: Statement, commit: Statement, users: Statement, sweep: Statement, clock: Statement, exists: Statement }
  #sweepTimer: NodeJS.Timeout | undefined
  #sweeping = false
  #lastError: Error | undefined
  /** Server clock minus this process's clock, in ms; measured with clock_timestamp(). */
  #clockOffset = 0
  #clockCheckedAt = -Infinity
  /** A migration started because a query found the table missing (createTables only). */
  #healing: Promise<void> | undefined

  constructor (pool: PgPool, options: PostgresStoreOptions = {}) {
    if (pool === null || typeof pool !== 'object' || typeof pool.connect !== 'function' || typeof pool.on !== 'function') {
      throw new TypeError('PostgresStore needs a node-postgres Pool (new Pool() of "pg", or app.pg.pool of @fastify/postgres)')
    }
    const { schema = 'public', tablePrefix = 'pow_', createTables = false } = options
    checkNames(schema, tablePrefix)
    if (typeof createTables !== 'boolean') throw new TypeError('PostgresStore: createTables must be a boolean')
    this.#timeout = milliseconds(options.commandTimeout, 'commandTimeout', 2000, false)
    this.#sweepInterval = milliseconds(options.sweepInterval, 'sweepInterval', 300_000, true)
    const sweepLimit = options.sweepLimit ?? 10_000
    if (!Number.isInteger(sweepLimit) || sweepLimit < 1) throw new TypeError('PostgresStore: sweepLimit must be a positive integer')
    this.#sweepLimit = sweepLimit
    this.#pool = pool
    this.#schemaOptions = { schema, tablePrefix }
    this.#createTables = createTables
    const n = this.#names = names(schema, tablePrefix)
    // Statement names are per connection: the schema and prefix are in them, so that two stores
    // on one pool never share a name for different text.
    const tag = createHash('sha256').update(n.table).digest('hex').slice(0, 10)
    const statement = (kind: string, text: string): Statement => ({ name: `pow_${kind}_${tag}`, text })
    this.#sql = {
      read: statement('read', `SELECT data, user_data, version FROM ${n.table} WHERE bucket = $1 AND fingerprint = $2 AND expires_at > now()`),
      list: statement('list', `SELECT fingerprint, data, user_data, version FROM ${n.table} WHERE user_key = $1 AND expires_at > now() ORDER BY used_at, fingerprint`),
      commit: statement('commit', `SELECT ${n.commit}($1, $2, $3, $4, $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::float8[], $10) AS evicted`),
      users: statement('users', `SELECT DISTINCT ON (user_key) user_data FROM ${n.table} WHERE expires_at > now() ORDER BY user_key, used_at DESC`),
      // SKIP LOCKED: instances sweeping at once take different rows, and a row a change holds waits for the next sweep.
      sweep: statement('sweep', `DELETE FROM ${n.table} WHERE (bucket, fingerprint) IN (SELECT bucket, fingerprint FROM ${n.table} WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED) AND expires_at <= now()`),
      clock: statement('clock', 'SELECT extract(epoch FROM clock_timestamp())::float8 * 1000 AS now'),
      exists: statement('exists', "SELECT to_regclass($1) IS NOT NULL AS table, to_regprocedure($2) IS NOT NULL AS function, current_setting('transaction_isolation') AS isolation")
    }
    // An idle connection that breaks (the database restarts) is reported as the pool's 'error'
    // event, which would end the process without a listener; the next query answers 503.
    pool.on('error', this.#onPoolError)
  }

  readonly #onPoolError = (err: Error): void => { this.#lastError = err }

  /** Starts the periodic sweep (once), unref'd: it never keeps the process alive. */
  #startSweep (): void {
    if (this.#sweepInterval === 0 || this.#sweepTimer !== undefined) return
    this.#sweepTimer = setInterval(() => { void this.sweep().catch(() => {}) }, this.#sweepInterval)
    this.#sweepTimer.unref()
  }

  /** Creates the schema, table, indexes and function where missing, in one transaction. */
  async migrate (): Promise<void> {
    // Nothing to do, and no DDL (which needs rights and takes locks), when everything is there.
    if ((await this.#check()).exists) return
    const sql = postgresSchema(this.#schemaOptions)
    // One simple query of several statements is one transaction: all of it, or (on an error)
    // none, and the connection is left usable either way. The lock keeps two instances starting
    // at once from creating the same table twice.
    await this.#query({ text: `SELECT pg_advisory_xact_lock(${this.#names.lockClass}, 0); ${sql}` }, [])
  }

  /** Whether the table and function exist, and the isolation level of the pool's transactions. */
  async #check (): Promise<{ exists: boolean, isolation: string }> {
    const { table, commit } = this.#names
    const [row] = await this.#run(this.#sql.exists, [table, `${commit}(text, text, text, integer, text[], bigint[], text[], bigint[], double precision[], double precision)`])
    return { exists: row.table === true && row.function === true, isolation: String(row.isolation) }
  }

  /**
   * Called by fastify-pow when it is registered: creates what is missing with `createTables`, or
   * else checks that the table and function exist, so that a missing migration fails
   * `app.ready()` with this message instead of every request with a 503. A database that does
   * not answer fails nothing: the app starts, and requests that need the store answer 503 until
   * it does (with `createTables`, the table is created then if it is missing).
   */
  async ready (log?: StoreLog): Promise<void> {
    await this.#prepare(log)
    this.#startSweep()
  }

  async #prepare (log?: StoreLog): Promise<void> {
    const options = (this.#pool as { options?: { connectionTimeoutMillis?: number } }).options
    if (options !== undefined && !(Number(options.connectionTimeoutMillis) > 0)) {
      log?.warn({}, 'PostgresStore: the pool has no connectionTimeoutMillis: while PostgreSQL is unreachable, every connection attempt holds a slot of the pool until the system gives up; set it (for example 2000)')
    }
    let found
    try {
      found = await this.#check()
    } catch (err) {
      if (answered(err) || log === undefined) throw err
      log.error({ err }, `PostgresStore: PostgreSQL did not answer at start, so ${this.#names.plain} was not checked; requests that need a session answer 503 until it does`)
      return
    }
    // The function reads what the changes before it wrote once it holds the user's lock: each
    // of its statements needs a snapshot of its own, which only read committed gives.
    if (found.isolation !== 'read committed') {
      throw new Error(`PostgresStore: the pool's connections run transactions at ${found.isolation}; the store needs read committed (PostgreSQL's default): set default_transaction_isolation to 'read committed' for its role or in the pool's options`)
    }
    if (found.exists) return
    if (this.#createTables) return await this.migrate()
    throw new Error(`PostgresStore: the table ${this.#names.plain} or its function is missing: run store.migrate(), pass createTables: true, or apply the SQL of postgresSchema() (lib/stores/postgres.sql in the package)`)
  }

  /** Stops the sweep. The pool stays open: it is the application's. */
  async close (): Promise<void> {
    clearInterval(this.#sweepTimer)
    this.#sweepTimer = undefined
    ;(this.#pool as { removeListener?: (event: 'error', listener: (err: Error) => void) => unknown }).removeListener?.('error', this.#onPoolError)
  }

  /** Deletes expired rows, at most `sweepLimit`, in batches of 1000; returns how many. */
  async sweep (): Promise<number> {
    if (this.#sweeping) return 0
    this.#sweeping = true
    let deleted = 0
    try {
      while (deleted < this.#sweepLimit) {
        const batch = Math.min(SWEEP_BATCH, this.#sweepLimit - deleted)
        const count = await this.#count(this.#sql.sweep, [batch])
        deleted += count
        if (count < batch) break
      }
    } finally {
      this.#sweeping = false
    }
    return deleted
  }

  async read (bucket: string, fingerprint: string): Promise<StoredDevice | null> {
    const rows = await this.#run(this.#sql.read, [bucket, fingerprint])
    if (rows.length === 0) return null
    const row = rows[0]
    return { data: row.data, user: row.user_data, version: Number(row.version) }
  }

  async list (userKey: string): Promise<Array<StoredDevice & { fingerprint: string }>> {
    const rows = await this.#run(this.#sql.list, [userKey])
    return rows.map((row) => ({ fingerprint: row.fingerprint, data: row.data, user: row.user_data, version: Number(row.version) }))
  }

  async commit (change: DeviceChange): Promise<CommitResult> {
    const { userKey, devices, user, limit } = change
    if (limit !== undefined && !(Number.isInteger(limit) && limit >= 0 && limit <= 2 ** 31 - 1)) {
      throw new TypeError('PostgresStore: DeviceChange.limit must be a non-negative integer')
    }
    const fingerprints: string[] = []
    const versions: Array<number | null> = []
    const data: Array<string | null> = []
    const ttls: number[] = []
    const used: number[] = []
    for (const write of devices) {
      if (write.data !== null && (typeof write.ttl !== 'number' || Number.isNaN(write.ttl) || !Number.isFinite(write.usedAt))) {
        throw new TypeError('PostgresStore: a device write needs a ttl and a finite usedAt, in milliseconds')
      }
      fingerprints.push(write.fingerprint)
      versions.push(write.version ?? null)
      data.push(write.data)
      ttls.push(write.data === null ? 0 : Math.min(Math.max(1, Math.ceil(write.ttl)), MAX_TTL_MS))
      used.push(write.data === null ? 0 : write.usedAt)
    }
    const deadline = await this.#deadline()
    const rows = await this.#run(this.#sql.commit, [userKey, userBucket(userKey), user ?? null, limit ?? null, fingerprints, versions, data, ttls, used, deadline])
    const evicted = rows[0].evicted as string[] | null
    return evicted === null ? { ok: false, evicted: [] } : { ok: true, evicted }
  }

  async users (): Promise<string[]> {
    const rows = await this.#run(this.#sql.users, [])
    return rows.map((row) => row.user_data)
  }

  async #run (statement: Statement, values: unknown[]): Promise<any[]> {
    return (await this.#query(statement, values)).rows
  }

  async #count (statement: Statement, values: unknown[]): Promise<number> {
    return (await this.#query(statement, values)).rowCount ?? 0
  }

  /**
   * When a change sent now must have run, on the server's clock: a change that reaches the
   * server late (a stalled network, a lock) is past it and writes nothing. Before the client
   * gives up, by a margin, so that a change finishing just in time still answers in time.
   */
  async #deadline (): Promise<number> {
    const started = realNow()
    if (started - this.#clockCheckedAt > CLOCK_CHECK_INTERVAL) {
      const [row] = await this.#run(this.#sql.clock, [])
      const after = realNow()
      this.#clockOffset = Number(row.now) - (started + after) / 2
      this.#clockCheckedAt = after
    }
    return started + this.#clockOffset + this.#timeout - Math.min(100, this.#timeout / 4)
  }

  /**
   * One query on a connection of the pool, bounded by `commandTimeout` from the call (waiting for
   * a connection included). A query that times out has its connection destroyed, not handed
   * back busy.
   */
  #query (statement: { name?: string, text: string }, values: unknown[]): Promise<{ rows: any[], rowCount: number | null }> {
    return new Promise((resolve, reject) => {
      let settled = false
      let release: ((err?: Error) => void) | undefined
      const fail = (err: Error): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        reject(err)
      }
      const timer = setTimeout(() => {
        const err = new Error(`PostgreSQL query timed out after ${this.#timeout} ms`)
        fail(err)
        // Ends the connection: a query still running on it must not hold a client of the pool.
        release?.(err)
        release = undefined
      }, this.#timeout)
      this.#pool.connect((err, client, done) => {
        if (err !== undefined && err !== null) return fail(this.#explain(err))
        if (client === undefined) return fail(new Error('PostgreSQL pool gave no client'))
        if (settled) return done()
        release = done
        const onError = (err: Error): void => {
          release?.(err)
          release = undefined
          fail(this.#explain(err))
        }
        client.once('error', onError)
        client.query({ ...statement, values }, (err, result) => {
          client.removeListener('error', onError)
          if (release !== undefined) {
            // A failed query leaves a usable connection (an error answer, not a broken socket).
            release()
            release = undefined
          }
          if (err !== undefined && err !== null) return fail(this.#explain(err))
          if (settled) return
          settled = true
          clearTimeout(timer)
          resolve(result)
        })
      })
    })
  }

  /** The error with what the store knows: a missing table says how to create it. */
  #explain (err: Error): Error {
    const code = (err as { code?: string }).code
    if (code === '42P01' || code === '42883') {
      // Missing at start only when the database did not answer then: create it now.
      if (this.#createTables && this.#healing === undefined) {
        this.#healing = this.migrate().catch(() => {}).finally(() => { this.#healing = undefined })
      }
      return new Error(`PostgresStore: the table ${this.#names.plain} or its function is missing (${err.message}): run store.migrate()`, { cause: err })
    }
    if (this.#lastError !== undefined && /terminated|ECONNRE/.test(err.message) && err !== this.#lastError) {
      return new Error(`${err.message} (the pool's last error: ${this.#lastError.message})`, { cause: err })
    }
    return err
  }
}
