/**
 * A test harness that runs REAL redis-server processes on free loopback ports.
 *
 * Every server gets its own port and its own temporary directory, and is torn down with the test
 * that started it. The shared Redis on 127.0.0.1:6379 (if any) is never contacted.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { constants as fsConstants } from 'node:fs'
import { access, mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis, Cluster, type RedisOptions, type ClusterOptions } from 'ioredis'
import type { Test } from 'tap'
import { RedisStore } from '../../lib/index.js'

const HOST = '127.0.0.1'
/** The port of the shared Redis that the harness must never use. */
const SHARED_PORT = 6379
const START_TIMEOUT_MS = 10_000
const CLUSTER_TIMEOUT_MS = 20_000
const STOP_GRACE_MS = 3_000
const PORT_ATTEMPTS = 5
/** Cluster ports stay below this so that the bus port (port + 10000) is a valid port. */
const MAX_CLUSTER_PORT = 55_000
const OUTPUT_LIMIT = 64 * 1024

const NOT_FOUND_MESSAGE = 'redis-server not found: install it with `apt-get install -y redis-server` (Debian) — .ci/run does this'

/** A standalone redis-server started by {@link startRedis}. */
export interface RedisServer {
  /** The TCP port the server listens on (on 127.0.0.1). */
  readonly port: number
  /** `redis://127.0.0.1:<port>` */
  readonly url: string
  /**
   * A new ioredis client to this server: ioredis defaults, with host/port set to this server and
   * the given options merged over them. Its 'error' events are swallowed (a test sees failures
   * through rejected commands), and it is disconnected when the test ends.
   */
  client: (options?: RedisOptions) => Redis
  /** Stops the server (SIGTERM, SIGKILL after 3 s) and waits for the process to exit. Clients stay open. */
  stop: () => Promise<void>
  /** Starts the server again on the same port and directory and waits until it answers PING. */
  start: () => Promise<void>
  /**
   * Sends `CLIENT PAUSE <ms> ALL` through an admin connection and resolves once the server has
   * acknowledged it: from then on, every client (the admin connection included) waits `ms` ms.
   */
  pause: (ms: number) => Promise<void>
  /**
   * SIGSTOP: the process stops where it is, without a word to anyone (its sockets stay open,
   * unread), as a server does when its machine freezes. `resume()` (SIGCONT) lets it go on.
   */
  suspend: () => void
  resume: () => void
  /** `INFO [section]` through an admin connection. */
  info: (section?: string) => Promise<string>
  /** `DBSIZE` through an admin connection. */
  dbsize: () => Promise<number>
}

/** Options of {@link startRedis}. */
export interface StartRedisOptions {
  /**
   * Run with an append-only file fsynced on every write (`--appendonly yes --appendfsync always`),
   * so data survives `stop()` + `start()`. Default: no persistence at all.
   */
  persistence?: boolean
  /** Start as a replica of the server on this port (`--replicaof 127.0.0.1 <port>`). */
  replicaOf?: number
}

/** A 3-master Redis Cluster (no replicas) started by {@link startCluster}. */
export interface RedisClusterHandle {
  /** The client ports of the three masters. */
  readonly ports: number[]
  /** The startup nodes, `{ host: '127.0.0.1', port }` for each master. */
  readonly nodes: Array<{ host: string, port: number }>
  /**
   * A new ioredis Cluster client over {@link nodes}, with the given options. Returned at once
   * (it connects in the background); its 'error' events are swallowed and it is disconnected when
   * the test ends.
   */
  cluster: (options?: ClusterOptions) => Cluster
  /** Like {@link cluster}, but resolves once the client's status is 'ready'. */
  readyCluster: (options?: ClusterOptions) => Promise<Cluster>
}

// ---------------------------------------------------------------------------------------------
// Last-resort cleanup: servers still alive when the test process exits are killed (and their
// watchdogs then remove the directories).

const liveProcesses = new Set<ChildProcess>()
let exitHookInstalled = false

export function track (child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.on('exit', () => {
      for (const proc of liveProcesses) {
        try { proc.kill('SIGKILL') } catch {}
      }
    })
  }
  liveProcesses.add(child)
  child.once('exit', () => liveProcesses.delete(child))
}

/**
 * A detached shell that SIGKILLs the redis-server and removes its temp directory if this Node
 * process disappears without running its teardowns (e.g. SIGKILLed by a tap timeout), and exits by
 * itself once the server is gone.
 */
