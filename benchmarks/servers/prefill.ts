/**
 * Sessions written straight into a store for the growth figures: what n logins of n distinct
 * users would write (same record, user and TTLs as fastify-pow's defaults), without HTTP.
 */
import { createHash, randomBytes } from 'node:crypto'
import type * as Pow from '../../lib/index.js'

const TTL = 30 * 60_000
const GRACE = 10_000

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

/** What a login writes: a session of a new browser of user i; the id hash in the store's format. */
async function putOne (store: Pow.PowStore, i: number, now: number, userBucket: (key: string) => string): Promise<void> {
  const user = userOf(i)
  const userKey = String(user.id)
  // As a login makes it: randomToken() then hashToken() (lib/crypto.ts), so the key strings the
  // store keeps are built the same way.
  const token = userBucket(userKey) + random(32, 'base64url')
  const sidHash = token.slice(0, 4) + '.' + createHash('sha256').update(token).digest('base64url')
  const record = { userKey, fingerprint: random(16, 'base64url'), insertedAt: now, signedInAt: now, metadata: {} }
  if (!await store.putSession(sidHash, record, user, TTL, GRACE)) throw new Error('prefill: putSession refused a write')
}

/** Stores n sessions of n distinct users through `store.putSession`, `concurrency` at a time. */
export async function fill (store: Pow.PowStore, n: number, concurrency: number, userBucket: (key: string) => string): Promise<void> {
  const now = Date.now()
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < n) await putOne(store, next++, now, userBucket)
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
