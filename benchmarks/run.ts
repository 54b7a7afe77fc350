/**
 * `npm run bench`: the cost of an authenticated request with fastify-pow beside the alternatives,
 * and how it grows. See benchmarks/README.md.
 *
 * One run: builds dist/ when stale, starts private redis-servers, creates a database of its own
 * on the machine's PostgreSQL (the PostgreSQL rows are skipped, loudly, without one), starts
 * every server variant in its own process, checks that each one really authenticates, then
 * loads GET /me with autocannon in interleaved rounds (every variant once per round, in
 * rotating order). Then the in-process operation timings, then the cost stage (pairs of servers
 * in alternating slices by CPU time per request, slices.ts: the per-request targets), then (when
 * a target is missed, or with --profile) a CPU profile of the fastify-pow servers under load.
 * Prints the tables, the targets and the PostgreSQL ratios, and writes
 * benchmarks/results/latest.json.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { isDeepStrictEqual } from 'node:util'
import os from 'node:os'
import path from 'node:path'
import autocannon, { type Result as AutocannonResult } from 'autocannon'
import type { RedisFill } from './fill-redis.js'
import type { OpsResult, OpTiming } from './ops.js'
import { analyzeProfile, type ProfileSummary } from './profile.js'
import { type Comparison, compare, pool, type Side } from './slices.js'
import {
  type BenchDatabase, cookieHeader, cpuSeconds, createDatabase, POSTGRES_URL, ROOT, request, runChild, startRedis, startServer,
  type RedisServer, type ServerProcess
} from './helpers.js'
import { USER } from './servers/common.js'
import { POOL_SIZE } from './servers/postgres.js'

const wallStart = performance.now()
const argv = new Set(process.argv.slice(2))
if (argv.has('--help') || argv.has('-h')) {
  console.log(readFileSync(path.join(ROOT, 'benchmarks', 'README.md'), 'utf8'))
  process.exit(0)
}
const quick = argv.has('--quick')
/** `--cost`: only the servers the cost pairs compare, one short round, then the cost stage. */
const costOnly = argv.has('--cost')
/**
 * `--only WORD[,WORD...]` (or `--only=...`): only the variants whose id contains one of the words,
 * say `--only postgres`; no growth servers or operation timings unless asked for by env.
 */
const onlyArg = process.argv.slice(2).find((arg, i, args) => arg.startsWith('--only=') || args[i - 1] === '--only')
const only = costOnly
  ? ['bare', 'cookie', 'raw-redis', 'fastify-session', 'secure-session', 'pow-memory', 'pow-redis']
  : onlyArg?.replace(/^--only=/, '').split(',').filter((word) => word !== '')
if (argv.has('--only') && (only === undefined || only.length === 0)) throw new Error('--only needs words: --only postgres')

/**
 * Where the results go (BENCH_RESULTS: another file, say for a smoke run that must not replace
 * them); a run of some variants only does not replace the full run's.
 */
const RESULTS_FILE = path.resolve(ROOT, process.env.BENCH_RESULTS ??
  (only === undefined ? 'benchmarks/results/latest.json' : costOnly ? 'benchmarks/results/cost.json' : `benchmarks/results/only-${only.join('-').replace(/[^a-z0-9-]/gi, '_')}.json`))
if (argv.has('--memory')) {
  // Only the MemoryStore heap breakdown (benchmarks/memory.ts), then exit.
  const text = await runChild<string>('memory.ts', {}, ['--expose-gc', '--max-old-space-size=4096'])
  console.log(text)
  process.exit(0)
}

