import { createHash } from 'node:crypto'
import { BUCKET_LENGTH, userBucket } from '../crypto.js'
import type { CommitResult, DeviceChange, PowStore, StoredDevice } from '../types.js'

export interface RedisStoreOptions {
  /** Key prefix. Default `pow`. */
  namespace?: string | undefined
  /** Milliseconds after which a command counts as failed (a 503). Default 2000. */
  commandTimeout?: number | undefined
  /**
   * Replicas that must acknowledge every write (Redis `WAIT`) before it counts as done; a write
   * they do not acknowledge within `replicaTimeout` fails (a sign-in answers 503, a renewal waits
   * for a later request). Default 0: a write is done when its master has it.
   */
  waitForReplicas?: number | undefined
  /** Milliseconds a write waits for `waitForReplicas`; at most half of `commandTimeout`. Default 100. */
  replicaTimeout?: number | undefined
}

interface Script {
  lua: string
  sha: string
  /** Write scripts take a deadline as their last argument. */
  write: boolean
}

function script (lua: string, write = false): Script {
  return { lua, sha: createHash('sha1').update(lua).digest('hex'), write }
}

/** Wall-clock time that fake clocks in tests (which replace Date) leave alone. */
function realNow (): number {
  return performance.timeOrigin + performance.now()
}

// The longest delay a Node.js timer takes (2^31 - 1 ms); longer ones fire after 1 ms.
const MAX_TIMER_MS = 2_147_483_647

// How often the offset between this process's clock and the server's is measured again.
const CLOCK_CHECK_INTERVAL = 60_000
// After a TIME that failed, how soon it is asked again.
const CLOCK_RETRY_INTERVAL = 5_000

// A bucket from a cookie names a key: anything but what userBucket() makes is no device.
const BUCKET_RE = new RegExp(`^[A-Za-z0-9_-]{${BUCKET_LENGTH}}$`)

// Every write script starts here. Its last argument is a deadline on the server's clock: a
// command that a stalled server runs after its caller gave up (and answered 503, keeping the
// browser's cookies) must not change what those cookies point at, so it does nothing.
const FENCE = `
if redis.replicate_commands then redis.replicate_commands() end
local fence = redis.call('TIME')
if tonumber(fence[1]) * 1000 + math.floor(tonumber(fence[2]) / 1000) > tonumber(ARGV[#ARGV]) then return -1 end
`

function writeScript (lua: string): Script {
  return script(FENCE + lua, true)
}

// Key layout, with P = `<namespace>:{<bucket>}:` and bucket = userBucket(userKey) (the hash tag
// keeps all of a user's keys in one Cluster slot, so that every script stays inside it):
//   P d:<fingerprint>  hash  data (the device record, JSON written by lib/lifecycle.ts, opaque
//                            here), user (a copy of the user's credentials, JSON, so that a
//                            read is one HMGET and no script), v (version: 1 when created,
//                            bumped by every write), u (the user key, for users()).
//                            PEXPIRE = the ttl of its last write.
//   P ud:<userKey>     zset  the user's fingerprints scored by usedAt, for list() and limits
//   P ux:<userKey>     zset  the same fingerprints scored by when each device expires (ms on
//                            the server's clock), so that a commit prunes the expired ones
//                            without a pass over all of them.
//                            Both keep a TTL at least as long as the longest device TTL written;
//                            a member whose device expired stays until a commit or list() meets it.
// Every device of a user holds the same credentials: a change of them is copied to all, and a
// new device copies them from the change or from a sibling. So one copy tells what all hold.
// TTLs are relative (PEXPIRE): the app's clock may be fake in tests, the server's is not.
// Scripts build the keys they discover (other devices of the user) from P, which carries the
// client's keyPrefix (ioredis adds it to KEYS only).

