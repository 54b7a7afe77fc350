import { once } from 'node:events'
import type { Test } from 'tap'
import { MemoryStore, type PowStore, RedisStore } from '../../lib/index.js'
import { startRedis } from './redis.js'

/** Both built-in stores, each made on demand: a MemoryStore, and a RedisStore on a private redis-server of `t`. */
export function bothStores (t: Test): Array<[string, () => Promise<PowStore>]> {
  return [
    ['MemoryStore', async () => new MemoryStore()],
    ['RedisStore', async () => {
      const server = await startRedis(t)
      const client = server.client()
      await once(client, 'ready')
      return new RedisStore(client)
    }]
  ]
}
