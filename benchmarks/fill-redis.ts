/**
 * Fills a Redis with BENCH_PREFILL sessions of as many users through RedisStore.commit (the
 * script a login runs), in its own process so that the measured server starts clean. Reports the
 * time it took and Redis' used_memory per session. Started by benchmarks/run.ts.
 */
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { Redis } from 'ioredis'
import type * as Pow from '../lib/index.js'
import { fill } from './servers/prefill.js'

const dist = pathToFileURL(path.resolve(import.meta.dirname, '../dist/lib/index.js')).href
const { RedisStore, userBucket } = await import(dist) as typeof Pow

export interface RedisFill {
  fillMs: number
  sessions: number
  usedMemoryDelta: number
  bytesPerSession: number
  keysAdded: number
}

async function usedMemory (client: Redis): Promise<number> {
  return Number(/used_memory:(\d+)/.exec(await client.info('memory'))?.[1])
}

async function main (): Promise<RedisFill> {
  const n = Number(process.env.BENCH_PREFILL)
  // Auto-pipelining: the many concurrent commits share socket writes.
  const client = new Redis({ host: '127.0.0.1', port: Number(process.env.BENCH_REDIS_PORT), lazyConnect: true, enableAutoPipelining: true })
  await client.connect()
  try {
    const before = await usedMemory(client)
    const keysBefore = await client.dbsize()
    const started = performance.now()
    await fill(new RedisStore(client, { namespace: process.env.BENCH_NAMESPACE ?? 'pow', commandTimeout: 60_000 }), n, 512, userBucket)
    const fillMs = performance.now() - started
    const after = await usedMemory(client)
    return { fillMs, sessions: n, usedMemoryDelta: after - before, bytesPerSession: (after - before) / n, keysAdded: await client.dbsize() - keysBefore }
  } finally {
    client.disconnect()
  }
}

main().then(
  (result) => { process.send?.({ type: 'result', result }) },
  (err: Error) => {
    process.send?.({ type: 'error', error: err.stack ?? String(err) })
    console.error(err)
    process.exitCode = 1
  }
)
