/**
 * A REAL Redis Cluster with replicas, for failover tests: 3 masters and 3 replicas (six
 * redis-server processes on free loopback ports, each with its own temporary directory), torn down
 * with the test that started it, with the process and port machinery of test/helpers/redis.ts
 * (which starts the replica-less cluster of the functional tests).
 *
 * The nodes run with `--cluster-node-timeout 1000` (a killed master is failed over within a few
 * seconds), `--cluster-require-full-coverage no` (the other shards keep answering while one has no
 * master), `--cluster-allow-reads-when-down yes` and `--appendonly no`.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Cluster, Redis, type ClusterOptions } from 'ioredis'
import type { Test } from 'tap'
import { findRedisServer, freePorts, parseInfo, pingOnce, SLOT_RANGES, spawnWatchdog, swallow, track, waitForReady } from './redis.js'

const HOST = '127.0.0.1'
const START_TIMEOUT_MS = 10_000
const CLUSTER_TIMEOUT_MS = 30_000
const OUTPUT_LIMIT = 64 * 1024
const SLOTS = 16_384

/** Options of {@link startReplicatedCluster}. */
export interface ReplicatedClusterOptions {
  /** `cluster-node-timeout`, ms. Default 1000. */
  nodeTimeout?: number
  /** How long the cluster may take to form, ms. Default 30 000. */
  timeoutMs?: number
}

/** One node as a live node's `CLUSTER NODES` describes it. */
export interface ClusterNodeView {
  id: string
  port: number
  role: 'master' | 'replica'
  /** The flags other than myself/master/slave: `fail`, `fail?`, `handshake`, `noaddr`... */
  flags: string[]
  /** A replica's master's id. */
  masterId: string | undefined
  connected: boolean
  /** A master's slot ranges. */
  slots: Array<[number, number]>
}

/** Options of {@link ReplicatedCluster.waitForClusterOk}. */
export interface WaitForClusterOkOptions {
  /** Also require a replica with `master_link_status:up` for every master. Default false. */
  replicas?: boolean
  timeoutMs?: number
}

/** What {@link startReplicatedCluster} started. */
export interface ReplicatedCluster {
  /** The client ports of all six nodes, masters first (as started; roles change with failovers). */
  readonly ports: number[]
  /** The masters' ports as started, serving slots 0-5460, 5461-10922, 10923-16383. */
  readonly masters: number[]
  /** `replicas[i]` was attached to `masters[i]` with CLUSTER REPLICATE. */
  readonly replicas: number[]
  /** The startup nodes of a Cluster client: `{ host: '127.0.0.1', port }` for every node. */
  readonly nodes: Array<{ host: string, port: number }>
  /**
   * A new ioredis Cluster client over {@link nodes}, returned at once. Its 'error' and 'node
   * error' events are swallowed; it is disconnected when the test ends.
   */
  cluster: (options?: ClusterOptions) => Cluster
  /** Like {@link cluster}, but resolves once the client is 'ready'. */
  readyCluster: (options?: ClusterOptions) => Promise<Cluster>
  /** An admin connection to one node (created once, closed when the test ends or the node is killed). */
  admin: (port: number) => Redis
  /** The node's process is running (not killed). */
  alive: (port: number) => boolean
  /** The cluster as a live node sees it (`CLUSTER NODES`). */
  topology: () => Promise<ClusterNodeView[]>
  /** The port of the master that serves `slot`, per a live node's `CLUSTER SLOTS`. */
  masterOf: (slot: number) => Promise<number>
  /** The port of a connected replica of the master on `masterPort`, if it has one. */
  replicaOf: (masterPort: number) => Promise<number | undefined>
  /** SIGKILLs the node's process; resolves once it has exited. */
  kill: (port: number) => Promise<void>
  /** SIGSTOPs the node's process: it answers nothing and reads nothing until `resume` (SIGCONT). */
  suspend: (port: number) => void
  resume: (port: number) => void
  /**
   * `CLUSTER FAILOVER [mode]` on the replica on `replicaPort` (graceful without a mode); resolves
   * once that node reports itself a master (INFO replication `role:master`).
   */
  failover: (replicaPort: number, mode?: 'FORCE' | 'TAKEOVER') => Promise<void>
  /**
   * Resolves once every live node reports `cluster_state:ok`, the live nodes agree that 3
   * masters that are not failed serve all 16384 slots (each a live process), and, with
   * `replicas`, each of them has a replica whose link is up. Rejects after `timeoutMs` (default
   * 30 s) with what was missing.
   */
  waitForClusterOk: (options?: WaitForClusterOkOptions) => Promise<void>
}

// ---------------------------------------------------------------------------------------------
// Slots: CRC16/XMODEM of the key's hash tag, as the Redis Cluster specification defines it.