export function spawnWatchdog (redisPid: number, dir: string): ChildProcess | undefined {
  try {
    const script = 'while kill -0 "$1" 2>/dev/null; do kill -0 "$2" 2>/dev/null || exit 0; sleep 1; done; kill -9 "$2" 2>/dev/null; sleep 0.2; rm -rf -- "$3"'
    const dog = spawn('sh', ['-c', script, 'redis-watchdog', String(process.pid), String(redisPid), dir], {
      detached: true,
      stdio: 'ignore'
    })
    dog.on('error', () => {})
    dog.unref()
    // Not tracked: after the exit hook has killed the server, the watchdog removes the directory.
    return dog
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------------------------------------
// Binary, ports, processes.

let binaryPromise: Promise<string> | undefined

/** The absolute path of redis-server on PATH, or an Error saying how to install it. */
export function findRedisServer (): Promise<string> {
  binaryPromise ??= (async () => {
    for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
      if (dir === '') continue
      const candidate = path.join(dir, 'redis-server')
      try {
        await access(candidate, fsConstants.X_OK)
        return candidate
      } catch {}
    }
    throw new Error(NOT_FOUND_MESSAGE)
  })()
  return binaryPromise
}

function listen (port: number): Promise<net.Server | undefined> {
  return new Promise((resolve) => {
    const server = net.createServer()
    server.unref()
    server.once('error', () => resolve(undefined))
    server.listen({ port, host: HOST, exclusive: true }, () => resolve(server))
  })
}

function close (server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()))
}

/**
 * Free loopback ports (never 6379): `count` distinct ports from the OS, and with `withBus` each
 * port's cluster bus port (port + 10000) is free too and the port is below 55000.
 */
export async function freePorts (count: number, withBus = false): Promise<number[]> {
  const held: net.Server[] = []
  const ports: number[] = []
  try {
    for (let attempt = 0; ports.length < count; attempt++) {
      if (attempt > 500) throw new Error(`could not find ${count} free loopback port(s)${withBus ? ' with a free bus port' : ''}`)
      // With the bus check, fall back to random ports when the OS keeps handing out high ones.
      const wanted = withBus && attempt >= 20 ? 20_000 + Math.floor(Math.random() * (MAX_CLUSTER_PORT - 20_000)) : 0
      const server = await listen(wanted)
      if (server === undefined) continue
      const port = (server.address() as net.AddressInfo).port
      if (port === SHARED_PORT || (withBus && (port >= MAX_CLUSTER_PORT || port + 10_000 === SHARED_PORT))) {
        await close(server)
        continue
      }
      if (withBus) {
        const bus = await listen(port + 10_000)
        if (bus === undefined) {
          await close(server)
          continue
        }
        held.push(bus)
      }
      held.push(server)
      ports.push(port)
    }
    return ports
  } finally {
    await Promise.all(held.map(close))
  }
}

class PortInUseError extends Error {}

/** Sends an inline PING on a fresh socket; true if the server answered +PONG. */
export function pingOnce (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: HOST })
    let data = ''
    const done = (ok: boolean): void => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(1000, () => done(false))
    socket.once('error', () => done(false))
    socket.once('connect', () => socket.write('PING\r\n'))
    socket.on('data', (chunk) => {
      data += chunk.toString()
      if (data.includes('\r\n')) done(data.startsWith('+PONG'))
    })
  })
}

/** One run of a redis-server process. */
class Process {
  readonly child: ChildProcess
  readonly exited: Promise<void>
  private readonly watchdog: ChildProcess | undefined
  private out = ''
  private spawnError: Error | undefined
  exitCode: number | null = null
  exitSignal: NodeJS.Signals | null = null
  hasExited = false

