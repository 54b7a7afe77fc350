/**
 * Processes and HTTP for the benchmark runner: a private redis-server on a free loopback port, a
 * database of the run's own on the machine's PostgreSQL, server processes with an IPC channel,
 * and a tiny HTTP client. Every child is killed and the database dropped when the runner exits,
 * however it exits; detached watchdogs kill redis-server and drop the database even if the
 * runner is SIGKILLed. The shared Redis on 127.0.0.1:6379 is never contacted, and no other
 * database is touched.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import pg from 'pg'

export const HOST = '127.0.0.1'
export const ROOT = path.resolve(import.meta.dirname, '..')
const SHARED_REDIS_PORT = 6379

// ------------------------------------------------------------------------------------------
// Cleanup of every child, whatever ends the runner.

const children = new Set<ChildProcess>()
const tempDirs = new Set<string>()
/** Synchronous last resorts, run once after the children are killed (dropping the database). */
const exitTasks = new Set<() => void>()

function killAll (): void {
  for (const child of children) {
    try { child.kill('SIGKILL') } catch {}
  }
  for (const dir of tempDirs) {
    try { rmSync(dir, { recursive: true, force: true }) } catch {}
  }
  for (const task of exitTasks) {
    exitTasks.delete(task)
    try { task() } catch {}
  }
}
process.on('exit', killAll)
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    killAll()
    process.exit(130)
  })
}

function track (child: ChildProcess): void {
  children.add(child)
  child.once('exit', () => children.delete(child))
}

async function waitExit (child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true
  return await Promise.race([
    new Promise<boolean>((resolve) => child.once('exit', () => resolve(true))),
    sleep(ms).then(() => false)
  ])
}

/**
 * A detached `sh -c script` that outlives the runner: $1 is the runner's pid, then `args`. Its
 * script waits for the runner to be gone (even SIGKILLed) and cleans up after it.
 */
function watchdog (script: string, args: string[]): ChildProcess {
  const child = spawn('sh', ['-c', script, 'fastify-pow-bench-watchdog', String(process.pid), ...args], { detached: true, stdio: 'ignore' })
  child.on('error', () => {})
  child.unref()
  return child
}

async function terminate (child: ChildProcess, graceful: () => void, ms = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  try { graceful() } catch {}
  if (await waitExit(child, ms)) return
  child.kill('SIGKILL')
  await waitExit(child, 2000)
}

/** A free TCP port on the loopback interface (never 6379). */
export async function freePort (): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = net.createServer()
      server.once('error', reject)
      server.listen({ port: 0, host: HOST, exclusive: true }, () => {
        const { port } = server.address() as net.AddressInfo
        server.close(() => resolve(port))
      })
    })
    if (port !== SHARED_REDIS_PORT) return port
  }
}

// ------------------------------------------------------------------------------------------
// redis-server

export interface RedisServer {
  port: number
  pid: number
  version: string
  /** Sends a command with redis-cli-free RESP over a fresh socket; returns the raw reply text. */
  command: (...args: string[]) => Promise<string>
  stop: () => Promise<void>
}

/** One RESP command over a short-lived connection (enough for INFO / DBSIZE / FLUSHALL / SHUTDOWN). */
function respCommand (port: number, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: HOST, port })
    let data = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => {
      data += chunk
      // A bulk string reply: $<len>\r\n<payload>\r\n; anything else is one line.
      if (data.startsWith('$')) {
        const eol = data.indexOf('\r\n')
        const len = Number(data.slice(1, eol))
        if (len < 0) { socket.end(); resolve('') } else if (Buffer.byteLength(data) >= eol + 2 + len + 2) {
          socket.end()
          resolve(Buffer.from(data).subarray(eol + 2, eol + 2 + len).toString())
        }
      } else if (data.endsWith('\r\n')) {
        socket.end()
        if (data.startsWith('-')) reject(new Error(data.trim()))
        else resolve(data.slice(1).trim())
      }
    })
    socket.on('error', reject)
    socket.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(''))
  })
}