const CRC16_TABLE = (() => {
  const table = new Uint16Array(256)
  for (let i = 0; i < 256; i++) {
    let crc = i << 8
    for (let bit = 0; bit < 8; bit++) crc = (crc & 0x8000) !== 0 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
    table[i] = crc
  }
  return table
})()

function crc16 (bytes: Uint8Array): number {
  let crc = 0
  for (const byte of bytes) crc = ((crc << 8) & 0xffff) ^ (CRC16_TABLE[((crc >> 8) ^ byte) & 0xff] as number)
  return crc
}

/** The Cluster slot of `key`: only the part in the first non-empty `{...}` counts, if any. */
export function keySlot (key: string): number {
  const open = key.indexOf('{')
  if (open !== -1) {
    const close = key.indexOf('}', open + 1)
    if (close > open + 1) key = key.slice(open + 1, close)
  }
  return crc16(Buffer.from(key)) % SLOTS
}

// ---------------------------------------------------------------------------------------------
/** A free loopback port whose bus port (+10000) is free too, not in `taken`. */
async function freeClusterPort (taken: Set<number>): Promise<number> {
  for (;;) {
    const [port] = await freePorts(1, true) as [number]
    if (!taken.has(port)) {
      taken.add(port)
      return port
    }
  }
}

/** One cluster node: its process, directory and admin connection. */
class Node {
  port = 0
  dir = ''
  child: ChildProcess | undefined
  exited: Promise<void> = Promise.resolve()
  hasExited = true
  output = ''
  #dog: ChildProcess | undefined
  #admin: Redis | undefined

  constructor (private readonly args: string[]) {}

  async start (taken: Set<number>): Promise<void> {
    const bin = await findRedisServer()
    this.dir = await mkdtemp(path.join(os.tmpdir(), 'fastify-pow-redis-failover-'))
    for (let attempt = 1; ; attempt++) {
      this.port = await freeClusterPort(taken)
      this.output = ''
      const child = spawn(bin, [
        '--port', String(this.port), '--bind', HOST, '--dir', this.dir, '--save', '', '--daemonize', 'no',
        '--protected-mode', 'yes', '--logfile', '', ...this.args
      ], { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] })
      this.child = child
      this.hasExited = false
      const collect = (chunk: Buffer): void => { this.output = (this.output + chunk.toString()).slice(-OUTPUT_LIMIT) }
      child.stdout?.on('data', collect)
      child.stderr?.on('data', collect)
      this.exited = new Promise((resolve) => {
        child.once('error', () => { this.hasExited = true; resolve() })
        child.once('exit', () => { this.hasExited = true; resolve() })
      })
      if (child.pid !== undefined) {
        track(child)
        this.#dog = spawnWatchdog(child.pid, this.dir)
      }
      const deadline = performance.now() + START_TIMEOUT_MS
      while (!this.hasExited && !(await pingOnce(this.port))) {
        if (performance.now() > deadline) {
          await this.kill()
          throw new Error(`redis-server on port ${this.port} did not answer PING within ${START_TIMEOUT_MS} ms\n${this.output}`)
        }
        await sleep(50)
      }
      if (!this.hasExited) return
      if (!/address already in use/i.test(this.output) || attempt >= 5) {
        throw new Error(`redis-server on port ${this.port} exited during startup\n${this.output}`)
      }
    }
  }

  admin (): Redis {
    if (this.#admin === undefined) {
      this.#admin = new Redis({ host: HOST, port: this.port, connectionName: 'test-harness-admin', commandTimeout: 3000, maxRetriesPerRequest: 1 })
      this.#admin.on('error', swallow)
    }
    return this.#admin
  }

  async kill (): Promise<void> {
    this.#admin?.disconnect()
    this.#admin = undefined
    if (!this.hasExited) this.child?.kill('SIGKILL')
    await this.exited
    if (this.#dog !== undefined && this.#dog.exitCode === null && this.#dog.signalCode === null) {
      try { this.#dog.kill('SIGKILL') } catch {}
    }
  }

  async destroy (): Promise<void> {
    await this.kill().catch(() => {})
    if (this.dir !== '') await rm(this.dir, { recursive: true, force: true }).catch(() => {})
  }
}

// ---------------------------------------------------------------------------------------------
// Reading a node's view.

function parseNodes (text: string): ClusterNodeView[] {
  return text.trim().split('\n').filter(Boolean).map((line) => {
    const [id = '', address = '', flagText = '', master = '-', , , , link = '', ...slotTexts] = line.trim().split(' ')
    const flags = flagText.split(',')
    const slots: Array<[number, number]> = []
    for (const s of slotTexts) {
      if (s.startsWith('[')) continue // a slot being migrated
      const [from, to = from] = s.split('-').map(Number) as [number, number?]
      slots.push([from, to as number])
    }
    return {
      id,
      port: Number(/:(\d+)@/.exec(address)?.[1] ?? 0),
      role: flags.includes('slave') ? 'replica' : 'master',
      flags: flags.filter((f) => !['myself', 'master', 'slave'].includes(f)),
      masterId: master === '-' ? undefined : master,
      connected: link === 'connected',
      slots
    }
  })
}

