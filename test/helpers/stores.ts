import { once } from 'node:events'
import { test, type Test } from 'tap'
import { MemoryStore, type PowStore, RedisStore } from '../../lib/index.js'
import { createDatabase, pgTest, postgresAvailable, postgresStore } from './postgres.js'
import { startRedis } from './redis.js'

/** A built-in store for tests that run on each: how to make one (on servers of `t`'s own), and how to declare a top-level test that needs it. */
export interface StoreKind {
  name: 'MemoryStore' | 'RedisStore' | 'PostgresStore'
  make: (t: Test) => Promise<PowStore>
  /** tap's `test`, or for PostgresStore one that skips loudly without a server (and fails without one under CI). */
  test: (title: string, fn: (t: Test) => Promise<void>) => void
}

export const storeKinds: StoreKind[] = [
  { name: 'MemoryStore', make: async () => new MemoryStore(), test: (title, fn) => { test(title, fn) } },
  {
    name: 'RedisStore',
    make: async (t) => {
      const server = await startRedis(t)
      const client = server.client()
      await once(client, 'ready')
      return new RedisStore(client)
    },
    test: (title, fn) => { test(title, fn) }
  },
  {
    name: 'PostgresStore',
    make: async (t) => await postgresStore(await createDatabase(t)),
    test: (title, fn) => { pgTest(title, {}, fn) }
  }
]

/**
 * Every built-in store, each made on demand on servers of `t`'s own: for subtests of one test.
 * Without PostgreSQL (outside CI) the PostgresStore is left out; the loud skip message says so.
 */
export function allStores (t: Test): Array<[string, () => Promise<PowStore>]> {
  return storeKinds
    .filter((kind) => kind.name !== 'PostgresStore' || postgresAvailable || process.env.CI === 'true')
    .map((kind) => [kind.name, async () => await kind.make(t)])
}
