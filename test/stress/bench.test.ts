/**
 * `npm run bench` runs and prints its table: a short run of the real runner (every server
 * variant in its own process, its own redis-servers, autocannon), with small growth fills and
 * its results written to a temporary file. It checks what the run produces, never a speed.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { test } from 'tap'
import { postgresAvailable } from '../helpers/postgres.js'

const ROOT = path.resolve(import.meta.dirname, '..', '..')

test('npm run bench --quick: every variant answers, the tables and the targets are printed, the results written', async (t) => {
  t.setTimeout(240_000)
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fastify-pow-bench-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const results = path.join(dir, 'results.json')
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'benchmarks', 'run.ts'), '--quick', '--no-ops', '--no-profile'], {
    cwd: ROOT,
    env: {
      ...process.env,
      BENCH_RESULTS: results,
      BENCH_DURATION: '1',
      BENCH_WARMUP: '0',
      BENCH_GROWTH_SMALL: '100',
      BENCH_GROWTH_LARGE: '2000',
      BENCH_SLICES: '2',
      ...(process.env.POW_TEST_POSTGRES_URL === undefined ? {} : { BENCH_POSTGRES_URL: process.env.POW_TEST_POSTGRES_URL })
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  t.equal(code, 0, 'the run succeeds')
  if (code !== 0) t.comment(output.slice(-4000))

  t.match(output, /every variant answers 200 with the user to its login cookie, 401 without a cookie and 401 to a forged one/)
  const labels = [
    'bare Fastify (no session)', 'Fastify + @fastify/cookie (id compared)', 'Fastify + one ioredis GET', '@fastify/session + connect-redis', 'the same with rolling: false',
    '@fastify/secure-session (cookie)', 'fastify-pow, MemoryStore', 'fastify-pow, RedisStore (ioredis)',
    'fastify-pow, MemoryStore, 100 stored', 'fastify-pow, MemoryStore, 2k stored', 'the same with --max-semi-space-size=64',
    'fastify-pow, RedisStore, 100 stored', 'fastify-pow, RedisStore, 2k stored',
    // The PostgreSQL rows run when the bench reaches PostgreSQL, as the tests do.
    ...(postgresAvailable ? ['Fastify + one pg SELECT by primary key', '@fastify/session + connect-pg-simple', 'fastify-pow, PostgresStore (pg)'] : [])
  ]
  const table = output.slice(output.indexOf('\nvariant '))
  for (const label of labels) {
    const row = table.split('\n').find((line) => line.trimStart().startsWith(label))
    t.match(row, /\s[\d,]+\s+\d+\s+\d+\s+\d+\.\d\d\s+\d+\.\d\d\s/, `a table row for ${label}: req/s, p50, p99 and the two ratios`)
  }
  const costRows = [
    'Fastify + @fastify/cookie / bare Fastify', 'MemoryStore / Fastify + @fastify/cookie', 'RedisStore / Fastify + one ioredis GET',
    'RedisStore / @fastify/session + connect-redis', 'one ioredis GET / @fastify/session + connect-redis', 'no cookie: MemoryStore / bare Fastify',
    '@fastify/secure-session / bare Fastify'
  ]
  const cost = output.slice(output.indexOf('\nCost per request:'))
  for (const name of costRows) {
    const row = cost.split('\n').find((line) => line.trimStart().startsWith(name))
    t.match(row, /\s\d+\.\d\d\s+\d+\.\d\d-\d+\.\d\d\s+\d+\.\d\s+\d+\.\d\s+\d+\.\d\d \d+\.\d\d$/, `a cost row for ${name}: the median ratio, its range, both CPU µs/req and the median of each of the two starts`)
  }
  const verdicts = output.split('\n').filter((line) => /^ {2}(MET|MISSED) {2}/.test(line))
  t.equal(verdicts.length, 7, 'seven targets, each MET or MISSED: four per-request costs, two growths, the heap')
  t.ok(verdicts.some((line) => line.includes('MemoryStore / Fastify + @fastify/cookie >= 0.92 (CPU per request)')), 'the MemoryStore cost target')
  t.match(output, /MemoryStore, 2k sessions: heap and buffers \+\d+ MiB = [\d,]+ B per session/)
  t.match(output, /Redis, 2k sessions: used_memory \+\d+ MiB = [\d,]+ B per session/)

  const json = JSON.parse(readFileSync(results, 'utf8'))
  t.equal(json.variants.length, labels.length, 'every variant in the results file')
  t.ok(json.variants.every((v: { reqPerSec: number }) => v.reqPerSec > 0), 'each with its req/s')
  t.equal(json.targets.length, 7)
  t.equal(json.cost.pairs.length, costRows.length, 'every cost pair in the results file')
  t.ok(json.cost.pairs.every((c: { slices: unknown[], median: number, starts: number[] }) => c.slices.length === 2 && c.median > 0 && c.starts.length === 2), 'each with its slices, median and the median of each start')
  if (postgresAvailable) {
    t.match(output, /PostgresStore \/ raw SELECT +\d+\.\d\d /, 'the PostgresStore ratio to its floor')
    t.match(output, /PostgresStore \/ @fastify\/session \+ connect-pg-simple +\d+\.\d\d /, 'and to connect-pg-simple')
    t.equal(json.ratios.length, 2, 'both in the results file')
  } else {
    t.match(output, /!!! PostgreSQL rows SKIPPED/)
  }
  t.equal(json.printed.includes('\nTargets\n'), true, 'the printout is in the results file too')
})