  constructor (binary: string, args: string[], cwd: string) {
    this.child = spawn(binary, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    const collect = (chunk: Buffer): void => {
      this.out = (this.out + chunk.toString()).slice(-OUTPUT_LIMIT)
    }
    this.child.stdout?.on('data', collect)
    this.child.stderr?.on('data', collect)
    this.exited = new Promise((resolve) => {
      this.child.once('error', (err: NodeJS.ErrnoException) => {
        this.spawnError = err.code === 'ENOENT' ? new Error(NOT_FOUND_MESSAGE, { cause: err }) : err
        this.hasExited = true
        resolve()
      })
      this.child.once('exit', (code, signal) => {
        this.exitCode = code
        this.exitSignal = signal
        this.hasExited = true
        resolve()
      })
    })
    if (this.child.pid !== undefined) {
      track(this.child)
      this.watchdog = spawnWatchdog(this.child.pid, cwd)
    }
  }

  get output (): string {
    return this.out
  }

  /** Waits until the server answers PING; throws (with the server's output) if it exits or times out. */
  async waitReady (port: number, timeoutMs = START_TIMEOUT_MS): Promise<void> {
    const deadline = performance.now() + timeoutMs
    for (;;) {
      if (this.hasExited) {
        if (this.spawnError !== undefined) throw this.spawnError
        const message = `redis-server on port ${port} exited during startup (code ${this.exitCode}, signal ${this.exitSignal})\n${this.output}`
        throw /address already in use/i.test(this.output) ? new PortInUseError(message) : new Error(message)
      }
      if (await pingOnce(port)) return
      if (performance.now() > deadline) {
        throw new Error(`redis-server on port ${port} did not answer PING within ${timeoutMs} ms\n${this.output}`)
      }
      await sleep(50)
    }
  }

  /** SIGTERM, then SIGKILL if the process is still alive after 3 s; resolves once it has exited. */
  async stop (): Promise<void> {
    if (!this.hasExited) {
      // A suspended server would take SIGTERM only when continued.
      this.child.kill('SIGCONT')
      this.child.kill('SIGTERM')
      const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_GRACE_MS)
      await this.exited
      clearTimeout(timer)
    }
    if (this.watchdog !== undefined && this.watchdog.exitCode === null && this.watchdog.signalCode === null) {
      try { this.watchdog.kill('SIGKILL') } catch {}
    }
  }
}

export function swallow (): void {}

/** One redis-server (standalone or cluster node): its port, directory, process and connections. */
class Instance {
  port = 0
  dir = ''
  proc: Process | undefined
  private admin: Redis | undefined
  readonly clients = new Set<Redis | Cluster>()

  constructor (private readonly extraArgs: string[]) {}

  args (): string[] {
    return [
      '--port', String(this.port),
      '--bind', HOST,
      '--dir', this.dir,
      '--save', '',
      '--daemonize', 'no',
      '--protected-mode', 'yes',
      '--logfile', '',
      ...this.extraArgs
    ]
  }

  /** Spawns the server on `this.port` and waits for PING. */
  async launch (): Promise<void> {
    const binary = await findRedisServer()
    const proc = new Process(binary, this.args(), this.dir)
    this.proc = proc
    try {
      await proc.waitReady(this.port)
    } catch (err) {
      await proc.stop()
      throw err
    }
  }

  /** Picks a port (or takes the given one) and launches, retrying on another port if it was taken. */
  async launchOnFreePort (pickPort: () => Promise<number>): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      this.port = await pickPort()
      try {
        await this.launch()
        return
      } catch (err) {
        if (!(err instanceof PortInUseError) || attempt >= PORT_ATTEMPTS) throw err
      }
    }
  }

  adminClient (): Redis {
    if (this.admin === undefined) {
      this.admin = new Redis({ host: HOST, port: this.port, connectionName: 'test-harness-admin' })
      this.admin.on('error', swallow)
    }
    return this.admin
  }

  dropAdmin (): void {
    this.admin?.disconnect()
    this.admin = undefined
  }

  client (options: RedisOptions = {}): Redis {
    const client = new Redis({ host: HOST, port: this.port, ...options })
    client.on('error', swallow)
    this.clients.add(client)
    return client
  }

  async stop (): Promise<void> {
    this.dropAdmin()
    await this.proc?.stop()
  }

  async start (): Promise<void> {
    if (this.proc !== undefined && !this.proc.hasExited) return
    await this.launch()
  }

  /** Disconnects everything, stops the process and removes the directory. Never throws. */
  async destroy (): Promise<void> {
    for (const client of this.clients) {
      try { client.disconnect() } catch {}
    }
    this.clients.clear()
    this.dropAdmin()
    try { await this.proc?.stop() } catch {}
    if (this.dir !== '') await rm(this.dir, { recursive: true, force: true }).catch(() => {})
  }
}

async function makeDir (prefix: string): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), prefix))
}

// ---------------------------------------------------------------------------------------------
// Public API.

/**
 * Starts a real, private redis-server on a free loopback port for test `t`, with its own temp
 * directory, and waits until it answers PING. Everything (clients, process, directory) is torn
 * down when `t` ends. Fails with a clear message if `redis-server` is not installed.
 */
