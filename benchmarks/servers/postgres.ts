/**
 * The connection pool of every PostgreSQL variant: a node-postgres `Pool` of {@link POOL_SIZE}
 * connections to the run's database (BENCH_POSTGRES_DB_URL), with the application_name
 * BENCH_POSTGRES_APP, by which the runner finds the backend processes serving it in
 * pg_stat_activity and adds their CPU time to the server's. Idle connections are kept
 * (`idleTimeoutMillis: 0`, the default closes them after 10 s): the backends measured stay the
 * same from one load to the next, instead of being closed while other servers are measured and
 * started again (a backend's start is not the cost of a request). `connectionTimeoutMillis` is set,
 * as PostgresStore asks of a pool (it warns without one), for all of them alike.
 */
import pg from 'pg'
import { env } from './common.js'

/** Connections per pool, the same for every variant (node-postgres' default `max`). */
export const POOL_SIZE = 10

export function pgPool (): pg.Pool {
  const pool = new pg.Pool({
    connectionString: env('BENCH_POSTGRES_DB_URL'),
    application_name: env('BENCH_POSTGRES_APP'),
    max: POOL_SIZE,
    idleTimeoutMillis: 0,
    connectionTimeoutMillis: 2000
  })
  // A connection ended by the server (the database dropped at the end) must not end the process.
  pool.on('error', () => {})
  return pool
}