// KEYS: the user's index by use, by expiry, then the device of each write. ARGV: P, userKey, '1' when the change
// carries credentials, the credentials, the limit or '', then six for each write (fingerprint,
// version or '', 'set' or 'del', record, ttl, usedAt), the deadline last.
// The limit evicts by usedAt, lowest first, never a device the change writes. Every step costs
// the same whatever the number of the user's devices, but for a change of credentials.
// Returns {0} when a version did not hold (nothing written), else {1, evicted...}.
const COMMIT = writeScript(`
local P, index, expiry, userKey = ARGV[1], KEYS[1], KEYS[2], ARGV[2]
local n = #KEYS - 2
local now = tonumber(fence[1]) * 1000 + math.floor(tonumber(fence[2]) / 1000)
local versions = {}
local fresh = false
-- Every condition before any write: all or nothing.
for i = 1, n do
  local a = 5 + (i - 1) * 6
  local v = tonumber(redis.call('HGET', KEYS[i + 2], 'v') or '0')
  if ARGV[a + 2] ~= '' and tonumber(ARGV[a + 2]) ~= v then return {0} end
  versions[i] = v
  if v == 0 and ARGV[a + 3] == 'set' then fresh = true end
end

-- Expired devices leave the indexes first: only live ones hold credentials or count to a limit.
local expired = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
for i = 1, #expired do redis.call('ZREM', index, expired[i]) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now) end

-- The credentials the user's devices hold (all hold the same): those of the most recently used
-- live device, or false when none is left.
local function held ()
  local last = redis.call('ZRANGE', index, -1, -1)
  if not last[1] then return false end
  local copy = redis.call('HGET', P .. 'd:' .. last[1], 'user')
  if copy then return copy end
  local members = redis.call('ZRANGE', index, 0, -2)
  for i = #members, 1, -1 do
    copy = redis.call('HGET', P .. 'd:' .. members[i], 'user')
    if copy then return copy end
  end
  return false
end

local hasUser = ARGV[3] == '1'
local user = false
local spread = false
if hasUser then
  user = ARGV[4]
  -- Most changes that carry credentials (sign-ins) carry the ones already held: comparing one
  -- copy spares them a pass over every device.
  local copy = held()
  spread = copy ~= false and copy ~= user
elseif fresh then
  user = held()
  if not user then return redis.error_reply('RedisStore: a new device needs the user\\'s credentials (DeviceChange.user)') end
end

local longest, longestArg = 0, false
local written = {}
local writes = 0
for i = 1, n do
  local a = 5 + (i - 1) * 6
  local key, fp = KEYS[i + 2], ARGV[a + 1]
  if ARGV[a + 3] == 'del' then
    redis.call('DEL', key)
    redis.call('ZREM', index, fp)
    redis.call('ZREM', expiry, fp)
  else
    if hasUser or versions[i] == 0 then
      redis.call('HSET', key, 'data', ARGV[a + 4], 'u', userKey, 'user', user)
    else
      redis.call('HSET', key, 'data', ARGV[a + 4], 'u', userKey)
    end
    -- HINCRBY, not versions[i] + 1: a change may name a device twice.
    redis.call('HINCRBY', key, 'v', 1)
    redis.call('PEXPIRE', key, ARGV[a + 5])
    redis.call('ZADD', index, ARGV[a + 6], fp)
    redis.call('ZADD', expiry, now + tonumber(ARGV[a + 5]), fp)
    written[fp] = true
    writes = writes + 1
    local ttl = tonumber(ARGV[a + 5])
    if ttl > longest then longest, longestArg = ttl, ARGV[a + 5] end
  end
end

if spread then
  local members = redis.call('ZRANGE', index, 0, -1)
  for i = 1, #members do
    local key = P .. 'd:' .. members[i]
    if redis.call('EXISTS', key) == 1 then
      redis.call('HSET', key, 'user', user)
    else
      redis.call('ZREM', index, members[i])
      redis.call('ZREM', expiry, members[i])
    end
  end
end

local out = {1}
local limit = tonumber(ARGV[5])
if limit then
  -- The least recently used go, but for the devices this change writes, whatever their usedAt:
  -- it may tie, or come from an instance whose clock is behind.
  while redis.call('ZCARD', index) > limit do
    local lowest = redis.call('ZRANGE', index, 0, writes)
    local victim = false
    for i = 1, #lowest do
      if not written[lowest[i]] then
        victim = lowest[i]
        break
      end
    end
    if not victim then break end
    redis.call('ZREM', index, victim)
    redis.call('ZREM', expiry, victim)
    redis.call('DEL', P .. 'd:' .. victim)
    out[#out + 1] = victim
  end
end

if longestArg then
  if redis.call('PTTL', index) < longest then redis.call('PEXPIRE', index, longestArg) end
  if redis.call('PTTL', expiry) < longest then redis.call('PEXPIRE', expiry, longestArg) end
end
return out
`)