function num (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw.replace(/_/g, '').replace(/k$/i, '000').replace(/m$/i, '000000'))
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number, not ${raw}`)
  return value
}

const config = {
  duration: num('BENCH_DURATION', quick ? 2 : 5),
  warmup: num('BENCH_WARMUP', 1),
  /** Seconds of load on every server, one after the other, before the first round (not measured). */
  warmupPass: num('BENCH_WARMUP_PASS', quick ? 0 : 3),
  rounds: Math.max(1, Math.round(num('BENCH_ROUNDS', quick || costOnly ? 1 : 5))),
  /** The cost stage: pairs of servers in alternating slices of BENCH_SLICE_SECONDS each (see slices.ts). */
  slices: Math.round(num('BENCH_SLICES', quick ? 4 : 24)),
  sliceSeconds: num('BENCH_SLICE_SECONDS', 1),
  /**
   * The cost stage runs on this many starts of each server (the slices shared among them): one
   * start is one sample of V8's state, and the medians of single starts of the same code spread
   * from 0.73 to 1.28 (benchmarks/README.md), so six.
   */
  starts: Math.max(1, Math.round(num('BENCH_STARTS', quick ? 2 : 6))),
  connections: num('BENCH_CONNECTIONS', 50),
  only,
  growth: !argv.has('--no-growth') && (process.env.BENCH_GROWTH ?? (only === undefined ? '1' : '0')) !== '0',
  growthSmall: num('BENCH_GROWTH_SMALL', 1000),
  growthLarge: num('BENCH_GROWTH_LARGE', quick ? 100_000 : 1_000_000),
  ops: !argv.has('--no-ops') && (process.env.BENCH_OPS ?? (only === undefined ? '1' : '0')) !== '0',
  postgres: !costOnly && !argv.has('--no-postgres') && process.env.BENCH_POSTGRES !== '0',
  profile: argv.has('--profile') ? 'always' : argv.has('--no-profile') || process.env.BENCH_PROFILE === '0' ? 'never' : process.env.BENCH_PROFILE === '1' ? 'always' : 'when a target is missed'
}

/** MiB of semi-space for the reference row of the large MemoryStore (V8's default is 16 on 64-bit). */
const SEMI_SPACE_MB = 64

/**
 * Measured together: the servers a target compares are in one group, measured one right after
 * the other, so that what the machine does over time (it swings by more than the targets'
 * margins) weighs on both alike. The groups rotate from round to round, and within a group the
 * order is reversed every other round.
 */
const MEASURE_GROUPS = [
  ['bare', 'cookie', 'pow-memory'],
  ['pow-memory-small', 'pow-memory-large', 'pow-memory-large-semi'],
  ['raw-redis', 'pow-redis', 'fastify-session', 'fastify-session-fixed'],
  ['secure-session'],
  ['pow-redis-small', 'pow-redis-large'],
  ['raw-postgres', 'pow-postgres', 'fastify-session-postgres']
]

const count = (n: number): string => n >= 1e6 && n % 1e6 === 0 ? `${n / 1e6}M` : n >= 1e3 && n % 1e3 === 0 ? `${n / 1e3}k` : String(n)
const int = (n: number): string => Math.round(n).toLocaleString('en-US')
const fixed = (n: number, d = 2): string => Number.isFinite(n) ? n.toFixed(d) : '-'
const pad = (s: string, n: number): string => s.length >= n ? s : s + ' '.repeat(n - s.length)
const lpad = (s: string, n: number): string => s.length >= n ? s : ' '.repeat(n - s.length) + s
function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}
function log (line: string): void { process.stderr.write(line + '\n') }

// ------------------------------------------------------------------------------------------
// Build dist/ when it is missing or older than lib/: the servers import the build.

function newest (dir: string, ext: string, pick: (a: number, b: number) => number, start: number): number {
  let result = start
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) result = newest(full, ext, pick, result)
    else if (entry.name.endsWith(ext) && !entry.name.endsWith('.d.ts')) result = pick(result, statSync(full).mtimeMs)
  }
  return result
}

function ensureBuild (): string {
  const distIndex = path.join(ROOT, 'dist', 'lib', 'index.js')
  const libNewest = newest(path.join(ROOT, 'lib'), '.ts', Math.max, 0)
  const distOldest = existsSync(distIndex) ? newest(path.join(ROOT, 'dist', 'lib'), '.js', Math.min, Infinity) : 0
  if (process.env.BENCH_BUILD !== 'always' && distOldest >= libNewest) return 'dist/ up to date'
  log('building dist/ (tsc -p tsconfig.build.json) ...')
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  const out = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' })
  if (out.status !== 0) throw new Error('npm run build failed: the benchmark needs dist/lib from the current lib/')
  return 'dist/ rebuilt from lib/'
}

// ------------------------------------------------------------------------------------------
// Variants

interface Variant {
  id: string
  label: string
  file: string
  env: Record<string, string>
  nodeArgs?: string[]
  startTimeoutMs?: number
  /** The Redis this variant talks to, whose CPU time per request is measured too. */
  redis?: RedisServer
  /** The database this variant's pool connects to (application_name: the variant's id), whose backends' CPU time is measured too. */
  postgres?: BenchDatabase
  /** Sessions to write into this Redis (namespace 'growth') before the server starts. */
  redisFill?: { port: number, sessions: number }
}

function variants (redisMain: RedisServer, redisLarge: RedisServer | undefined): { main: Variant[], growth: Variant[] } {
  const redisEnv = { BENCH_REDIS_PORT: String(redisMain.port) }
  const main: Variant[] = [
    { id: 'bare', label: 'bare Fastify (no session)', file: 'bare.ts', env: {} },
    { id: 'cookie', label: 'Fastify + @fastify/cookie (id compared)', file: 'cookie.ts', env: {} },
    { id: 'raw-redis', label: 'Fastify + one ioredis GET', file: 'raw-redis.ts', env: redisEnv, redis: redisMain },
    { id: 'fastify-session', label: '@fastify/session + connect-redis', file: 'fastify-session.ts', env: redisEnv, redis: redisMain },
    { id: 'fastify-session-fixed', label: '  the same with rolling: false', file: 'fastify-session.ts', env: { ...redisEnv, BENCH_ROLLING: '0' }, redis: redisMain },
    { id: 'secure-session', label: '@fastify/secure-session (cookie)', file: 'secure-session.ts', env: {} },
    { id: 'pow-memory', label: 'fastify-pow, MemoryStore', file: 'pow.ts', env: { BENCH_STORE: 'memory' } },
    { id: 'pow-redis', label: 'fastify-pow, RedisStore (ioredis)', file: 'pow.ts', env: { BENCH_STORE: 'redis', ...redisEnv }, redis: redisMain }
  ]
  const growth: Variant[] = []
  if (redisLarge !== undefined) {
    const small = config.growthSmall
    const large = config.growthLarge
    // A generous heap for the large MemoryStore, so that the GC does not work at the limit.
    const heapMb = Math.max(4096, Math.ceil(large * 4000 / 1e6))
    const fillTimeout = 120_000 + large * 0.3
    growth.push(
      { id: 'pow-memory-small', label: `fastify-pow, MemoryStore, ${count(small)} stored`, file: 'pow.ts', env: { BENCH_STORE: 'memory', BENCH_PREFILL: String(small) } },
      {
        id: 'pow-memory-large',
        label: `fastify-pow, MemoryStore, ${count(large)} stored`,
        file: 'pow.ts',
        env: { BENCH_STORE: 'memory', BENCH_PREFILL: String(large), BENCH_HEAP: '1' },
        nodeArgs: ['--expose-gc', `--max-old-space-size=${heapMb}`],
        startTimeoutMs: fillTimeout
      },
      // For reference, not a target: the same with a larger young generation. With many sessions
      // in MemoryStore every scavenge costs more (see benchmarks/README.md); fewer scavenges help.
      {
        id: 'pow-memory-large-semi',
        label: `  the same with --max-semi-space-size=${SEMI_SPACE_MB}`,
        file: 'pow.ts',
        env: { BENCH_STORE: 'memory', BENCH_PREFILL: String(large) },
        nodeArgs: [`--max-old-space-size=${heapMb}`, `--max-semi-space-size=${SEMI_SPACE_MB}`],
        startTimeoutMs: fillTimeout
      },
      // The Redis ones are filled by fill-redis.ts before they start (redisFill).
      {
        id: 'pow-redis-small',
        label: `fastify-pow, RedisStore, ${count(small)} stored`,
        file: 'pow.ts',
        env: { BENCH_STORE: 'redis', BENCH_NAMESPACE: 'growth', ...redisEnv },
        redis: redisMain,
        redisFill: { port: redisMain.port, sessions: small }
      },
      {
        id: 'pow-redis-large',
        label: `fastify-pow, RedisStore, ${count(large)} stored`,
        file: 'pow.ts',
        env: { BENCH_STORE: 'redis', BENCH_NAMESPACE: 'growth', BENCH_REDIS_PORT: String(redisLarge.port) },
        redis: redisLarge,
        redisFill: { port: redisLarge.port, sessions: large }
      }
    )
  }
  return { main, growth }
}

/** The PostgreSQL variants, each on a pool of POOL_SIZE connections to `db`. */
function postgresVariants (db: BenchDatabase): Variant[] {
  const variant = (id: string, label: string, file: string, env: Record<string, string> = {}): Variant =>
    ({ id, label, file, env: { ...env, BENCH_POSTGRES_DB_URL: db.url, BENCH_POSTGRES_APP: id }, postgres: db })
  return [
    variant('raw-postgres', 'Fastify + one pg SELECT by primary key', 'raw-postgres.ts'),
    variant('fastify-session-postgres', '@fastify/session + connect-pg-simple', 'fastify-session.ts', { BENCH_STORE: 'postgres' }),
    variant('pow-postgres', 'fastify-pow, PostgresStore (pg)', 'pow.ts', { BENCH_STORE: 'postgres' })
  ]
}

// ------------------------------------------------------------------------------------------
// Checking and loading

function expect (condition: boolean, message: string): void {
  if (!condition) throw new Error(message)
}

/** Logs in, and checks that the cookie authenticates and that no cookie or a forged one does not. */
async function verify (variant: Variant, server: ServerProcess): Promise<string> {
  const login = await request(server.port, 'POST', '/login')
  expect(login.status === 200, `${variant.id}: POST /login answered ${login.status}`)
  const cookie = cookieHeader(login)
  expect(cookie !== '', `${variant.id}: POST /login set no cookie`)
  const me = await request(server.port, 'GET', '/me', { cookie })
  expect(me.status === 200 && isDeepStrictEqual(JSON.parse(me.body), USER),
    `${variant.id}: GET /me with the login cookie answered ${me.status} ${me.body}`)
  const anonymous = await request(server.port, 'GET', '/me')
  expect(anonymous.status === 401, `${variant.id}: GET /me without a cookie answered ${anonymous.status}, not 401`)
  // The first cookie's value with its last character changed.
  const first = cookie.split('; ')[0]
  const forged = first.slice(0, -1) + (first.endsWith('A') ? 'B' : 'A')
  const bad = await request(server.port, 'GET', '/me', { cookie: forged })
  expect(bad.status === 401, `${variant.id}: GET /me with a forged cookie answered ${bad.status}, not 401`)
  return cookie
}

interface Run {
  round: number
  reqPerSec: number
  latencyP50: number
  latencyP99: number
  latencyAvg: number
  requests: number
  /** CPU µs the server process (all its threads) used per answered request. */
  serverCpuUs?: number
  /** CPU µs redis-server used per answered request. */
  redisCpuUs?: number
  /** CPU µs the PostgreSQL backends serving the server's pool used per answered request. */
  postgresCpuUs?: number
  /** How many backends that was. */
  postgresBackends?: number
}

async function load (port: number, cookie: string, duration: number): Promise<AutocannonResult> {
  return await autocannon({
    url: `http://127.0.0.1:${port}/me`,
    connections: config.connections,
    duration,
    headers: { cookie }
  })
}