export async function startRedis (t: Test, options: StartRedisOptions = {}): Promise<RedisServer> {
  const persistence = options.persistence === true
  const instance = new Instance([
    ...(persistence ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']),
    ...(options.replicaOf === undefined ? [] : ['--replicaof', HOST, String(options.replicaOf)])
  ])
  t.teardown(() => instance.destroy())
  await findRedisServer()
  instance.dir = await makeDir('fastify-pow-redis-')
  await instance.launchOnFreePort(async () => (await freePorts(1))[0]!)

  const port = instance.port
  return {
    port,
    url: `redis://${HOST}:${port}`,
    client: (clientOptions?: RedisOptions) => instance.client(clientOptions),
    stop: () => instance.stop(),
    start: () => instance.start(),
    suspend: () => { instance.proc?.child.kill('SIGSTOP') },
    resume: () => { instance.proc?.child.kill('SIGCONT') },
    pause: async (ms: number) => {
      await instance.adminClient().client('PAUSE', Math.max(0, Math.floor(ms)), 'ALL')
    },
    info: (section?: string) => section === undefined
      ? instance.adminClient().info()
      : instance.adminClient().info(section),
    dbsize: () => instance.adminClient().dbsize()
  }
}

/** The slots of the three masters. */
export const SLOT_RANGES: Array<[number, number]> = [[0, 5460], [5461, 10922], [10923, 16383]]

/** INFO's `field:value` lines. */
export function parseInfo (text: string): Record<string, string> {
  const fields: Record<string, string> = {}
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':')
    if (i > 0) fields[line.slice(0, i)] = line.slice(i + 1).trim()
  }
  return fields
}

/**
 * Checks one node's view: cluster_state ok, 3 known nodes and 3 masters serving slots, all of
 * them connected at their 127.0.0.1 address. Returns a description of what is missing, or ''.
 */
async function clusterProblem (admin: Redis, ports: number[]): Promise<string> {
  const info = parseInfo(String(await admin.cluster('INFO')))
  if (info.cluster_state !== 'ok') return `cluster_state:${info.cluster_state}`
  if (info.cluster_known_nodes !== '3') return `cluster_known_nodes:${info.cluster_known_nodes}`
  if (info.cluster_size !== '3') return `cluster_size:${info.cluster_size}`
  const lines = String(await admin.cluster('NODES')).trim().split('\n')
  const masters = lines.filter((line) => {
    const [, address = '', flags = '', , , , , link = ''] = line.split(' ')
    return flags.split(',').includes('master') &&
      !/fail|handshake|noaddr/.test(flags) &&
      link === 'connected' &&
      ports.some((p) => address.startsWith(`${HOST}:${p}@`))
  })
  if (masters.length !== 3) return `CLUSTER NODES:\n${lines.join('\n')}`
  return ''
}

/**
 * Starts a real 3-master Redis Cluster (no replicas) for test `t`: three redis-server processes
 * with their own temp directories on free loopback ports whose bus ports are free too, slots
 * 0-5460 / 5461-10922 / 10923-16383, joined with CLUSTER MEET (no redis-cli). Resolves once every
 * node reports `cluster_state:ok` with 3 known masters. Everything is torn down when `t` ends.
 */
export async function startCluster (t: Test): Promise<RedisClusterHandle> {
  const instances = [0, 1, 2].map(() => new Instance([
    '--appendonly', 'no',
    '--cluster-enabled', 'yes',
    '--cluster-config-file', 'nodes.conf',
    '--cluster-node-timeout', '5000',
    // Without it, the node that sends the MEETs never learns its own address and may report an
    // empty host for its slots in CLUSTER SLOTS.
    '--cluster-announce-ip', HOST
  ]))
  t.teardown(() => Promise.all(instances.map((i) => i.destroy())))
  await findRedisServer()

  const initial = await freePorts(3, true)
  const used = new Set(initial)
  await Promise.all(instances.map(async (instance, n) => {
    instance.dir = await makeDir(`fastify-pow-redis-cluster-${n}-`)
    let first = true
    await instance.launchOnFreePort(async () => {
      if (first) {
        first = false
        return initial[n]!
      }
      for (;;) {
        const [port] = await freePorts(1, true)
        if (!used.has(port!)) {
          used.add(port!)
          return port!
        }
      }
    })
  }))
  const ports = instances.map((i) => i.port)

  // Form the cluster: slots, distinct config epochs, MEET from the first node.
  const admins = instances.map((i) => i.adminClient())
  await Promise.all(admins.map(async (admin, n) => {
    const [from, to] = SLOT_RANGES[n]!
    await admin.cluster('ADDSLOTSRANGE', from, to)
    await admin.cluster('SET-CONFIG-EPOCH', n + 1)
  }))
  for (const port of ports.slice(1)) await admins[0]!.cluster('MEET', HOST, port)

  const deadline = performance.now() + CLUSTER_TIMEOUT_MS
  for (;;) {
    const problems = await Promise.all(admins.map(async (admin, n) => {
      const problem = await clusterProblem(admin, ports).catch((err: Error) => `error: ${err.message}`)
      return problem === '' ? '' : `node ${ports[n]}: ${problem}`
    }))
    if (problems.every((p) => p === '')) break
    if (performance.now() > deadline) {
      throw new Error(`Redis Cluster on ports ${ports.join(', ')} did not become ready within ${CLUSTER_TIMEOUT_MS} ms:\n${problems.filter(Boolean).join('\n')}`)
    }
    await sleep(100)
  }

  const nodes = ports.map((port) => ({ host: HOST, port }))
  const cluster = (options: ClusterOptions = {}): Cluster => {
    const client = new Cluster(nodes.map((n) => ({ ...n })), options)
    client.on('error', swallow)
    instances[0]!.clients.add(client)
    return client
  }
  return {
    ports,
    nodes,
    cluster,
    readyCluster: async (options?: ClusterOptions) => {
      const client = cluster(options)
      if (client.status === 'ready') return client
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          cleanup()
          reject(new Error(`ioredis Cluster client not ready within ${START_TIMEOUT_MS} ms (status ${client.status})`))
        }, START_TIMEOUT_MS)
        const onReady = (): void => { cleanup(); resolve() }
        const onEnd = (): void => { cleanup(); reject(new Error('ioredis Cluster client ended before it was ready')) }
        const cleanup = (): void => {
          clearTimeout(timer)
          client.off('ready', onReady)
          client.off('end', onEnd)
        }
        client.on('ready', onReady)
        client.on('end', onEnd)
      })
      return client
    }
  }
}

