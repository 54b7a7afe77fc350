/**
 * Sessions written straight into a store for the growth figures: what n logins of n distinct
 * users would write (the same device records, users and TTLs as fastify-pow's defaults), without HTTP.
 */
import { createHash, randomBytes } from 'node:crypto'
import { deviceWrite } from '../../lib/devices.js'
import type * as Pow from '../../lib/index.js'
import { type Device, type Minted, type Rules, signIn } from '../../lib/lifecycle.js'

const TTL = 30 * 60_000

/** The i-th stored user: a distinct user per session, about the size of USER. */
export function userOf (i: number): { id: number, email: string, name: string } {
  return { id: 1000 + i, email: `user${i}@example.com`, name: `User ${i}` }
}

/** The bytes the first `n` users take in MemoryStore's form (their JSON as UTF-8), per user. */
export function userJsonBytes (n: number): number {
  let bytes = 0
  for (let i = 0; i < n; i++) bytes += Buffer.byteLength(JSON.stringify(userOf(i)))
  return bytes / Math.max(1, n)
}

// Random bytes drawn 48 KiB at a time: one randomBytes() call per session costs more than the
// store's own work, and the fill is not what is measured.
let pool = Buffer.alloc(0)
let poolAt = 0
function random (bytes: number, encoding: BufferEncoding): string {
  if (poolAt + bytes > pool.length) {
    pool = randomBytes(48 * 1024)
    poolAt = 0
  }
  poolAt += bytes
  return pool.toString(encoding, poolAt - bytes, poolAt)
}

// The default options' durations, as the lifecycle reads them.
const RULES: Rules = { ttl: TTL, renewAfter: 15 * 60_000, grace: 10_000, absoluteTtl: undefined, tokenTtl: 30 * 24 * 60 * 60_000, tokenAbsoluteTtl: undefined }

/**
 * What a login writes: a new device of user `owner(i)` with its session id, built by the
 * lifecycle as `create()` builds it, so the records the store keeps are the real ones.
 */
async function putOne (store: Pow.PowStore, i: number, now: number, userBucket: (key: string) => string, owner: (i: number) => number): Promise<void> {
  const user = userOf(owner(i))
  const userKey = String(user.id)
  const bucket = userBucket(userKey)
  const fingerprint = random(16, 'base64url')
  const mint = (): Minted => {
    const secret = bucket + fingerprint + random(32, 'base64url')
    return { secret, hash: createHash('sha256').update(secret).digest('base64url') }
  }
  const step = signIn(userKey, fingerprint, {}, { session: true, token: false }, now, RULES, mint)
  const { ok } = await store.commit({ userKey, devices: [deviceWrite(step.device as Device, 0, now, RULES)], user: JSON.stringify(user) })
  if (!ok) throw new Error('prefill: the store refused a new device')
}

/**
 * Stores n sessions through `store.commit`, `concurrency` at a time: session i is a new device
 * of user `owner(i)` (by default user i, n distinct users).
 */
export async function fill (
  store: Pow.PowStore, n: number, concurrency: number, userBucket: (key: string) => string, owner: (i: number) => number = (i) => i
): Promise<void> {
  const now = Date.now()
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < n) await putOne(store, next++, now, userBucket, owner)
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(n, 1)) }, worker))
}

/**
 * The memory in use after two full collections (needs node --expose-gc): the V8 heap and the
 * ArrayBuffers (Buffers, typed arrays), where MemoryStore keeps its strings and indexes.
 */
export function memoryAfterGc (): number {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error('measuring the heap needs node --expose-gc')
  gc()
  gc()
  const { heapUsed, arrayBuffers } = process.memoryUsage()
  return heapUsed + arrayBuffers
}