/** Starts a private, non-persistent redis-server on a free loopback port and waits for PING. */
export async function startRedis (): Promise<RedisServer> {
  const binary = process.env.BENCH_REDIS_SERVER ?? 'redis-server'
  const versionOut = spawnSync(binary, ['--version'], { encoding: 'utf8' })
  if (versionOut.error !== undefined || versionOut.status !== 0) {
    throw new Error(`${binary} not found: install it (Debian: apt-get install -y redis-server) or set BENCH_REDIS_SERVER`)
  }
  const version = /v=(\S+)/.exec(versionOut.stdout)?.[1] ?? 'unknown'
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fastify-pow-bench-redis-'))
  tempDirs.add(dir)
  const port = await freePort()
  const child = spawn(binary, [
    '--port', String(port), '--bind', HOST, '--protected-mode', 'yes', '--dir', dir,
    '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--logfile', ''
  ], { stdio: ['ignore', 'ignore', 'pipe'] })
  track(child)
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  // If this runner dies without its exit hook (SIGKILL), the watchdog kills redis-server.
  watchdog('while kill -0 "$1" 2>/dev/null; do kill -0 "$2" 2>/dev/null || exit 0; sleep 1; done; kill -9 "$2" 2>/dev/null; rm -rf -- "$3"',
    [String(child.pid), dir])

  const deadline = Date.now() + 10_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`redis-server exited: ${stderr}`)
    try {
      if (await respCommand(port, ['PING']) === 'PONG') break
    } catch {}
    if (Date.now() > deadline) throw new Error(`redis-server did not answer on ${port}: ${stderr}`)
    await sleep(50)
  }
  return {
    port,
    pid: child.pid as number,
    version,
    command: (...args) => respCommand(port, args),
    stop: async () => {
      await terminate(child, () => child.kill('SIGTERM'))
      rmSync(dir, { recursive: true, force: true })
      tempDirs.delete(dir)
    }
  }
}

// ------------------------------------------------------------------------------------------
// PostgreSQL: a database of the run's own on the machine's server

/** The server's maintenance database, where the runner connects to create and drop its own. */
export const POSTGRES_URL = process.env.BENCH_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

export interface BenchDatabase {
  name: string
  /** The database's connection string, for the servers. */
  url: string
  /** The server's version. */
  version: string
  /**
   * CPU seconds (user + system) of each backend process serving a connection to this database
   * whose application_name is `application`, by pid (from /proc, as {@link cpuSeconds}).
   */
  backendCpu: (application: string) => Promise<Map<number, number>>
  /** Drops the database, ending the connections still open to it. */
  drop: () => Promise<void>
}

// The drop as a node script of its own (argv: maintenance URL, name), for the exit hook, which
// cannot wait for a query, and for the watchdog, which outlives the runner.
const DROP_SCRIPT = `import pg from 'pg'
const client = new pg.Client({ connectionString: process.argv[1], connectionTimeoutMillis: 5000 })
await client.connect()
await client.query('DROP DATABASE IF EXISTS "' + process.argv[2] + '" WITH (FORCE)')
await client.end()`

/**
 * Creates the database `pow_bench_<pid>_<hex>` on the server of BENCH_POSTGRES_URL; throws when
 * the server cannot be reached. It is dropped by `drop()`, or else when the runner exits.
 */