// KEYS: the user's index by use, by expiry. ARGV: P. Returns fingerprint, record, credentials and version of each
// live device, by usedAt. Its only write prunes members whose device expired, which is right
// whenever it runs: no deadline.
const LIST = script(`
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i = 1, #members do
  local d = redis.call('HMGET', ARGV[1] .. 'd:' .. members[i], 'data', 'user', 'v')
  if d[1] then
    out[#out + 1] = members[i]
    out[#out + 1] = d[1]
    out[#out + 1] = d[2]
    out[#out + 1] = d[3]
  else
    redis.call('ZREM', KEYS[1], members[i])
    redis.call('ZREM', KEYS[2], members[i])
  end
end
return out
`)

// Redis glob patterns treat these specially; a client's keyPrefix may contain them.
/** A device's HMGET answer (`data`, `user`, `v`) as the store interface gives it; null when it is not there. */
function storedDevice ([data, user, v]: Array<string | null>): StoredDevice | null {
  return data === null || user === null ? null : { data, user, version: Number(v) }
}

function globEscape (text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&')
}

/**
 * What the store uses of an ioredis client, a `Redis` or a `Cluster` (both fit): declared here so
 * that fastify-pow's types do not need ioredis installed.
 */
export interface RedisClient {
  readonly status: string
  on (event: string, listener: (...args: any[]) => void): unknown
  hmget (key: string, ...fields: string[]): Promise<Array<string | null>>
  scan (cursor: string, matchToken: 'MATCH', pattern: string, countToken: 'COUNT', count: number): Promise<[cursor: string, keys: string[]]>
  evalsha (sha: string, numKeys: number, ...args: Array<string | number>): Promise<unknown>
  eval (script: string, numKeys: number, ...args: Array<string | number>): Promise<unknown>
  time (): Promise<unknown[]>
  /** Used only with `waitForReplicas`: a write and its `WAIT` go to the user's master together. */
  pipeline?: (() => RedisPipeline) | undefined
  /** Used only with `waitForReplicas`: writes get connections of their own. */
  duplicate?: (() => RedisClient) | undefined
  disconnect?: (() => void) | undefined
}

/** The part of an ioredis pipeline that `waitForReplicas` uses. */
export interface RedisPipeline {
  evalsha (sha: string, numKeys: number, ...args: Array<string | number>): RedisPipeline
  eval (script: string, numKeys: number, ...args: Array<string | number>): RedisPipeline
  wait (replicas: number, timeout: number): RedisPipeline
  exec (): Promise<Array<[error: Error | null, result: unknown]> | null>
}

/** A `Cluster`: its master nodes are scanned one by one. */
interface ClusterClient extends RedisClient {
  readonly isCluster: true
  nodes (role: 'master'): RedisClient[]
}

type Client = RedisClient

/** A client and whether it has been ready once (until then, commands may wait for the first connection). */
interface Link {
  client: Client
  connected: boolean
}

/** A command in flight: when it times out, and how (undefined once it answered or timed out). */
interface Waiting {
  deadline: number
  reject: ((err: Error) => void) | undefined
}

/**
 * A `PowStore` on Redis or Redis Cluster through an ioredis client (for example `app.redis` of
 * @fastify/redis), which it never closes. Reading a device is one HMGET; every change is one
 * atomic Lua script inside the user's cluster slot.
 */
export class RedisStore implements PowStore {
  #client: Client
  #link: Link
  /**
   * Where writes go: the client, or with `waitForReplicas` a duplicate of it. A `WAIT` holds its
   * connection until the replicas answer; on a connection of its own it holds up only writes.
   */
  #writer: Link
  #ns: string
  #timeout: number
  #replicas: number
  #replicaTimeout: number
  /** The client's own `keyPrefix`: ioredis adds it to KEYS, the scripts add it to the keys they build. */
  #keyPrefix: string
  /** Server clock minus this process's clock, in ms; measured with TIME. */
  #clockOffset = 0
  #clockCheckedAt = -Infinity
  #lastError: Error | undefined
  /**
   * Commands in flight, oldest first (every command gets the same timeout, so deadlines come in
   * order), from `#head` on; one timer, set for the oldest deadline, times them out.
   */
  #waiting: Waiting[] = []
  #head = 0
  #timer: NodeJS.Timeout | undefined