/**
 * CPU seconds so far of the processes serving the variant's store, by pid: its redis-server, or
 * the PostgreSQL backends of its pool's connections.
 */
async function storeCpu (variant: Variant): Promise<Map<number, number> | undefined> {
  if (variant.postgres !== undefined) return await variant.postgres.backendCpu(variant.id)
  const seconds = variant.redis === undefined ? undefined : cpuSeconds(variant.redis.pid)
  return seconds === undefined ? undefined : new Map([[variant.redis?.pid as number, seconds]])
}

/** CPU seconds used between two readings of {@link storeCpu} (a process started in between counts from 0). */
function cpuUsed (before: Map<number, number> | undefined, after: Map<number, number> | undefined): number | undefined {
  if (before === undefined || after === undefined) return undefined
  let used = 0
  for (const [pid, seconds] of after) used += seconds - (before.get(pid) ?? 0)
  return used
}

async function measure (variant: Variant, server: ServerProcess, cookie: string, round: number): Promise<Run> {
  if (config.warmup > 0) await load(server.port, cookie, config.warmup)
  const serverCpu = cpuSeconds(server.pid)
  const storeBefore = await storeCpu(variant)
  const result = await load(server.port, cookie, config.duration)
  const serverCpuAfter = cpuSeconds(server.pid)
  const storeAfter = await storeCpu(variant)
  const perRequest = (seconds?: number): number | undefined => seconds === undefined ? undefined : seconds * 1e6 / result['2xx']
  const storeUs = perRequest(cpuUsed(storeBefore, storeAfter))
  expect(result.errors === 0 && result.timeouts === 0 && result.non2xx === 0 && result['2xx'] > 0,
    `${variant.id}: ${result.non2xx} non-2xx answers, ${result.errors} errors, ${result.timeouts} timeouts under load`)
  // Still signed in after the load (no renewal or expiry changed what the cookie means).
  const me = await request(server.port, 'GET', '/me', { cookie })
  expect(me.status === 200, `${variant.id}: GET /me answered ${me.status} after the load`)
  return {
    round,
    reqPerSec: result.requests.average,
    latencyP50: result.latency.p50,
    latencyP99: result.latency.p99,
    latencyAvg: result.latency.average,
    requests: result.requests.total,
    serverCpuUs: perRequest(serverCpu === undefined || serverCpuAfter === undefined ? undefined : serverCpuAfter - serverCpu),
    ...(variant.postgres === undefined ? { redisCpuUs: storeUs } : { postgresCpuUs: storeUs, postgresBackends: storeAfter?.size })
  }
}

interface Summary {
  id: string
  label: string
  reqPerSec: number
  latencyP50: number
  latencyP99: number
  latencyAvg: number
  serverCpuUs?: number
  redisCpuUs?: number
  postgresCpuUs?: number
  vsBare?: number
  vsRawRedis?: number
  /** For the PostgreSQL variants: req/s over the raw SELECT's. */
  vsRawSelect?: number
  runs: Run[]
}

function summarize (variant: Variant, runs: Run[]): Summary {
  const cpuMedian = (key: 'serverCpuUs' | 'redisCpuUs' | 'postgresCpuUs'): number | undefined =>
    runs.every((r) => r[key] !== undefined) ? median(runs.map((r) => r[key] as number)) : undefined
  return {
    id: variant.id,
    label: variant.label,
    reqPerSec: median(runs.map((r) => r.reqPerSec)),
    latencyP50: median(runs.map((r) => r.latencyP50)),
    latencyP99: median(runs.map((r) => r.latencyP99)),
    latencyAvg: median(runs.map((r) => r.latencyAvg)),
    serverCpuUs: cpuMedian('serverCpuUs'),
    redisCpuUs: cpuMedian('redisCpuUs'),
    postgresCpuUs: cpuMedian('postgresCpuUs'),
    runs
  }
}

// ------------------------------------------------------------------------------------------
// Profile

/** CPU-profiles a running server (V8's sampling profiler, 1 ms, as node --cpu-prof) under one measured load. */
async function profileVariant (variant: Variant, server: ServerProcess, cookie: string, dir: string): Promise<ProfileSummary & { cpuUsPerRequest?: number, reqPerSec: number }> {
  const file = path.join(dir, `${variant.id}.cpuprofile`)
  await load(server.port, cookie, Math.max(1, config.warmup))
  await server.ask({ type: 'profile-start' }, 'profile-started')
  const before = cpuSeconds(server.pid)
  const result = await load(server.port, cookie, config.duration)
  const after = cpuSeconds(server.pid)
  await server.ask({ type: 'profile-stop', file }, 'profile-written')
  return {
    ...analyzeProfile(file),
    reqPerSec: result.requests.average,
    cpuUsPerRequest: before === undefined || after === undefined ? undefined : (after - before) * 1e6 / result['2xx']
  }
}

