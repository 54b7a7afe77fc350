/**
 * Per-request cost, compared in alternating slices: two servers, each loaded for one short slice
 * after the other (the order swapped every slice), the CPU time their processes used per answered
 * request taken in every slice, and the ratio of the two taken slice by slice. The machine's speed
 * swings by 2x from minute to minute on a shared host; two slices a second apart see nearly the
 * same machine, so the median of the per-slice ratios moves far less than either side's figure.
 *
 * CPU time is read from `/proc/<pid>/task/<tid>/schedstat` (nanoseconds on the CPU, every thread
 * of the process: Node's main thread, its GC and libuv threads; redis-server's threads), not from
 * `/proc/<pid>/stat`, whose 10 ms ticks are too coarse for a slice of a second.
 */
import { readdirSync, readFileSync } from 'node:fs'
import autocannon from 'autocannon'

/** One side of a comparison: a running server, the processes whose CPU counts, the request. */
export interface Side {
  id: string
  label: string
  port: number
  /** The server's pid and its store's (redis-server), whose CPU time counts for this side. */
  pids: number[]
  /** The Cookie header sent, or none for an anonymous request. */
  cookie?: string | undefined
  /** The status every answer must have: 200 signed in, 401 anonymous. */
  status: 200 | 401
}

export interface Slice {
  /** CPU µs per answered request of a and of b. */
  a: number
  b: number
  /** b / a: a's requests per CPU-second over b's (above 1: a costs less). */
  ratio: number
}

export interface Comparison {
  name: string
  a: string
  b: string
  slices: Slice[]
  /** Median of the per-slice ratios, and their range. */
  median: number
  min: number
  max: number
  /** Median CPU µs per request of each side. */
  aUs: number
  bUs: number
}

export function median (values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** Nanoseconds on the CPU so far of every thread of `pid` (threads that ended are not counted). */
export function threadCpuNs (pid: number): number {
  let total = 0
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      total += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0])
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return total
}

function cpuNs (pids: number[]): number {
  let total = 0
  for (const pid of pids) total += threadCpuNs(pid)
  return total
}

/** Loads `side` for `seconds` and returns the CPU µs its processes used per answered request. */
export async function slice (side: Side, seconds: number, connections: number): Promise<number> {
  const before = cpuNs(side.pids)
  const result = await autocannon({
    url: `http://127.0.0.1:${side.port}/me`,
    connections,
    duration: seconds,
    headers: side.cookie === undefined ? {} : { cookie: side.cookie }
  })
  const used = cpuNs(side.pids) - before
  const answered = side.status === 200 ? result['2xx'] : result['4xx']
  const total = result.requests.total
  if (result.errors > 0 || result.timeouts > 0 || answered === 0 || answered < total) {
    throw new Error(`${side.id}: ${answered} of ${total} answers were ${side.status}, ${result.errors} errors, ${result.timeouts} timeouts`)
  }
  return used / 1e3 / answered
}

/**
 * Compares `a` with `b` over `count` pairs of slices, a first in even slices and b first in odd
 * ones, so that neither side always runs on the warmer (or colder) half of a pair.
 */
export async function compare (name: string, a: Side, b: Side, options: { slices: number, seconds: number, connections: number }): Promise<Comparison> {
  const slices: Slice[] = []
  for (let i = 0; i < options.slices; i++) {
    let aUs: number
    let bUs: number
    if (i % 2 === 0) {
      aUs = await slice(a, options.seconds, options.connections)
      bUs = await slice(b, options.seconds, options.connections)
    } else {
      bUs = await slice(b, options.seconds, options.connections)
      aUs = await slice(a, options.seconds, options.connections)
    }
    slices.push({ a: aUs, b: bUs, ratio: bUs / aUs })
  }
  const ratios = slices.map((s) => s.ratio)
  return {
    name,
    a: a.id,
    b: b.id,
    slices,
    median: median(ratios),
    min: Math.min(...ratios),
    max: Math.max(...ratios),
    aUs: median(slices.map((s) => s.a)),
    bUs: median(slices.map((s) => s.b))
  }
}

/**
 * One comparison from the parts measured on several starts of the two servers: their slices
 * pooled (the median and range over all of them), and each start's own median beside them.
 * A server process settles at its start into a state of V8's inline caches that can cost it a
 * few µs per request for its whole life (benchmarks/README.md), so one start is one sample.
 */
export function pool (parts: Comparison[]): Comparison & { starts: number[] } {
  const slices = parts.flatMap((part) => part.slices)
  const ratios = slices.map((s) => s.ratio)
  return {
    name: parts[0].name,
    a: parts[0].a,
    b: parts[0].b,
    slices,
    median: median(ratios),
    min: Math.min(...ratios),
    max: Math.max(...ratios),
    aUs: median(slices.map((s) => s.a)),
    bUs: median(slices.map((s) => s.b)),
    starts: parts.map((part) => part.median)
  }
}