  constructor (client: Client, options: RedisStoreOptions = {}) {
    const { namespace = 'pow', commandTimeout = 2000, waitForReplicas = 0, replicaTimeout = 100 } = options
    if (client === null || typeof client !== 'object' || typeof (client as RedisClient).evalsha !== 'function') {
      throw new TypeError('RedisStore needs an ioredis client (Redis or Cluster)')
    }
    if (typeof namespace !== 'string' || !/^[\w.:-]+$/.test(namespace)) {
      throw new TypeError('RedisStore: namespace must be letters, digits, "_", ".", ":" or "-"')
    }
    if (typeof commandTimeout !== 'number' || !Number.isFinite(commandTimeout) || commandTimeout <= 0 || commandTimeout > MAX_TIMER_MS) {
      throw new TypeError(`RedisStore: commandTimeout must be a positive number of milliseconds, at most ${MAX_TIMER_MS}`)
    }
    if (!Number.isInteger(waitForReplicas) || waitForReplicas < 0) {
      throw new TypeError('RedisStore: waitForReplicas must be a non-negative integer')
    }
    if (!Number.isInteger(replicaTimeout) || replicaTimeout < 1 || (waitForReplicas > 0 && replicaTimeout > commandTimeout / 2)) {
      throw new TypeError('RedisStore: replicaTimeout must be a whole number of milliseconds, at least 1 and at most half of commandTimeout')
    }
    if (waitForReplicas > 0 && (typeof client.pipeline !== 'function' || typeof client.duplicate !== 'function')) {
      throw new TypeError('RedisStore: waitForReplicas needs a client with pipeline() and duplicate() (ioredis)')
    }
    this.#client = client
    this.#ns = namespace
    this.#timeout = commandTimeout
    this.#replicas = waitForReplicas
    this.#replicaTimeout = replicaTimeout
    this.#keyPrefix = (client as { options?: { keyPrefix?: string } }).options?.keyPrefix ?? ''
    this.#link = this.#watch(client)
    this.#writer = waitForReplicas > 0 ? this.#watch((client.duplicate as () => Client)()) : this.#link
  }