async function nodesOf (admin: Redis): Promise<ClusterNodeView[]> {
  return parseNodes(String(await admin.cluster('NODES')))
}

// ---------------------------------------------------------------------------------------------
// Public API.

/**
 * Starts a Redis Cluster of 3 masters (slots 0-5460, 5461-10922, 10923-16383) and 3 replicas
 * (one per master, attached with CLUSTER REPLICATE) for test `t`, joined with CLUSTER MEET, and
 * resolves once every node reports `cluster_state:ok` and every master has a replica whose link
 * is up (INFO replication `master_link_status:up`). Everything (clients, processes, directories)
 * is torn down when `t` ends.
 */
export async function startReplicatedCluster (t: Test, options: ReplicatedClusterOptions = {}): Promise<ReplicatedCluster> {
  const nodeTimeout = options.nodeTimeout ?? 1000
  const nodes = Array.from({ length: 6 }, () => new Node([
    '--appendonly', 'no',
    '--cluster-enabled', 'yes',
    '--cluster-config-file', 'nodes.conf',
    '--cluster-node-timeout', String(nodeTimeout),
    '--cluster-require-full-coverage', 'no',
    '--cluster-allow-reads-when-down', 'yes',
    // Without it, the node that sends the MEETs may never learn its own address.
    '--cluster-announce-ip', HOST
  ]))
  const clients = new Set<Cluster>()
  t.teardown(async () => {
    for (const client of clients) {
      try { client.disconnect() } catch {}
    }
    await Promise.all(nodes.map((n) => n.destroy()))
  })
  await findRedisServer()

  const taken = new Set<number>()
  // One after the other: each takes a port that the ones before did not.
  for (const n of nodes) await n.start(taken)
  const ports = nodes.map((n) => n.port)
  const masters = ports.slice(0, 3)
  const replicas = ports.slice(3)
  const byPort = new Map(nodes.map((n) => [n.port, n]))
  const node = (port: number): Node => {
    const found = byPort.get(port)
    if (found === undefined) throw new Error(`no node of this cluster on port ${port}`)
    return found
  }
  const liveNodes = (): Node[] => nodes.filter((n) => !n.hasExited)
  const timeoutMs = options.timeoutMs ?? CLUSTER_TIMEOUT_MS

  // Slots and distinct config epochs on the masters, then every node meets the first.
  await Promise.all(masters.map(async (port, n) => {
    const admin = node(port).admin()
    const [from, to] = SLOT_RANGES[n] as [number, number]
    await admin.cluster('ADDSLOTSRANGE', from, to)
    await admin.cluster('SET-CONFIG-EPOCH', n + 1)
  }))
  const first = node(masters[0] as number).admin()
  for (const port of ports.slice(1)) await first.cluster('MEET', HOST, port)

  // Each replica follows its master, once gossip has told it about the master.
  const masterIds = await Promise.all(masters.map(async (port) => String(await node(port).admin().cluster('MYID'))))
  const deadline = performance.now() + timeoutMs
  await Promise.all(replicas.map(async (port, n) => {
    for (;;) {
      try {
        await node(port).admin().cluster('REPLICATE', masterIds[n] as string)
        return
      } catch (err) {
        if (performance.now() > deadline) throw new Error(`CLUSTER REPLICATE on ${port}: ${(err as Error).message}`)
        await sleep(100)
      }
    }
  }))

  /** What keeps the cluster from being ok, as the live nodes see it; '' when nothing does. */
  const problems = async (withReplicas: boolean): Promise<string> => {
    const found: string[] = []
    const views = await Promise.all(liveNodes().map(async (n) => {
      try {
        const admin = n.admin()
        const info = parseInfo(String(await admin.cluster('INFO')))
        if (info.cluster_state !== 'ok') found.push(`node ${n.port}: cluster_state:${info.cluster_state}`)
        const view = await nodesOf(admin)
        const serving = view.filter((v) => v.role === 'master' && v.slots.length > 0)
        const covered = serving.reduce((sum, v) => sum + v.slots.reduce((s, [a, b]) => s + b - a + 1, 0), 0)
        const failed = serving.filter((v) => v.flags.some((f) => /fail|handshake|noaddr/.test(f)) || !(byPort.get(v.port)?.hasExited === false))
        if (serving.length !== 3 || covered !== SLOTS || failed.length > 0) {
          found.push(`node ${n.port}: ${serving.length} masters serve ${covered} slots, ` +
            `failed or dead: ${failed.map((v) => `${v.port} ${v.flags.join(',')}`).join('; ') || 'none'}`)
        }
        return { port: n.port, owners: serving.map((v) => `${v.port}:${JSON.stringify(v.slots)}`).sort().join(' '), view }
      } catch (err) {
        found.push(`node ${n.port}: ${(err as Error).message}`)
        return undefined
      }
    }))
    const owners = new Set(views.map((v) => v?.owners))
    if (owners.size > 1) found.push(`the nodes disagree on the slots' masters: ${views.map((v) => `${v?.port}: ${v?.owners}`).join(' | ')}`)
    if (withReplicas && found.length === 0) {
      const view = views.find((v) => v !== undefined)?.view ?? []
      for (const master of view.filter((v) => v.role === 'master' && v.slots.length > 0)) {
        const replica = view.find((v) => v.role === 'replica' && v.masterId === master.id && v.connected && v.flags.length === 0)
        const replicaNode = replica === undefined ? undefined : byPort.get(replica.port)
        if (replicaNode === undefined || replicaNode.hasExited) {
          found.push(`master ${master.port} has no live replica`)
          continue
        }
        const info = parseInfo(await replicaNode.admin().info('replication').catch((err: Error) => err.message))
        if (info.role !== 'slave' || info.master_link_status !== 'up' || info.master_port !== String(master.port)) {
          found.push(`replica ${replicaNode.port} of ${master.port}: role ${info.role}, master_port ${info.master_port}, master_link_status ${info.master_link_status}`)
        }
      }
    }
    return found.join('\n')
  }

  const waitForClusterOk = async (waitOptions: WaitForClusterOkOptions = {}): Promise<void> => {
    const limit = performance.now() + (waitOptions.timeoutMs ?? CLUSTER_TIMEOUT_MS)
    for (;;) {
      const found = await problems(waitOptions.replicas === true)
      if (found === '') return
      if (performance.now() > limit) throw new Error(`Redis Cluster on ports ${ports.join(', ')} not ok:\n${found}`)
      await sleep(50)
    }
  }

  await waitForClusterOk({ replicas: true, timeoutMs: Math.max(1000, deadline - performance.now()) })

  const anyAdmin = (): Redis => {
    const n = liveNodes()[0]
    if (n === undefined) throw new Error('every node of the cluster is dead')
    return n.admin()
  }
  const startupNodes = ports.map((port) => ({ host: HOST, port }))
  const cluster = (clientOptions: ClusterOptions = {}): Cluster => {
    const client = new Cluster(startupNodes.map((n) => ({ ...n })), clientOptions)
    client.on('error', swallow)
    client.on('node error', swallow)
    clients.add(client)
    return client
  }

  return {
    ports,
    masters,
    replicas,
    nodes: startupNodes,
    cluster,
    readyCluster: async (clientOptions?: ClusterOptions) => {
      const client = cluster(clientOptions)
      // A Cluster is no Redis, but has the same status and events.
      await waitForReady(client as unknown as Redis, START_TIMEOUT_MS)
      return client
    },
    admin: (port) => node(port).admin(),
    alive: (port) => !node(port).hasExited,
    topology: async () => await nodesOf(anyAdmin()),
    masterOf: async (slot) => {
      const ranges = await anyAdmin().cluster('SLOTS')
      const range = ranges.find(([from, to]) => slot >= from && slot <= to)
      if (range?.[2] === undefined) throw new Error(`no master serves slot ${slot}`)
      return Number(range[2][1])
    },
    replicaOf: async (masterPort) => {
      const view = await nodesOf(anyAdmin())
      const master = view.find((v) => v.port === masterPort && v.role === 'master')
      return view.find((v) => v.role === 'replica' && v.masterId === master?.id && v.connected && v.flags.length === 0)?.port
    },
    kill: async (port) => { await node(port).kill() },
    suspend: (port) => { node(port).child?.kill('SIGSTOP') },
    resume: (port) => { node(port).child?.kill('SIGCONT') },
    failover: async (replicaPort, mode) => {
      const admin = node(replicaPort).admin()
      await (mode === undefined ? admin.call('CLUSTER', 'FAILOVER') : admin.call('CLUSTER', 'FAILOVER', mode))
      const limit = performance.now() + 10 * nodeTimeout + 5000
      while (parseInfo(await admin.info('replication')).role !== 'master') {
        if (performance.now() > limit) throw new Error(`node ${replicaPort} is not a master ${Math.round(10 * nodeTimeout + 5000)} ms after CLUSTER FAILOVER`)
        await sleep(20)
      }
    },
    waitForClusterOk
  }
}