/**
 * Resolves at once when `client` is already `there`, else at its next `event`; rejects with
 * `late` after `timeoutMs`. Not `events.once()`: that would reject on the first 'error' event,
 * and a reconnecting client emits one per refused attempt.
 */
async function waitForEvent (client: Redis, there: boolean, event: 'ready' | 'close', late: () => string, timeoutMs: number): Promise<void> {
  if (there) return
  await new Promise<void>((resolve, reject) => {
    const onEvent = (): void => {
      clearTimeout(timer)
      resolve()
    }
    const timer = setTimeout(() => {
      client.off(event, onEvent)
      reject(new Error(late()))
    }, timeoutMs)
    client.once(event, onEvent)
  })
}

/** Resolves once `client` is 'ready'. */
export async function waitForReady (client: Redis, timeoutMs = 10_000): Promise<void> {
  await waitForEvent(client, client.status === 'ready', 'ready',
    () => `ioredis client not ready within ${timeoutMs} ms (status ${client.status})`, timeoutMs)
}

/**
 * Resolves once `client` has seen its connection close. A stopped redis-server's socket closes
 * before ioredis reads the close, so a command sent in between is queued for a resend (and fails
 * later with ioredis' retry error) instead of failing at once: tests about a server that is down
 * wait for this first.
 */
export async function waitForClosed (client: Redis, timeoutMs = 10_000): Promise<void> {
  await waitForEvent(client, client.status !== 'ready', 'close',
    () => `ioredis client still ready ${timeoutMs} ms after its server stopped`, timeoutMs)
}

/**
 * An ioredis client of `server` that is 'ready'. It reconnects every 50 ms (ioredis backs off up
 * to 2 s by default), so that it is back quickly after `server.start()`; otherwise defaults.
 */
export async function readyClient (server: RedisServer, options: RedisOptions = {}): Promise<Redis> {
  const client = server.client({ retryStrategy: () => 50, ...options })
  await waitForReady(client)
  return client
}

/** What {@link twoClients} starts: two app instances' connections to one Redis. */
export interface TwoClients {
  server: RedisServer
  /** A client named 'instance-a', ready. */
  clientA: Redis
  /** A client named 'instance-b', ready. */
  clientB: Redis
  /** A RedisStore (defaults) on clientA. */
  storeA: RedisStore
  /** A RedisStore (defaults) on clientB. */
  storeB: RedisStore
}

/**
 * One redis-server for test `t` and two clients of it, A and B (each on its own connection), both
 * ready, with a RedisStore on each: what two app instances behind a load balancer share.
 */
export async function twoClients (t: Test): Promise<TwoClients> {
  const server = await startRedis(t)
  const clientA = server.client({ connectionName: 'instance-a' })
  const clientB = server.client({ connectionName: 'instance-b' })
  await Promise.all([waitForReady(clientA), waitForReady(clientB)])
  return { server, clientA, clientB, storeA: new RedisStore(clientA), storeB: new RedisStore(clientB) }
}