  #watch (client: Client): Link {
    const link = { client, connected: client.status === 'ready' }
    client.on('ready', () => { link.connected = true })
    // Connection errors surface as 503s, logged once per outage by fastify-pow; this listener
    // keeps the latest for the error message, and keeps ioredis from printing every
    // reconnection failure as an unhandled 'error' event.
    client.on('error', (err: Error) => { this.#lastError = err })
    return link
  }

  /** Closes the connections the store opened itself (with `waitForReplicas`); never the client it was given. */
  async close (): Promise<void> {
    if (this.#writer !== this.#link) this.#writer.client.disconnect?.()
  }

  read (bucket: string, fingerprint: string): Promise<StoredDevice | null> {
    if (!BUCKET_RE.test(bucket)) return Promise.resolve(null)
    const key = `${this.#ns}:{${bucket}}:d:${fingerprint}`
    // Made into a device where the answer arrives: on every authenticated request, one promise
    // step fewer than an async function awaiting it.
    return this.#guard(this.#link, () => this.#client.hmget(key, 'data', 'user', 'v'), storedDevice)
  }

  async list (userKey: string): Promise<Array<StoredDevice & { fingerprint: string }>> {
    const prefix = this.#prefix(userKey)
    const flat = await this.#eval(LIST, [prefix + 'ud:' + userKey, prefix + 'ux:' + userKey], [prefix]) as string[]
    const devices: Array<StoredDevice & { fingerprint: string }> = []
    for (let i = 0; i < flat.length; i += 4) {
      devices.push({ fingerprint: flat[i], data: flat[i + 1], user: flat[i + 2], version: Number(flat[i + 3]) })
    }
    return devices
  }

  async commit (change: DeviceChange): Promise<CommitResult> {
    const { userKey, devices, user, limit } = change
    if (limit !== undefined && !(Number.isInteger(limit) && limit >= 0)) {
      throw new TypeError('RedisStore: DeviceChange.limit must be a non-negative integer')
    }
    const prefix = this.#prefix(userKey)
    const keys = [prefix + 'ud:' + userKey, prefix + 'ux:' + userKey]
    const args: Array<string | number> = [prefix, userKey, user === undefined ? '' : '1', user ?? '', limit ?? '']
    for (const { fingerprint, version, data, ttl, usedAt } of devices) {
      keys.push(prefix + 'd:' + fingerprint)
      if (data === null) {
        args.push(fingerprint, version ?? '', 'del', '', '', '')
        continue
      }
      // Checked here: a script that fails halfway through keeps what it wrote.
      if (typeof ttl !== 'number' || Number.isNaN(ttl) || !Number.isFinite(usedAt)) {
        throw new TypeError('RedisStore: a device write needs a ttl and a finite usedAt, in milliseconds')
      }
      args.push(fingerprint, version ?? '', 'set', data, Math.min(Math.max(1, Math.ceil(ttl)), Number.MAX_SAFE_INTEGER), usedAt)
    }
    const result = await this.#eval(COMMIT, keys, args) as [number, ...string[]]
    if (result[0] !== 1) return { ok: false, evicted: [] }
    return { ok: true, evicted: result.slice(1) as string[] }
  }

  async users (): Promise<string[]> {
    const client = this.#client
    const cluster = client as Partial<ClusterClient>
    const nodes: RedisClient[] = typeof cluster.nodes === 'function' && cluster.isCluster === true ? cluster.nodes('master') : [client]
    const pattern = `${globEscape(this.#keyPrefix + this.#ns)}:{${'?'.repeat(BUCKET_LENGTH)}}:d:*`
    // A user has a key per device: one answer per user key.
    const users = new Map<string, string>()
    for (const node of nodes) {
      let cursor = '0'
      do {
        const [next, keys] = await this.#guard(this.#link, () => node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000))
        cursor = next
        // Read through the top-level client: it adds its keyPrefix and routes each key to its node.
        const found = await Promise.all(keys.map(async (key) =>
          await this.#guard(this.#link, () => client.hmget(key.slice(this.#keyPrefix.length), 'u', 'user'))))
        for (const [userKey, user] of found) {
          if (userKey !== null && user !== null && !users.has(userKey)) users.set(userKey, user)
        }
      } while (cursor !== '0')
    }
    return [...users.values()]
  }

  /** P, the prefix of every key of the user's (without the client's keyPrefix). */
  #prefix (userKey: string): string {
    return `${this.#ns}:{${userBucket(userKey)}}:`
  }

  /** ARGV[1] of every script is P, the prefix the script builds further keys from. */
  async #eval (s: Script, keys: string[], args: Array<string | number>): Promise<unknown> {
    const link = s.write ? this.#writer : this.#link
    const client = link.client
    args[0] = this.#keyPrefix + String(args[0])
    if (s.write) args.push(await this.#deadline())
    if (s.write && this.#replicas > 0) return await this.#guard(link, async () => await this.#evalAndWait(s, keys, args))
    let result: unknown
    try {
      result = await this.#guard(link, () => client.evalsha(s.sha, keys.length, ...keys, ...args))
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err
      result = await this.#guard(link, () => client.eval(s.lua, keys.length, ...keys, ...args))
    }
    if (s.write && result === -1) throw new Error('Redis reached the command after its deadline; it did nothing')
    return result
  }

  /**
   * A write script and a `WAIT` for `waitForReplicas`, in one pipeline: it goes to the master of
   * the keys' slot (a `WAIT` names no key), and `WAIT` counts the writes of that connection.
   */
  async #evalAndWait (s: Script, keys: string[], args: Array<string | number>): Promise<unknown> {
    const writer = this.#writer.client as Client & { pipeline: () => RedisPipeline }
    let answers = await writer.pipeline().evalsha(s.sha, keys.length, ...keys, ...args).wait(this.#replicas, this.#replicaTimeout).exec()
    if (answers?.[0]?.[0]?.message.startsWith('NOSCRIPT') === true) {
      answers = await writer.pipeline().eval(s.lua, keys.length, ...keys, ...args).wait(this.#replicas, this.#replicaTimeout).exec()
    }
    const [[err, result] = [null, undefined], [waitErr, acknowledged] = [null, undefined]] = answers ?? []
    if (err !== null) throw err
    if (result === -1) throw new Error('Redis reached the command after its deadline; it did nothing')
    if (waitErr !== null) throw waitErr
    // A refused write (a version that did not hold) wrote nothing to wait for.
    if (Array.isArray(result) && result[0] === 1 && Number(acknowledged) < this.#replicas) {
      throw new Error(`Redis: ${Number(acknowledged)} of the ${this.#replicas} replicas asked for acknowledged a write within ${this.#replicaTimeout} ms (the master has it; a failover may lose it)`)
    }
    return result
  }

  /** When a write sent now must have run, on the server's clock; past it the script does nothing. */
  async #deadline (): Promise<number> {
    if (realNow() - this.#clockCheckedAt > CLOCK_CHECK_INTERVAL) {
      const before = realNow()
      try {
        const [seconds, micros] = await this.#guard(this.#link, () => this.#client.time())
        const after = realNow()
        this.#clockOffset = Number(seconds) * 1000 + Number(micros) / 1000 - (before + after) / 2
        this.#clockCheckedAt = after
      } catch (err) {
        // TIME names no key: a Cluster sends it to any node, maybe one that is down while the
        // user's shard is up. The last offset measured still holds (clocks drift slowly); TIME
        // is asked again a few seconds on, so that writes meanwhile do not each wait for it.
        if (this.#clockCheckedAt === -Infinity) throw err
        this.#clockCheckedAt = realNow() - CLOCK_CHECK_INTERVAL + CLOCK_RETRY_INTERVAL
      }
    }
    // A margin, so that a script running just before the deadline still answers before the
    // client gives up.
    // With waitForReplicas, the WAIT after the script must fit before the client gives up too.
    const wait = this.#replicas > 0 ? this.#replicaTimeout : 0
    return Math.floor(realNow() + this.#clockOffset + this.#timeout - wait - Math.min(100, this.#timeout / 4))
  }

  /**
   * Fails fast while the client is not connected (no command waits in ioredis' offline queue to
   * run long after its request was answered) and bounds every command by `commandTimeout`.
   * `answer` turns the command's answer into what the promise resolves with.
   */
  #guard<T, R = T> (link: Link, send: () => Promise<T>, answer: (value: T) => R = (value) => value as unknown as R): Promise<R> {
    const status = link.client.status
    if (status !== 'ready' && status !== 'wait' && (link.connected || (status !== 'connecting' && status !== 'connect'))) {
      const cause = this.#lastError === undefined ? '' : `: ${this.#lastError.message}`
      return Promise.reject(new Error(`Redis connection is ${status}${cause}`))
    }
    let command: Promise<T>
    try {
      command = send()
    } catch (err) {
      return Promise.reject(err)
    }
    return new Promise<R>((resolve, reject) => {
      const waiting: Waiting = { deadline: performance.now() + this.#timeout, reject }
      this.#waiting.push(waiting)
      if (this.#timer === undefined) this.#arm(this.#timeout)
      command.then((value) => {
        waiting.reject = undefined
        this.#drain()
        try {
          resolve(answer(value))
        } catch (err) {
          reject(err)
        }
      }, (err: unknown) => {
        waiting.reject = undefined
        this.#drain()
        reject(err)
      })
    })
  }

  /** Drops the answered commands at the head of the queue. */
  #drain (): void {
    const waiting = this.#waiting
    let head = this.#head
    while (head < waiting.length && waiting[head].reject === undefined) head++
    if (head === waiting.length) {
      waiting.length = 0
      head = 0
    } else if (head > 1024 && head * 2 > waiting.length) {
      waiting.splice(0, head)
      head = 0
    }
    this.#head = head
  }

  #arm (ms: number): void {
    // Unreferenced: a command in flight keeps the process alive through its connection anyway.
    this.#timer = setTimeout(() => this.#expire(), Math.max(1, Math.ceil(ms)))
    this.#timer.unref()
  }

  /** The timer: fails the commands past their deadline and waits for the next deadline. */
  #expire (): void {
    this.#timer = undefined
    const now = performance.now()
    const waiting = this.#waiting
    for (let i = this.#head; i < waiting.length && waiting[i].deadline <= now; i++) {
      const { reject } = waiting[i]
      waiting[i].reject = undefined
      reject?.(new Error(`Redis command timed out after ${this.#timeout} ms`))
    }
    this.#drain()
    if (this.#head < waiting.length) this.#arm(waiting[this.#head].deadline - now)
  }
}