export async function createDatabase (): Promise<BenchDatabase> {
  const admin = new pg.Client({ connectionString: POSTGRES_URL, connectionTimeoutMillis: 5000, application_name: 'fastify-pow-bench-runner' })
  admin.on('error', () => {})
  await admin.connect()
  const name = `pow_bench_${process.pid}_${randomBytes(4).toString('hex')}`
  let version: string
  try {
    version = (await admin.query('SHOW server_version')).rows[0].server_version
    await admin.query(`CREATE DATABASE "${name}"`)
  } catch (err) {
    await admin.end().catch(() => {})
    throw err
  }
  const dropArgs = ['--input-type=module', '-e', DROP_SCRIPT, POSTGRES_URL, name]
  const dropNow = (): void => { spawnSync(process.execPath, dropArgs, { cwd: ROOT, stdio: 'ignore', timeout: 15_000 }) }
  exitTasks.add(dropNow)
  // If this runner dies without its exit hook (SIGKILL), the watchdog drops the database.
  const guard = watchdog('while kill -0 "$1" 2>/dev/null; do sleep 1; done; cd "$2" && shift 2 && exec "$@"', [ROOT, process.execPath, ...dropArgs])
  const url = new URL(POSTGRES_URL)
  url.pathname = `/${name}`
  return {
    name,
    url: url.href,
    version,
    backendCpu: async (application) => {
      const { rows } = await admin.query('SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2', [name, application])
      const cpu = new Map<number, number>()
      for (const { pid } of rows as Array<{ pid: number }>) {
        const seconds = cpuSeconds(pid)
        if (seconds !== undefined) cpu.set(pid, seconds)
      }
      return cpu
    },
    drop: async () => {
      try {
        await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`)
        exitTasks.delete(dropNow)
        guard.kill()
      } finally {
        await admin.end().catch(() => {})
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Benchmark servers

export interface ServerProcess {
  port: number
  pid: number
  /** What the server reported when ready (prefill timings, heap figures...). */
  info: Record<string, unknown>
  /** Asks the server to exit cleanly (so that --cpu-prof writes its file); SIGKILL after 10 s. */
  stop: () => Promise<void>
  /** Sends a message and resolves with the first answer of type `answer`. */
  ask: (message: Record<string, unknown>, answer: string) => Promise<Record<string, unknown>>
}

/**
 * Starts `node [nodeArgs] [--import keep-ticks.mjs] --import tsx benchmarks/servers/<file>` and
 * waits for its 'ready'. Every server but fastify-pow's (pow.ts, where the plugin does it) gets
 * servers/keep-ticks.mjs first: all are then measured with process.nextTick on V8's fast path.
 */
export async function startServer (
  file: string, env: Record<string, string>, options: { nodeArgs?: string[], timeoutMs?: number } = {}
): Promise<ServerProcess> {
  const keepTicks = file === 'pow.ts' ? [] : ['--import', pathToFileURL(path.join(ROOT, 'benchmarks', 'servers', 'keep-ticks.mjs')).href]
  const child = spawn(process.execPath, [
    ...(options.nodeArgs ?? []), ...keepTicks, '--import', 'tsx', path.join(ROOT, 'benchmarks', 'servers', file)
  ], {
    cwd: ROOT,
    env: { ...process.env, NODE_ENV: 'production', ...env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  track(child)
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${file} did not start within ${options.timeoutMs ?? 60_000} ms`)), options.timeoutMs ?? 60_000)
    child.on('message', (message: Record<string, unknown>) => {
      if (message?.type === 'ready') {
        clearTimeout(timer)
        resolve(message)
      }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`${file} (${JSON.stringify(env)}) exited before it was ready: ${code ?? signal}`))
    })
  })
  return {
    port: ready.port as number,
    pid: child.pid as number,
    info: ready,
    stop: () => terminate(child, () => child.send('exit'), 10_000),
    ask: (message, answer) => new Promise((resolve, reject) => {
      const onMessage = (m: Record<string, unknown>): void => {
        if (m?.type === answer || m?.type === 'profile-error') {
          child.off('message', onMessage)
          if (m.type === 'profile-error') reject(new Error(`${file}: ${String(m.error)}`))
          else resolve(m)
        }
      }
      child.on('message', onMessage)
      child.send(message)
    })
  }
}

/** Runs a TypeScript script as a child with IPC and resolves with the first message it sends. */
export async function runChild<T> (file: string, env: Record<string, string>, nodeArgs: string[] = [], timeoutMs = 600_000): Promise<T> {
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', path.join(ROOT, 'benchmarks', file)], {
    cwd: ROOT,
    env: { ...process.env, NODE_ENV: 'production', ...env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  track(child)
  try {
    return await new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${file} took more than ${timeoutMs} ms`)), timeoutMs)
      child.on('message', (message: { type?: string, result?: T, error?: string }) => {
        if (message?.type === 'result') {
          clearTimeout(timer)
          resolve(message.result as T)
        } else if (message?.type === 'error') {
          clearTimeout(timer)
          reject(new Error(`${file}: ${message.error}`))
        }
      })
      child.once('exit', (code, signal) => {
        clearTimeout(timer)
        reject(new Error(`${file} exited without a result: ${code ?? signal}`))
      })
    })
  } finally {
    await terminate(child, () => child.kill('SIGTERM'))
  }
}

// ------------------------------------------------------------------------------------------
// HTTP

export interface Answer {
  status: number
  headers: http.IncomingHttpHeaders
  body: string
}

export function request (port: number, method: string, urlPath: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port, method, path: urlPath, headers, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** `name=value` pairs of the Set-Cookie headers of an answer, as a Cookie request header. */
export function cookieHeader (answer: Answer): string {
  const setCookie = answer.headers['set-cookie'] ?? []
  return setCookie
    .map((line) => line.split(';')[0])
    // An expired (cleared) cookie is not part of the browser's jar.
    .filter((pair, i) => !/max-age=0|expires=thu, 01 jan 1970/i.test(setCookie[i]) && pair.slice(pair.indexOf('=') + 1) !== '')
    .join('; ')
}

// ------------------------------------------------------------------------------------------
// CPU time of a process (Linux /proc), to turn a load into CPU µs per request

let ticksPerSecond: number | undefined

/** User + system CPU seconds the process has used so far; undefined where /proc is missing. */
export function cpuSeconds (pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    ticksPerSecond ??= Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond
  } catch {
    return undefined
  }
}
