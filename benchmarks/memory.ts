/**
 * Where a MemoryStore session's bytes go: fills a MemoryStore with BENCH_MEMORY_SESSIONS sessions
 * (default 50k; BENCH_SESSIONS_PER_USER sessions per user, default 1) the way the growth servers
 * do, takes a V8 heap snapshot before and after, and prints the growth per session by kind of
 * heap object. Run with `npm run bench -- --memory` (it needs node --expose-gc, which the runner
 * passes). Above 300k sessions the snapshots are too large to read back (one JSON string), so
 * only the heap figures are printed.
 */
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import v8 from 'node:v8'
import type * as Pow from '../lib/index.js'
import { fill, memoryAfterGc, userJsonBytes } from './servers/prefill.js'

const dist = pathToFileURL(path.resolve(import.meta.dirname, '../dist/lib/index.js')).href
const { MemoryStore, userBucket } = await import(dist) as typeof Pow

const n = Number(process.env.BENCH_MEMORY_SESSIONS ?? 50_000)
const perUser = Math.max(1, Number(process.env.BENCH_SESSIONS_PER_USER ?? 1))
const withCensus = n <= 300_000

interface Snapshot {
  snapshot: { meta: { node_fields: string[], node_types: [string[]] } }
  nodes: number[]
  strings: string[]
}

/** Self size and count per kind of heap object. */
function census (): Map<string, { bytes: number, count: number }> {
  const file = v8.writeHeapSnapshot(path.join(os.tmpdir(), `fastify-pow-memory-${process.pid}-${Date.now()}.heapsnapshot`))
  const snap = JSON.parse(readFileSync(file, 'utf8')) as Snapshot
  rmSync(file)
  const fields = snap.snapshot.meta.node_fields
  const types = snap.snapshot.meta.node_types[0]
  const width = fields.length
  const typeAt = fields.indexOf('type')
  const nameAt = fields.indexOf('name')
  const sizeAt = fields.indexOf('self_size')
  const result = new Map<string, { bytes: number, count: number }>()
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + typeAt]]
    let kind: string
    if (type === 'string') kind = 'string (flat)'
    else if (type === 'concatenated string') kind = 'string (cons: a concatenation not flattened)'
    else if (type === 'sliced string') kind = 'string (sliced)'
    else if (type === 'number') kind = 'heap number (a double outside Smi range)'
    else if (type === 'object') kind = `object ${snap.strings[snap.nodes[i + nameAt]]}`
    else if (type === 'array') kind = 'array (backing stores: Map tables, arrays, properties)'
    else kind = type
    const entry = result.get(kind) ?? { bytes: 0, count: 0 }
    entry.bytes += snap.nodes[i + sizeAt]
    entry.count++
    result.set(kind, entry)
  }
  return result
}

async function main (): Promise<string> {
  const store = new MemoryStore()
  const before = withCensus ? census() : new Map()
  const heapBefore = memoryAfterGc()
  await fill(store, n, 1, userBucket, (i) => Math.floor(i / perUser))
  const heapAfter = memoryAfterGc()
  const after = withCensus ? census() : new Map<string, { bytes: number, count: number }>()
  ;(globalThis as { keep?: unknown }).keep = store
  // The users' JSON as the store keeps it (UTF-8), as benchmarks/servers/pow.ts counts it.
  const users = Math.ceil(n / perUser)
  const userBytes = userJsonBytes(users) * users / n

  const lines: string[] = []
  const perSession = (heapAfter - heapBefore) / n
  lines.push(`MemoryStore, ${n} sessions, ${perUser} per user: heap and buffers +${perSession.toFixed(0)} B per session (after gc), ` +
    `${(perSession - userBytes).toFixed(0)} B beyond the users' JSON (${userBytes.toFixed(0)} B per session); slots ${JSON.stringify(store.slots)}`)
  if (!withCensus) return lines.join('\n')
  lines.push('growth per session by kind of heap object (V8 heap snapshots before and after):')
  const rows = [...after.entries()].map(([kind, a]) => {
    const b = before.get(kind) ?? { bytes: 0, count: 0 }
    return { kind, bytes: (a.bytes - b.bytes) / n, count: (a.count - b.count) / n }
  }).filter((r) => Math.abs(r.bytes) >= 1).sort((x, y) => y.bytes - x.bytes)
  let total = 0
  for (const r of rows) {
    total += r.bytes
    lines.push(`  ${r.bytes.toFixed(1).padStart(8)} B  ${r.count.toFixed(2).padStart(6)} objects   ${r.kind}`)
  }
  lines.push(`  ${total.toFixed(1).padStart(8)} B  in all`)
  return lines.join('\n')
}

main().then(
  (text) => {
    if (typeof process.send === 'function') process.send({ type: 'result', result: text })
    else console.log(text)
  },
  (err: Error) => {
    process.send?.({ type: 'error', error: err.stack ?? String(err) })
    console.error(err)
    process.exitCode = 1
  }
)