// ------------------------------------------------------------------------------------------

function packageVersion (name: string): string {
  try {
    return JSON.parse(readFileSync(path.join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version
  } catch {
    return 'unknown'
  }
}

function gitState (): { commit: string, libChanged: boolean } {
  const head = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' })
  const status = spawnSync('git', ['status', '--porcelain', '--', 'lib'], { cwd: ROOT, encoding: 'utf8' })
  return { commit: head.stdout?.trim() ?? 'unknown', libChanged: (status.stdout ?? '').trim() !== '' }
}

interface Target {
  name: string
  met: boolean
  value: string
  detail: string
}

/** A ratio reported without a target (the PostgreSQL ones): both measures, medians of the rounds' ratios. */
interface Ratio {
  name: string
  /** `perCpuSecond`, as printed. */
  value: string
  detail: string
  /** Requests per CPU-second (the server's and its store's CPU time), the first's over the second's. */
  perCpuSecond: number
  /** req/s, the first's over the second's. */
  reqPerSec: number
}

/** The maintenance URL without a password, for messages. */
function postgresWhere (): string {
  const url = new URL(POSTGRES_URL)
  url.password = ''
  return url.href
}

/** A database of the run's own, or why there is none (the PostgreSQL rows are skipped, loudly). */
async function postgresDatabase (): Promise<{ db?: BenchDatabase, skipped?: string }> {
  if (!config.postgres) return { skipped: 'turned off (BENCH_POSTGRES=0 or --no-postgres)' }
  try {
    return { db: await createDatabase() }
  } catch (err) {
    const skipped = `PostgreSQL is not reachable at ${postgresWhere()} (${(err as Error).message})`
    log(`\n!!! ${skipped}: THE POSTGRESQL ROWS ARE SKIPPED (the rest runs) !!!\n`)
    return { skipped }
  }
}

/**
 * The cost stage: pairs of servers compared in alternating slices (slices.ts), CPU time per
 * request of the server and its redis-server. `ratio`: b's CPU µs per request over a's, so above
 * 1 a costs less; a pair with `min` is a target.
 */
interface CostPair {
  name: string
  a: string
  b: string
  /** Requests without a cookie (answered 401) instead of signed-in ones. */
  anonymous?: boolean
  min?: number
}

const COST_PAIRS: CostPair[] = [
  { name: 'Fastify + @fastify/cookie / bare Fastify', a: 'cookie', b: 'bare' },
  { name: 'MemoryStore / Fastify + @fastify/cookie', a: 'pow-memory', b: 'cookie', min: 0.92 },
  { name: 'RedisStore / Fastify + one ioredis GET', a: 'pow-redis', b: 'raw-redis', min: 0.92 },
  { name: 'RedisStore / @fastify/session + connect-redis', a: 'pow-redis', b: 'fastify-session', min: 2.5 },
  // The ceiling of the pair above: a server that reads Redis once per request and does nothing else.
  { name: 'one ioredis GET / @fastify/session + connect-redis', a: 'raw-redis', b: 'fastify-session' },
  { name: 'no cookie: MemoryStore / bare Fastify', a: 'pow-memory', b: 'bare', anonymous: true, min: 0.98 },
  { name: '@fastify/secure-session / bare Fastify', a: 'secure-session', b: 'bare' }
]

async function main (): Promise<void> {
  const build = ensureBuild()
  const cpus = os.cpus()
  const redisMain = await startRedis()
  const redisLarge = config.growth ? await startRedis() : undefined
  const { db, skipped: postgresSkipped } = await postgresDatabase()
  const machine = {
    cpu: cpus[0]?.model ?? 'unknown',
    cpus: cpus.length,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    memoryGb: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    redis: redisMain.version,
    autocannon: packageVersion('autocannon'),
    fastify: packageVersion('fastify'),
    '@fastify/session': packageVersion('@fastify/session'),
    'connect-redis': packageVersion('connect-redis'),
    redisClient: packageVersion('redis'),
    '@fastify/secure-session': packageVersion('@fastify/secure-session'),
    ioredis: packageVersion('ioredis'),
    postgres: db?.version,
    pg: packageVersion('pg'),
    'connect-pg-simple': packageVersion('connect-pg-simple'),
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100)
  }
  log(`fastify-pow benchmark: ${machine.cpus} × ${machine.cpu}, ${machine.os}, Node ${machine.node}, Redis ${machine.redis}, PostgreSQL ${machine.postgres ?? 'skipped'}`)
  log(`${build}; redis-server on 127.0.0.1:${redisMain.port}${redisLarge === undefined ? '' : ` and :${redisLarge.port} (large growth case)`}` +
    `${db === undefined ? '' : `; database ${db.name} on ${postgresWhere()} (dropped at the end)`}`)
  log(`config: ${JSON.stringify(config)}`)
  if (os.loadavg()[0] > cpus.length * 0.25) {
    log(`warning: load average ${os.loadavg()[0].toFixed(2)} on ${cpus.length} CPUs: something else is running, the figures will be noisy`)
  }

  const selected = (variant: Variant): boolean => only === undefined || only.some((word) => costOnly ? variant.id === word : variant.id.includes(word))
  const { main: mainVariants, growth: growthVariants } = variants(redisMain, redisLarge)
  const pgVariants = db === undefined ? [] : postgresVariants(db)
  const all = [...mainVariants, ...growthVariants, ...pgVariants].filter(selected)
  if (all.length === 0) throw new Error(`no variant to run${only === undefined ? '' : ` (--only ${only.join(',')})`}${postgresSkipped === undefined ? '' : `; PostgreSQL: ${postgresSkipped}`}`)
  const servers = new Map<string, ServerProcess>()
  const cookies = new Map<string, string>()
  const startInfo: Record<string, Record<string, unknown>> = {}
  try {
    log(`starting ${all.length} servers${redisLarge === undefined ? '' : ` (filling ${count(config.growthLarge)} sessions takes a while)`} ...`)
    const startedAt = performance.now()
    await Promise.all(all.map(async (variant) => {
      let filled: RedisFill | undefined
      if (variant.redisFill !== undefined) {
        const { port, sessions } = variant.redisFill
        const timeoutMs = 120_000 + sessions * 0.5
        filled = await runChild<RedisFill>('fill-redis.ts', { BENCH_REDIS_PORT: String(port), BENCH_PREFILL: String(sessions), BENCH_NAMESPACE: 'growth' }, [], timeoutMs)
      }
      const server = await startServer(variant.file, variant.env, { nodeArgs: variant.nodeArgs, timeoutMs: variant.startTimeoutMs })
      if (filled !== undefined) {
        server.info.fillMs = filled.fillMs
        server.info.redisMemory = filled
      }
      servers.set(variant.id, server)
      startInfo[variant.id] = server.info
    }))
    log(`servers ready in ${fixed((performance.now() - startedAt) / 1000, 1)} s`)
    for (const variant of all) {
      cookies.set(variant.id, await verify(variant, servers.get(variant.id) as ServerProcess))
    }
    log('every variant answers 200 with the user to its login cookie, 401 without a cookie and 401 to a forged one')

    // A pass of load on every server first, so that no round measures a server whose code the JIT
    // has not optimized yet (the first round used to, for whichever servers came first).
    if (config.warmupPass > 0) {
      log(`warm-up pass: ${config.warmupPass} s of load on each server, not measured ...`)
      for (const variant of all) await load((servers.get(variant.id) as ServerProcess).port, cookies.get(variant.id) as string, config.warmupPass)
    }

    // Interleaved rounds: every server once per round, in groups (MEASURE_GROUPS) whose order
    // rotates from round to round.
    const runs = new Map<string, Run[]>(all.map((v) => [v.id, []]))
    const groups = MEASURE_GROUPS
      .map((ids) => ids.flatMap((id) => all.filter((v) => v.id === id)))
      .filter((group) => group.length > 0)
    for (const variant of all) if (!MEASURE_GROUPS.some((ids) => ids.includes(variant.id))) groups.push([variant])
    for (let round = 0; round < config.rounds; round++) {
      const offset = round % groups.length
      const order = [...groups.slice(offset), ...groups.slice(0, offset)]
        .flatMap((group) => round % 2 === 0 ? group : [...group].reverse())
      for (const variant of order) {
        const run = await measure(variant, servers.get(variant.id) as ServerProcess, cookies.get(variant.id) as string, round + 1)
        ;(runs.get(variant.id) as Run[]).push(run)
        log(`round ${round + 1}/${config.rounds}  ${pad(variant.label, 44)} ${lpad(int(run.reqPerSec), 8)} req/s  p50 ${run.latencyP50} ms  p99 ${run.latencyP99} ms`)
      }
    }
    const summaries = new Map<string, Summary>(all.map((v) => [v.id, summarize(v, runs.get(v.id) as Run[])]))
    const versus = (x: Summary, id: string): number | undefined => {
      const base = summaries.get(id)
      return base === undefined ? undefined : x.reqPerSec / base.reqPerSec
    }
    for (const x of summaries.values()) {
      x.vsBare = versus(x, 'bare')
      x.vsRawRedis = versus(x, 'raw-redis')
      if (x.id.endsWith('postgres')) x.vsRawSelect = versus(x, 'raw-postgres')
    }

    let ops: OpsResult | undefined
    if (config.ops) {
      log('timing login, renewal, sessions() and deleteOtherSessions() in-process ...')
      const opsStarted = performance.now()
      ops = await runChild<OpsResult>('ops.ts', { BENCH_REDIS_PORT: String(redisMain.port) })
      log(`operation timings done in ${fixed((performance.now() - opsStarted) / 1000, 1)} s`)
    }

    // ---- cost per request, pairs in alternating slices, on several starts of each server
    const costs: Array<Comparison & { pair: CostPair, starts: number[] }> = []
    if (config.slices > 0) {
      const ids = [...new Set(COST_PAIRS.flatMap((pair) => [pair.a, pair.b]))].filter((id) => servers.has(id))
      const perStart = Math.max(1, Math.ceil(config.slices / config.starts))
      log(`cost per request: ${COST_PAIRS.length} pairs on ${config.starts} start${config.starts === 1 ? '' : 's'} of each server, ${perStart} alternating slices of ${config.sliceSeconds} s each per start ...`)
      const parts = new Map<CostPair, Comparison[]>(COST_PAIRS.map((pair) => [pair, []]))
      for (let start = 0; start < config.starts; start++) {
        // The first start is the servers the rounds measured, started together; each later one a
        // fresh process of each, started alone (logged in and warmed up before the next starts):
        // how the processes start weighs on what they cost (benchmarks/README.md).
        const here = new Map<string, { server: ServerProcess, cookie: string }>()
        for (const id of ids) {
          if (start === 0) {
            here.set(id, { server: servers.get(id) as ServerProcess, cookie: cookies.get(id) as string })
            continue
          }
          const variant = all.find((v) => v.id === id) as Variant
          const server = await startServer(variant.file, variant.env, { nodeArgs: variant.nodeArgs, timeoutMs: variant.startTimeoutMs })
          const cookie = await verify(variant, server)
          if (config.warmupPass > 0) await load(server.port, cookie, config.warmupPass)
          here.set(id, { server, cookie })
        }
        const side = (id: string, anonymous: boolean): Side | undefined => {
          const one = here.get(id)
          const variant = all.find((v) => v.id === id)
          if (one === undefined || variant === undefined) return undefined
          return {
            id,
            label: variant.label,
            port: one.server.port,
            pids: variant.redis === undefined ? [one.server.pid] : [one.server.pid, variant.redis.pid],
            cookie: anonymous ? undefined : one.cookie,
            status: anonymous ? 401 : 200
          }
        }
        for (const pair of COST_PAIRS) {
          const a = side(pair.a, pair.anonymous === true)
          const b = side(pair.b, pair.anonymous === true)
          if (a === undefined || b === undefined) continue
          const part = await compare(pair.name, a, b, { slices: perStart, seconds: config.sliceSeconds, connections: config.connections })
          ;(parts.get(pair) as Comparison[]).push(part)
          log(`  start ${start + 1}: ${pad(pair.name, 54)} ${fixed(part.median)} (${fixed(part.min)}-${fixed(part.max)})  ${fixed(part.aUs, 1)} vs ${fixed(part.bUs, 1)} CPU µs/req`)
        }
        if (start > 0) await Promise.all([...here.values()].map(async ({ server }) => { await server.stop() }))
      }
      for (const pair of COST_PAIRS) {
        const measured = parts.get(pair) as Comparison[]
        if (measured.length === 0) continue
        const result = pool(measured)
        costs.push({ ...result, pair })
        log(`  ${pad(pair.name, 54)} ${fixed(result.median)} (${fixed(result.min)}-${fixed(result.max)})  ${fixed(result.aUs, 1)} vs ${fixed(result.bUs, 1)} CPU µs/req  starts: ${result.starts.map((m) => fixed(m)).join(' ')}`)
      }
    }

    // ---- targets
    const s = (id: string): Summary | undefined => summaries.get(id)
    // The CPU µs of the store's processes (redis-server, or the PostgreSQL backends), where measured.
    const storeUs = (x: Run | Summary): [string, number] | undefined =>
      x.postgresCpuUs !== undefined ? ['pg', x.postgresCpuUs] : x.redisCpuUs !== undefined ? ['redis', x.redisCpuUs] : undefined
    const cpu = (x: Summary): string => {
      if (x.serverCpuUs === undefined) return '-'
      const store = storeUs(x)
      return store === undefined ? fixed(x.serverCpuUs, 1) : `${fixed(x.serverCpuUs + store[1], 1)} (${fixed(x.serverCpuUs, 1)} + ${store[0]} ${fixed(store[1], 1)})`
    }
    // Requests per CPU-second of the server and its store's processes.
    const perCpuSecond = (x: Run): number => 1e6 / ((x.serverCpuUs ?? NaN) + (storeUs(x)?.[1] ?? 0))
    const perSecond = (x: Run): number => x.reqPerSec
    // A target's ratio is the median of its rounds' ratios: the two servers of a ratio are measured
    // back to back in every round (MEASURE_GROUPS), so each round's ratio is taken under one state
    // of the machine. The ratio of the two medians, which can mix rounds, is printed beside it.
    const byRound = (a: Summary, b: Summary, measure = perSecond): number[] => {
      const other = new Map(b.runs.map((x) => [x.round, measure(x)]))
      return a.runs.map((x) => measure(x) / (other.get(x.round) as number))
    }
    const paired = (a: Summary, b: Summary, measure = perSecond): number => median(byRound(a, b, measure))
    const rounds = (a: Summary, b: Summary, measure = perSecond): string =>
      `rounds ${byRound(a, b, measure).map((r) => fixed(r)).join('/')}; ratio of medians ${fixed(median(a.runs.map(measure)) / median(b.runs.map(measure)))}`
    const targets: Target[] = []
    // The per-request targets: CPU time per request in alternating slices (the cost stage).
    for (const c of costs) {
      if (c.pair.min === undefined) continue
      targets.push({
        name: `${c.pair.name} >= ${c.pair.min} (CPU per request)`,
        met: c.median >= c.pair.min,
        value: fixed(c.median),
        detail: `range ${fixed(c.min)}-${fixed(c.max)} over ${c.slices.length} slices; CPU µs/req ${fixed(c.aUs, 1)} vs ${fixed(c.bUs, 1)}`
      })
    }
    // The PostgreSQL ratios have no target: what they are is reported, in both measures.
    const ratios: Ratio[] = []
    for (const [name, bId] of [['PostgresStore / raw SELECT', 'raw-postgres'], ['PostgresStore / @fastify/session + connect-pg-simple', 'fastify-session-postgres']]) {
      const a = s('pow-postgres')
      const b = s(bId)
      if (a === undefined || b === undefined) continue
      const cpuRatio = paired(a, b, perCpuSecond)
      ratios.push({
        name,
        value: fixed(cpuRatio),
        detail: `CPU µs/req ${cpu(a)} vs ${cpu(b)} (${rounds(a, b, perCpuSecond)}); req/s ${fixed(paired(a, b))}: ${int(a.reqPerSec)} vs ${int(b.reqPerSec)} (${rounds(a, b)})`,
        perCpuSecond: cpuRatio,
        reqPerSec: paired(a, b)
      })
    }
    const growthRows: Array<{ store: string, small: Summary, large: Summary, ratio: number, fillSeconds: number }> = []
    for (const store of ['memory', 'redis']) {
      const small = s(`pow-${store}-small`)
      const large = s(`pow-${store}-large`)
      if (small !== undefined && large !== undefined) {
        const ratio = paired(large, small)
        growthRows.push({ store, small, large, ratio, fillSeconds: Number(startInfo[`pow-${store}-large`].fillMs) / 1000 })
        targets.push({
          name: `${store === 'memory' ? 'MemoryStore' : 'RedisStore'} req/s within 10% from ${count(config.growthSmall)} to ${count(config.growthLarge)} sessions`,
          met: Math.abs(ratio - 1) <= 0.10,
          value: `${ratio >= 1 ? '+' : ''}${fixed((ratio - 1) * 100, 1)}%`,
          detail: `${int(large.reqPerSec)} vs ${int(small.reqPerSec)} req/s (${rounds(large, small)}); CPU µs/req ${cpu(large)} vs ${cpu(small)}`
        })
      }
    }
    const semi = s('pow-memory-large-semi')
    const semiSmall = s('pow-memory-small')
    if (semi !== undefined && semiSmall !== undefined) {
      growthRows.push({ store: 'memory-semi', small: semiSmall, large: semi, ratio: paired(semi, semiSmall), fillSeconds: Number(startInfo['pow-memory-large-semi'].fillMs) / 1000 })
    }
    const heap = startInfo['pow-memory-large']?.heap as
      { sessions: number, deltaBytes: number, bytesPerSession: number, userJsonBytes: number, bytesPerSessionBeyondUser: number } | undefined
    const redisMemory = startInfo['pow-redis-large']?.redisMemory as
      { sessions: number, usedMemoryDelta: number, bytesPerSession: number, keysAdded: number } | undefined
    if (heap !== undefined) {
      targets.push({
        name: `MemoryStore <= 512 bytes per session beyond the user object (at ${count(heap.sessions)})`,
        met: heap.bytesPerSessionBeyondUser <= 512,
        value: `${int(heap.bytesPerSessionBeyondUser)} B`,
        detail: `${int(heap.bytesPerSession)} B per session in all - ${int(heap.userJsonBytes)} B for the user's stored JSON`
      })
    }

    // ---- profile, on the servers that were just measured
    let profiles: Record<string, ProfileSummary & { cpuUsPerRequest?: number, reqPerSec: number }> | undefined
    const missed = (word: string): boolean => targets.some((t) => !t.met && t.name.includes(word))
    const always = config.profile === 'always'
    if (always || (config.profile !== 'never' && targets.some((t) => !t.met && !t.name.includes('bytes')))) {
      const dir = process.env.BENCH_PROFILE_DIR ?? mkdtempSync(path.join(os.tmpdir(), 'fastify-pow-bench-profiles-'))
      mkdirSync(dir, { recursive: true })
      // bare Fastify too: what is left once the session layer is gone.
      const ids = ['bare', 'pow-memory', 'raw-redis', 'pow-redis']
      if (always || missed('MemoryStore req/s within')) ids.push('pow-memory-large')
      if (always || missed('RedisStore req/s within')) ids.push('pow-redis-large')
      if (always) ids.push('raw-postgres', 'pow-postgres')
      log(`${always ? '--profile' : 'a throughput target is missed'}: CPU-profiling ${ids.join(', ')} under load into ${dir} ...`)
      profiles = {}
      for (const id of ids.filter((x) => servers.has(x))) {
        const variant = all.find((v) => v.id === id) as Variant
        profiles[id] = await profileVariant(variant, servers.get(id) as ServerProcess, cookies.get(id) as string, dir)
      }
    }
    await Promise.all([...servers.values()].map((srv) => srv.stop()))
    servers.clear()

    const wallSeconds = (performance.now() - wallStart) / 1000
    ;(machine as Record<string, unknown>).loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100)
    const postgres = { version: db?.version, database: db?.name, poolSize: POOL_SIZE, skipped: postgresSkipped }
    const report = print({
      machine,
      summaries: [...summaries.values()],
      mainIds: mainVariants.map((v) => v.id),
      postgresIds: pgVariants.map((v) => v.id),
      postgres,
      growthRows,
      heap,
      redisMemory,
      ops,
      costs,
      targets,
      ratios,
      profiles,
      wallSeconds
    })
    const git = gitState()
    mkdirSync(path.dirname(RESULTS_FILE), { recursive: true })
    writeFileSync(RESULTS_FILE, JSON.stringify({
      date: new Date().toISOString(),
      command: ['npm run bench', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
      git,
      machine,
      config,
      route: 'GET /me with the login cookie, answering the user {id, email, name} as JSON',
      variants: [...summaries.values()],
      growth: growthRows.map((g) => ({ store: g.store, small: config.growthSmall, large: config.growthLarge, smallReqPerSec: g.small.reqPerSec, largeReqPerSec: g.large.reqPerSec, ratio: g.ratio, fillSeconds: g.fillSeconds })),
      memoryStoreHeap: heap,
      redisMemory,
      operations: ops,
      cost: {
        method: `CPU time per answered request of the server and its redis-server (all threads, /proc/<pid>/task/*/schedstat); each pair loaded ${config.sliceSeconds} s each, ${config.slices} slices, order swapped every slice; ratio = b's CPU µs/req / a's, median and range of the per-slice ratios`,
        pairs: costs.map(({ pair, ...c }) => ({ ...c, anonymous: pair.anonymous === true, target: pair.min }))
      },
      targets,
      postgres,
      ratios,
      profiles,
      wallSeconds,
      printed: report
    }, null, 2) + '\n')
    log(`results written to ${path.relative(ROOT, RESULTS_FILE)}; wall time ${fixed(wallSeconds, 0)} s`)
  } finally {
    await Promise.all([...servers.values()].map((srv) => srv.stop()))
    await redisMain.stop()
    await redisLarge?.stop()
    await db?.drop()
  }
}

function print (r: {
  machine: Record<string, unknown>
  summaries: Summary[]
  mainIds: string[]
  postgresIds: string[]
  postgres: { version?: string, database?: string, poolSize: number, skipped?: string }
  growthRows: Array<{ store: string, small: Summary, large: Summary, ratio: number, fillSeconds: number }>
  heap?: { sessions: number, deltaBytes: number, bytesPerSession: number, userJsonBytes: number, bytesPerSessionBeyondUser: number }
  redisMemory?: { sessions: number, usedMemoryDelta: number, bytesPerSession: number, keysAdded: number }
  ops?: OpsResult
  costs: Array<Comparison & { pair: CostPair, starts: number[] }>
  targets: Target[]
  ratios: Ratio[]
  profiles?: Record<string, ProfileSummary & { cpuUsPerRequest?: number, reqPerSec: number }>
  wallSeconds: number
}): string {
  const out: string[] = []
  const m = r.machine
  out.push('')
  out.push(`fastify-pow benchmark (npm run bench): ${m.cpus} x ${m.cpu}, ${m.memoryGb} GB, ${m.os}, Node ${m.node}, Redis ${m.redis}` +
    `, PostgreSQL ${r.postgres.version ?? 'skipped'}${config.only === undefined ? '' : `; only ${config.only.join(',')}`}`)
  out.push(`load average at start ${(m.loadAverageAtStart as number[]).join(' ')}, at end ${(m.loadAverageAtEnd as number[] | undefined)?.join(' ') ?? '-'}`)
  out.push(`GET /me with a login cookie -> the user as JSON; autocannon ${m.autocannon}, ${config.connections} connections, ` +
    `${config.rounds} interleaved round${config.rounds === 1 ? '' : 's'} x ${config.duration} s (+${config.warmup} s warm-up; a ${config.warmupPass} s warm-up pass on each server first); median of rounds`)
  out.push('CPU µs/req: CPU time of the server process (all threads) per answered request, redis µs/req the same for redis-server,')
  out.push('pg µs/req for the PostgreSQL backend processes serving the server\'s pool; they move less than req/s when the machine is')
  out.push('shared (req/s also depends on the CPU left to autocannon, Redis and PostgreSQL)')
  out.push('')
  // The main and growth tables compare with the raw Redis GET and show redis-server's CPU; the
  // PostgreSQL one with the raw SELECT and the backends' CPU.
  const header = (vs: string, store: string): string => `${pad('variant', 40)}${lpad('req/s', 8)}${lpad('p50 ms', 7)}${lpad('p99 ms', 7)}${lpad('vs bare', 8)}` +
    `${lpad(vs, 13)}${lpad('CPU µs/req', 11)}${lpad(store, 13)}   req/s per round`
  const redisHeader = header('vs raw-redis', 'redis µs/req')
  const line = '-'.repeat(redisHeader.length + 14)
  const row = (s: Summary, vs = s.vsRawRedis, store = s.redisCpuUs): string => `${pad(s.label, 40)}${lpad(int(s.reqPerSec), 8)}${lpad(String(s.latencyP50), 7)}${lpad(String(s.latencyP99), 7)}` +
    `${lpad(fixed(s.vsBare ?? NaN), 8)}${lpad(fixed(vs ?? NaN), 13)}` +
    `${lpad(s.serverCpuUs === undefined ? '-' : fixed(s.serverCpuUs, 1), 11)}${lpad(store === undefined ? '-' : fixed(store, 1), 13)}` +
    `   ${s.runs.map((x) => int(x.reqPerSec)).join(' / ')}`
  const main = r.summaries.filter((x) => r.mainIds.includes(x.id))
  if (main.length > 0) out.push(redisHeader, line, ...main.map((s) => row(s)))
  if (r.growthRows.length > 0) {
    out.push('')
    out.push(`Growth: the same request with ${count(config.growthSmall)} and ${count(config.growthLarge)} sessions stored (distinct users, one session each), same rounds`)
    out.push(line)
    for (const s of r.summaries.filter((x) => !r.mainIds.includes(x.id) && !r.postgresIds.includes(x.id))) out.push(row(s))
    for (const g of r.growthRows) {
      const name = { memory: 'MemoryStore', 'memory-semi': `MemoryStore, ${count(config.growthLarge)} with --max-semi-space-size=${SEMI_SPACE_MB}`, redis: 'RedisStore ' }[g.store]
      out.push(`  ${name}: ${count(config.growthLarge)} / ${count(config.growthSmall)} = ${fixed(g.ratio, 3)} (median of the rounds' ratios)` +
        ` (filling ${count(config.growthLarge)} sessions took ${fixed(g.fillSeconds, 1)} s)`)
    }
  }
  const postgresRows = r.summaries.filter((x) => r.postgresIds.includes(x.id))
  if (out[out.length - 1] !== '') out.push('')
  if (r.postgres.skipped !== undefined) {
    out.push(`!!! PostgreSQL rows SKIPPED: ${r.postgres.skipped}`)
  } else if (postgresRows.length > 0) {
    out.push(`PostgreSQL ${r.postgres.version}: the same request with the session in a database of the run's own (${r.postgres.database}, dropped at the end),`)
    out.push(`each server on a node-postgres Pool of ${r.postgres.poolSize} connections; pg µs/req: CPU time of the backends serving that pool; same rounds`)
    out.push(header('vs SELECT', 'pg µs/req'))
    out.push(line)
    for (const s of postgresRows) out.push(row(s, s.vsRawSelect, s.postgresCpuUs))
    if (r.ratios.length > 0) {
      out.push('Ratios (no target set; median of the rounds\' ratios): requests per CPU-second of the server and its backends, then req/s')
      for (const x of r.ratios) out.push(`  ${pad(x.name, 54)} ${lpad(x.value, 5)}   ${x.detail}`)
    }
  }
  if (r.heap !== undefined || r.redisMemory !== undefined) {
    out.push('')
    out.push('Memory per stored session')
    if (r.heap !== undefined) {
      const h = r.heap
      out.push(`  MemoryStore, ${count(h.sessions)} sessions: heap and buffers +${fixed(h.deltaBytes / 2 ** 20, 0)} MiB = ${int(h.bytesPerSession)} B per session` +
        ` (after global.gc()); the user's stored JSON is ${int(h.userJsonBytes)} B, so ${int(h.bytesPerSessionBeyondUser)} B beyond the user`)
    }
    if (r.redisMemory !== undefined) {
      const x = r.redisMemory
      out.push(`  Redis, ${count(x.sessions)} sessions: used_memory +${fixed(x.usedMemoryDelta / 2 ** 20, 0)} MiB = ${int(x.bytesPerSession)} B per session` +
        ` (${fixed(x.keysAdded / x.sessions, 1)} keys per session, user JSON included)`)
    }
  }
  if (r.ops !== undefined) {
    const counts = Object.keys(r.ops.memory)
    const stores = Object.entries(r.ops).filter(([, v]) => Object.keys(v).length > 0)
    out.push('')
    out.push('Operations for one user with N sessions, in-process: median µs per operation (and 1e6 / median ops/s); mean and p99 in the JSON')
    let h = pad('operation', 34)
    for (const [store] of stores) for (const c of counts) h += lpad(`${store === 'memory' ? 'memory' : 'redis'} N=${c}`, 19)
    out.push(h)
    out.push('-'.repeat(h.length))
    const names: Array<[string, string]> = [
      ['authenticate', 'authenticated request (hooks)'], ['login', 'login: create()'], ['renewal', 'renewal (hooks, id due)'],
      ['sessions', 'sessions()'], ['deleteOtherSessions', 'deleteOtherSessions()']
    ]
    for (const [key, label] of names) {
      let line = pad(label, 34)
      for (const [, byCount] of stores) {
        for (const c of counts) {
          const t = byCount[c]?.[key] as OpTiming | undefined
          line += lpad(t === undefined ? '-' : `${fixed(t.medianUs, 1)} (${int(1e6 / t.medianUs)}/s)`, 19)
        }
      }
      out.push(line)
    }
  }
  if (r.costs.length > 0) {
    out.push('')
    out.push(`Cost per request: CPU time of the server and its redis-server (all threads) per answered request, two servers loaded ${config.sliceSeconds} s each`)
    out.push(`in turn, the order swapped every slice, ${config.slices} slices over ${config.starts} starts of each server; ratio = b's CPU µs/req over a's (above 1: a costs less),`)
    out.push('median and range of all the slices, and the median of each start\'s slices')
    out.push(`  ${pad('a / b', 54)} ${lpad('ratio', 6)}  ${pad('range', 11)} ${lpad('a µs/req', 9)} ${lpad('b µs/req', 9)}  by start`)
    for (const c of r.costs) {
      out.push(`  ${pad(c.pair.name, 54)} ${lpad(fixed(c.median), 6)}  ${pad(`${fixed(c.min)}-${fixed(c.max)}`, 11)} ${lpad(fixed(c.aUs, 1), 9)} ${lpad(fixed(c.bUs, 1), 9)}  ${c.starts.map((m) => fixed(m)).join(' ')}`)
    }
  }
  if (r.targets.length > 0) out.push('', 'Targets')
  for (const t of r.targets) out.push(`  ${t.met ? 'MET   ' : 'MISSED'}  ${pad(t.name, 66)} ${lpad(t.value, 7)}   ${t.detail}`)
  if (r.profiles !== undefined) {
    out.push('')
    out.push('CPU profiles under load (V8 sampling profiler as node --cpu-prof, on the running servers; % of the main thread\'s busy samples,')
    out.push('µs/req = that share of the CPU µs per request measured during the profiled load, all threads: an approximation)')
    for (const [id, p] of Object.entries(r.profiles)) {
      const us = (percent: number): string => p.cpuUsPerRequest === undefined ? '' : `${lpad(fixed(percent * p.cpuUsPerRequest / 100, 2), 6)} µs/req`
      out.push('')
      out.push(`${id}: ${int(p.reqPerSec)} req/s while profiled, ${p.cpuUsPerRequest === undefined ? '-' : fixed(p.cpuUsPerRequest, 1)} CPU µs/req, ` +
        `${p.samples} samples, main thread ${p.busyPercent}% busy; ${p.file}`)
      out.push(`  by area: ${p.byArea.slice(0, 8).map((a) => `${a.area} ${a.percent}%`).join(', ')}`)
      out.push('  top self time:')
      for (const f of p.topSelf.slice(0, 10)) out.push(`    ${lpad(fixed(f.percent, 1), 5)}% ${us(f.percent)}  ${f.name}  ${f.where}`)
      if (p.libInclusive.length > 0) {
        out.push('  fastify-pow functions, inclusive (self + callees; nested ones are counted in their callers too):')
        for (const f of p.libInclusive.slice(0, 10)) out.push(`    ${lpad(fixed(f.percent, 1), 5)}% ${us(f.percent)}  ${f.name}  ${f.where}`)
      }
    }
  }
  out.push('')
  out.push(`wall time ${fixed(r.wallSeconds, 0)} s`)
  const text = out.join('\n')
  console.log(text)
  return text
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
