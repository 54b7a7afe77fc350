/**
 * Reads a V8 .cpuprofile (node --cpu-prof) and says where the time went: self time per function,
 * per package, and the inclusive time of fastify-pow's own functions (dist/lib/*.js, named after
 * their lib/*.ts source).
 */
import { readFileSync } from 'node:fs'

interface CallFrame { functionName: string, url: string, lineNumber: number }
interface ProfileNode { id: number, callFrame: CallFrame, hitCount?: number, children?: number[] }
interface CpuProfile { nodes: ProfileNode[], samples?: number[], timeDeltas?: number[], startTime: number, endTime: number }

export interface FunctionTime {
  name: string
  where: string
  percent: number
}

export interface ProfileSummary {
  file: string
  samples: number
  /** Share of samples that were not idle. */
  busyPercent: number
  /** Top self-time functions, percent of busy samples. */
  topSelf: FunctionTime[]
  /** Self time by package / area, percent of busy samples. */
  byArea: Array<{ area: string, percent: number }>
  /** fastify-pow functions by inclusive time (self + callees), percent of busy samples. */
  libInclusive: FunctionTime[]
  /** Self time inside dist/lib (fastify-pow's own code), percent of busy samples. */
  libSelfPercent: number
}

function area (frame: CallFrame): string {
  const { url, functionName } = frame
  if (url === '') {
    if (functionName === '(garbage collector)') return 'GC'
    if (functionName === '(program)') return 'V8/native (program)'
    if (functionName === '(idle)') return 'idle'
    return `native ${functionName}`
  }
  if (url.includes('/dist/lib/')) return 'fastify-pow (lib/)'
  if (url.startsWith('node:')) return 'node core'
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (m !== null) return m[1]
  return 'benchmark server'
}

function where (frame: CallFrame): string {
  const { url, lineNumber } = frame
  if (url === '') return ''
  const lib = /\/dist\/(lib\/.*)\.js$/.exec(url)
  if (lib !== null) return `${lib[1]}.ts (dist line ${lineNumber + 1})`
  const mod = /node_modules\/(.*)$/.exec(url)
  if (mod !== null) return `${mod[1]}:${lineNumber + 1}`
  return `${url.replace(/^file:\/\/.*\/benchmarks\//, 'benchmarks/')}:${lineNumber + 1}`
}

/**
 * `window`: only samples taken between these two instants count, in µs of the monotonic clock
 * (`process.hrtime.bigint() / 1000n` in any process on the machine: V8 stamps samples with the
 * same clock), so start-up, module loading and warm-up stay out.
 */
export function analyzeProfile (file: string, window?: { startUs: number, endUs: number }, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
  const byId = new Map<number, ProfileNode>()
  for (const node of profile.nodes) byId.set(node.id, node)
  // Self samples per node: from `samples` when present (hitCount can be absent), else hitCount.
  const hits = new Map<number, number>()
  if (profile.samples !== undefined && profile.samples.length > 0) {
    const deltas = profile.timeDeltas ?? []
    let t = profile.startTime
    for (let i = 0; i < profile.samples.length; i++) {
      t += deltas[i] ?? 0
      if (window !== undefined && (t < window.startUs || t > window.endUs)) continue
      const id = profile.samples[i]
      hits.set(id, (hits.get(id) ?? 0) + 1)
    }
  } else {
    for (const node of profile.nodes) hits.set(node.id, node.hitCount ?? 0)
  }
  let total = 0
  let idle = 0
  for (const node of profile.nodes) {
    const h = hits.get(node.id) ?? 0
    total += h
    if (node.callFrame.functionName === '(idle)') idle += h
  }
  const busy = Math.max(1, total - idle)
  const pct = (n: number): number => Math.round(n / busy * 1000) / 10

  const key = (frame: CallFrame): string => `${frame.functionName || '(anonymous)'}\u0000${frame.url}\u0000${frame.lineNumber}`
  const self = new Map<string, { frame: CallFrame, hits: number }>()
  const areas = new Map<string, number>()
  for (const node of profile.nodes) {
    const h = hits.get(node.id) ?? 0
    if (h === 0 || node.callFrame.functionName === '(idle)') continue
    const k = key(node.callFrame)
    const entry = self.get(k) ?? { frame: node.callFrame, hits: 0 }
    entry.hits += h
    self.set(k, entry)
    const a = area(node.callFrame)
    areas.set(a, (areas.get(a) ?? 0) + h)
  }

  // Inclusive time of lib functions: each sample counts once for every distinct lib function on
  // its stack (async continuations show up as their own roots under the microtask runner).
  const inclusive = new Map<string, { frame: CallFrame, hits: number }>()
  const root = profile.nodes[0]
  const stack: Array<{ node: ProfileNode, libKeys: Set<string> }> = [{ node: root, libKeys: new Set() }]
  while (stack.length > 0) {
    const { node, libKeys } = stack.pop() as { node: ProfileNode, libKeys: Set<string> }
    let keys = libKeys
    if (node.callFrame.url.includes('/dist/lib/')) {
      const k = key(node.callFrame)
      if (!libKeys.has(k)) {
        keys = new Set(libKeys)
        keys.add(k)
        if (!inclusive.has(k)) inclusive.set(k, { frame: node.callFrame, hits: 0 })
      }
    }
    const h = hits.get(node.id) ?? 0
    if (h > 0) for (const k of keys) (inclusive.get(k) as { hits: number }).hits += h
    for (const child of node.children ?? []) {
      const c = byId.get(child)
      if (c !== undefined) stack.push({ node: c, libKeys: keys })
    }
  }

  const toTime = ({ frame, hits: h }: { frame: CallFrame, hits: number }): FunctionTime =>
    ({ name: frame.functionName || '(anonymous)', where: where(frame), percent: pct(h) })
  return {
    file,
    samples: total,
    busyPercent: Math.round((total - idle) / Math.max(1, total) * 1000) / 10,
    topSelf: [...self.values()].sort((a, b) => b.hits - a.hits).slice(0, top).map(toTime),
    byArea: [...areas.entries()].sort((a, b) => b[1] - a[1]).map(([a, h]) => ({ area: a, percent: pct(h) })),
    libInclusive: [...inclusive.values()].sort((a, b) => b.hits - a.hits).slice(0, top).map(toTime),
    libSelfPercent: pct(areas.get('fastify-pow (lib/)') ?? 0)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const file of process.argv.slice(2)) console.log(JSON.stringify(analyzeProfile(file), null, 2))
}
