import { createHash, randomBytes } from 'node:crypto'
import type { Cluster, Redis } from 'ioredis'
import { BUCKET_LENGTH, userBucket } from '../crypto.js'
import { ParsedRecords } from '../parsed.js'
import {
  AGAIN_MAX, type ListedSession, type PowStore, type PutConditions, type RevokeSelector, type SessionRecord, type StoredSession,
  type TokenRecord, type TokenRotation
} from '../types.js'

export interface RedisStoreOptions {
  /** Key prefix. Default `pow`. */
  namespace?: string
  /** Milliseconds after which a command counts as failed (a 503). Default 2000. */
  commandTimeout?: number
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

// Key layout, with P = `<namespace>:{<bucket>}:` (the hash tag keeps one user's keys in one slot):
//   P s:<sid>     hash  r (record JSON), user (the user's credentials, JSON, a copy kept in step
//                       with P u:<userKey>), u (user key), f (fingerprint), x ('1' once retired),
//                       n (when it was retired, ms, while the session that replaced it was never
//                       read), sup ('1': a replacement replaced before it was ever read), p ('1'
//                       on a replacement until its first read), c (the grace, when its first read
//                       cuts retired sessions to it),
//                       pt (the token whose rotation stored it, until first read),
//                       m (the marks x, n, p and sup in one field for the read: "" when none,
//                       else "<x>,<n>,<p>,<sup>"; a session without it predates the field)
//   P u:<userKey> string  the user's credentials (JSON); TTL = the user's last session expiry
//   P us:<userKey> zset  session ids scored by expiry (ms)
//   P t:<tid>     hash  r (token JSON), user (JSON), u, f, used (ms, once used), n and nt (the
//                       session and token its rotation stored, until either is first used),
//                       pt (the token whose rotation stored it), sup (rotated again past it)
//   P ut:<userKey> zset  token ids scored by expiry (ms)
//   P rv:<nonce>  string  a revocation's answer, kept 2 × commandTimeout for a command sent again
//   <namespace>:lock:<key>   string, SET NX PX
//
// Replacements are claimed on first use. A renewal or a remember-me rotation retires the older
// sessions of the fingerprint but leaves them their TTL, "unclaimed", until the new session is
// first read: the answer that carried it may never have reached the browser (a 503 after Redis
// ran the write, a dropped connection), and the browser still holding the old cookie must not
// be signed out. The first read cuts them to the grace. A replacement that is replaced again
// before it was ever read is "superseded": whoever presents it later had a copy of a cookie
// someone else moved on from, and fastify-pow treats that as theft. Tokens likewise: a used token stays
// unclaimed until its new session or token is used, and may rotate again meanwhile, superseding
// the earlier new token.
// Scripts reach keys they cannot know in advance (a session's user, other sessions in the list)
// only under the same P, so every script stays inside one cluster slot.

// Shared by the scripts that read, store and delete sessions. All keys are built from P, so they
// carry the client's keyPrefix and stay in the user's slot.
const CLAIM_FUNCTION = `
-- Writes the marks x, n, p and sup of session k into its field m, which a read fetches alone.
local function remark (k)
  local f = redis.call('HMGET', k, 'x', 'n', 'p', 'sup')
  if f[1] or f[2] or f[3] or f[4] then
    redis.call('HSET', k, 'm', (f[1] or '') .. ',' .. (f[2] or '') .. ',' .. (f[3] or '') .. ',' .. (f[4] or ''))
  else
    redis.call('HSET', k, 'm', '')
  end
end

-- Claims a replacement: the sessions it retired live out the grace from now on, and the rotation
-- that stored it is claimed. Done by its first read, or by a write that cannot wait for that.
local function claim (P, skey, now)
  local v = redis.call('HMGET', skey, 'u', 'p', 'c', 'pt', 'f', 'sup')
  if not v[2] or v[6] then return end
  redis.call('HDEL', skey, 'p', 'c', 'pt')
  remark(skey)
  if v[3] then
    local grace = tonumber(v[3])
    local list = P .. 'us:' .. v[1]
    local members = redis.call('ZRANGE', list, 0, -1)
    for i = 1, #members do
      local k = P .. 's:' .. members[i]
      if k ~= skey then
        local o = redis.call('HMGET', k, 'f', 'n')
        if o[1] == v[5] and o[2] then
          redis.call('HDEL', k, 'n')
          remark(k)
          local left = redis.call('PTTL', k)
          if left < 0 or left > grace then
            redis.call('PEXPIRE', k, grace)
            redis.call('ZADD', list, tonumber(now) + grace, members[i])
          end
        end
      end
    end
  end
  if v[4] then redis.call('HDEL', P .. 't:' .. v[4], 'n', 'nt') end
end
`

// Shared by the scripts that store sessions and tokens.
const PUT_FUNCTIONS = CLAIM_FUNCTION + `
-- How often an unclaimed session renews, or an unclaimed token rotates, again (see AGAIN_MAX).
local AGAIN_MAX = ${AGAIN_MAX}

local function keep_until (list, now)
  local last = redis.call('ZRANGE', list, -1, -1, 'WITHSCORES')
  return math.max(1, tonumber(last[2]) - now)
end

-- A session: retires the user's other live sessions of the same fingerprint (they keep their
-- TTL, unclaimed, until this one is first read) and supersedes those never read; stores this
-- one, and the user's credentials unless keepUser is set and some are stored (new credentials
-- go to the copy in every session of the user). prevToken: the token whose rotation stores it.
local function put_session (P, sid, record, userKey, fp, user, keepUser, ttl, expiresAt, grace, now, prevToken)
  local skey = P .. 's:' .. sid
  local ckey = P .. 'u:' .. userKey
  local list = P .. 'us:' .. userKey
  local copyUser = user and not keepUser
  local current = user
  if copyUser then
    redis.call('SET', ckey, user)
  else
    if user then redis.call('SET', ckey, user, 'NX') end
    current = redis.call('GET', ckey)
  end
  redis.call('ZREMRANGEBYSCORE', list, '-inf', now)
  local members = redis.call('ZRANGE', list, 0, -1)
  local claims = false
  for i = 1, #members do
    local m = members[i]
    if m ~= sid then
      local k = P .. 's:' .. m
      local o = redis.call('HMGET', k, 'f', 'x', 'p', 'n')
      if copyUser and o[1] then redis.call('HSET', k, 'user', current) end
      if o[1] == fp then
        if o[3] then
          redis.call('HDEL', k, 'p', 'c', 'pt', 'n')
          redis.call('HSET', k, 'x', '1', 'sup', '1')
          remark(k)
        elseif not o[2] then
          redis.call('HSET', k, 'x', '1', 'n', now)
          remark(k)
          claims = true
        elseif o[4] then
          claims = true
        end
      end
    end
  end
  redis.call('DEL', skey)
  redis.call('HSET', skey, 'r', record, 'u', userKey, 'f', fp)
  if current then redis.call('HSET', skey, 'user', current) end
  -- A replacement (of sessions, or from a rotation) is unread until its first read claims it.
  if claims or prevToken then redis.call('HSET', skey, 'p', '1') end
  if claims then redis.call('HSET', skey, 'c', grace) end
  if prevToken then redis.call('HSET', skey, 'pt', prevToken) end
  remark(skey)
  redis.call('PEXPIRE', skey, ttl)
  redis.call('ZADD', list, expiresAt, sid)
  local keep = keep_until(list, tonumber(now))
  redis.call('PEXPIRE', list, keep)
  redis.call('PEXPIRE', ckey, keep)
end

-- A token, indexed under its user. prevToken: the token whose rotation stores it.
local function put_token (P, tid, record, user, userKey, fp, ttl, expiresAt, now, prevToken)
  local tkey = P .. 't:' .. tid
  local list = P .. 'ut:' .. userKey
  redis.call('DEL', tkey)
  redis.call('HSET', tkey, 'r', record, 'user', user, 'u', userKey, 'f', fp)
  if prevToken then redis.call('HSET', tkey, 'pt', prevToken) end
  redis.call('PEXPIRE', tkey, ttl)
  redis.call('ZREMRANGEBYSCORE', list, '-inf', now)
  redis.call('ZADD', list, expiresAt, tid)
  redis.call('PEXPIRE', list, keep_until(list, tonumber(now)))
end
`

// Reading a session is one HMGET (the record and a copy of the user's credentials live in the
// session's hash). The first read of a replacement also sends this, without waiting for it (a
// later read or write does it if it is lost): KEYS: session. ARGV: P, now.
const CLAIM_SESSION = script(CLAIM_FUNCTION + `
claim(ARGV[1], KEYS[1], ARGV[2])
return 1
`)

// KEYS: session. ARGV: P, sid, record, userKey, fingerprint, user or '' (none), ttl, expiresAt,
// grace, now, id of a session that must still exist or ''. A condition session that is retired
// (renewed again: its first renewal's answer was lost) may be renewed again AGAIN_MAX times.
const PUT_SESSION = writeScript(PUT_FUNCTIONS + `
if ARGV[11] ~= '' then
  local ck = ARGV[1] .. 's:' .. ARGV[11]
  local c = redis.call('HMGET', ck, 'u', 'x', 'ag', 'p')
  if not c[1] then return 0 end
  -- It was read (it is being renewed); its claim, sent without waiting, has not landed yet.
  if c[4] then claim(ARGV[1], ck, ARGV[10]) end
  if c[2] then
    if tonumber(c[3] or '0') >= AGAIN_MAX then return 0 end
    redis.call('HINCRBY', ck, 'ag', 1)
  end
end
local user = false
if ARGV[6] ~= '' then user = ARGV[6] end
put_session(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], user, false, ARGV[7], ARGV[8], ARGV[9], ARGV[10], false)
return 1
`)

// KEYS: session. ARGV: P, sid, now. An unread replacement is claimed first, so that the
// sessions it retired do not outlive it.
const DELETE_SESSION = writeScript(CLAIM_FUNCTION + `
local u = redis.call('HGET', KEYS[1], 'u')
if not u then return 0 end
claim(ARGV[1], KEYS[1], ARGV[3])
redis.call('DEL', KEYS[1])
local list = ARGV[1] .. 'us:' .. u
redis.call('ZREM', list, ARGV[2])
redis.call('ZREMRANGEBYSCORE', list, '-inf', ARGV[3])
if redis.call('ZCARD', list) == 0 then redis.call('DEL', list, ARGV[1] .. 'u:' .. u) end
return 1
`)

// KEYS: session list. ARGV: P, now. Returns sid, record, expiresAt triples.
const LIST_SESSIONS = script(`
local m = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'WITHSCORES')
local out = {}
for i = 1, #m, 2 do
  local v = redis.call('HMGET', ARGV[1] .. 's:' .. m[i], 'r', 'x')
  if v[1] and not v[2] then
    out[#out + 1] = m[i]
    out[#out + 1] = v[1]
    out[#out + 1] = m[i + 1]
  end
end
return out
`)

// KEYS: credentials, token list, session list. ARGV: P, user, now.
const UPDATE_USER = writeScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  local s = redis.call('ZRANGE', KEYS[3], 0, -1)
  for i = 1, #s do
    local k = ARGV[1] .. 's:' .. s[i]
    if redis.call('EXISTS', k) == 1 then redis.call('HSET', k, 'user', ARGV[2]) end
  end
end
local m = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[3], '+inf')
for i = 1, #m do
  local k = ARGV[1] .. 't:' .. m[i]
  if redis.call('EXISTS', k) == 1 then redis.call('HSET', k, 'user', ARGV[2]) end
end
return 1
`)

// KEYS: session list, token list, credentials, answer. ARGV: P, 'only' | 'except', fingerprint,
// how long to keep the answer (ms). The answer is kept under a nonce of the call for twice the
// commandTimeout: ioredis sends a command again after a dropped connection, and a second run
// must answer what the first did, not "nothing" (later than that, its caller has given up).
const REVOKE = script(`
local done = redis.call('GET', KEYS[4])
if done then return cjson.decode(done) end
` + FENCE + `
local out = {}
local seen = {}
local function sweep (list, kind)
  local m = redis.call('ZRANGE', list, 0, -1)
  for i = 1, #m do
    local k = ARGV[1] .. kind .. m[i]
    local f = redis.call('HGET', k, 'f')
    if not f then
      redis.call('ZREM', list, m[i])
    elseif (ARGV[2] == 'only') == (f == ARGV[3]) then
      redis.call('DEL', k)
      redis.call('ZREM', list, m[i])
      if not seen[f] then
        seen[f] = true
        out[#out + 1] = f
      end
    end
  end
end
sweep(KEYS[1], 's:')
sweep(KEYS[2], 't:')
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[3]) end
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[2]) end
if #out > 0 then redis.call('SET', KEYS[4], cjson.encode(out), 'PX', ARGV[4]) end
return out
`, true)

// KEYS: token. ARGV: P, tid, record, user, userKey, fingerprint, ttl, expiresAt, now, id of a
// session that must still exist or ''.
const PUT_TOKEN = writeScript(PUT_FUNCTIONS + `
if ARGV[10] ~= '' and redis.call('EXISTS', ARGV[1] .. 's:' .. ARGV[10]) == 0 then return 0 end
put_token(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return 1
`)

// KEYS: token. ARGV: P. Returns record, user, usedAt or '', '1' if unclaimed, '1' if
// superseded, how often it rotated again.
const GET_TOKEN = script(`
local v = redis.call('HMGET', KEYS[1], 'r', 'user', 'used', 'n', 'sup', 'ag')
if not v[1] then return false end
local unclaimed = ''
if v[3] and v[4] then unclaimed = '1' end
local sup = ''
if v[5] then sup = '1' end
return {v[1], v[2], v[3] or '', unclaimed, sup, v[6] or '0'}
`)

// KEYS: token. ARGV: P, now, new sid, session record, session ttl, session expiresAt, grace,
// new tid, token record, token ttl, token expiresAt, this token's id, '1' to rotate again.
// Uses an unused token once: marks it used, stores the new session and the new token. The same
// rotation sent again (same new ids) writes the same again. With "again", a used token whose
// rotation was never claimed, used longer ago than the grace, rotates to new ids; the earlier
// new session and token are superseded.
const ROTATE_TOKEN = writeScript(PUT_FUNCTIONS + `
local v = redis.call('HMGET', KEYS[1], 'user', 'used', 'u', 'f', 'n', 'pt', 'sup', 'nt', 'ag')
if not v[1] then return 'missing' end
if v[7] then return 'used' end
local used = ARGV[2]
if v[2] then
  if v[5] == ARGV[3] then
    used = v[2]
  elseif not (v[5] and ARGV[13] == '1' and tonumber(v[9] or '0') < AGAIN_MAX and tonumber(ARGV[2]) - tonumber(v[2]) > tonumber(ARGV[7])) then
    return 'used'
  else
    redis.call('HINCRBY', KEYS[1], 'ag', 1)
    if v[8] then
      local k = ARGV[1] .. 't:' .. v[8]
      if redis.call('EXISTS', k) == 1 then redis.call('HSET', k, 'sup', '1') end
    end
  end
end
redis.call('HSET', KEYS[1], 'used', used, 'n', ARGV[3], 'nt', ARGV[8])
-- This token was the new token of an earlier rotation: that rotation is claimed.
if v[6] then
  redis.call('HDEL', ARGV[1] .. 't:' .. v[6], 'n', 'nt')
  redis.call('HDEL', KEYS[1], 'pt')
end
put_session(ARGV[1], ARGV[3], ARGV[4], v[3], v[4], v[1], true, ARGV[5], ARGV[6], ARGV[7], ARGV[2], ARGV[12])
local user = redis.call('GET', ARGV[1] .. 'u:' .. v[3]) or v[1]
put_token(ARGV[1], ARGV[8], ARGV[9], user, v[3], v[4], ARGV[10], ARGV[11], ARGV[2], ARGV[12])
return 'rotated'
`)

// KEYS: token. ARGV: P, tid, ttl, expiresAt.
const TOUCH_TOKEN = writeScript(`
local v = redis.call('HMGET', KEYS[1], 'u', 'used')
if not v[1] or v[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local list = ARGV[1] .. 'ut:' .. v[1]
redis.call('ZADD', list, ARGV[4], ARGV[2])
if redis.call('PTTL', list) < tonumber(ARGV[3]) then redis.call('PEXPIRE', list, ARGV[3]) end
return 1
`)

// KEYS: token. ARGV: P, tid.
const DELETE_TOKEN = writeScript(`
local u = redis.call('HGET', KEYS[1], 'u')
if not u then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[1] .. 'ut:' .. u, ARGV[2])
return 1
`)

type Client = Redis | Cluster

/** A session's marks field when it has none: retired, unclaimed since, unread, superseded all unset. */
const NO_MARKS: readonly string[] = ['', '', '', '']

/** A command in flight: when it times out, and how (undefined once it answered or timed out). */
interface Waiting {
  deadline: number
  reject: ((err: Error) => void) | undefined
}

/**
 * A `PowStore` on Redis or Redis Cluster through an ioredis client (for example `app.redis` of
 * @fastify/redis), which it never closes. Every change is one atomic Lua script inside one
 * cluster slot; reading a session and its user is one HMGET.
 */
export class RedisStore implements PowStore {
  #client: Client
  #ns: string
  #timeout: number
  /** The client's own `keyPrefix`: ioredis adds it to KEYS, the scripts add it to the keys they build. */
  #keyPrefix: string
  /** Server clock minus this process's clock, in ms; measured with TIME. */
  #clockOffset = 0
  #clockCheckedAt = -Infinity
  /** Until the client is first ready, commands may wait for the initial connection. */
  #connected = false
  #lastError: Error | undefined
  /**
   * Commands in flight, oldest first (every command gets the same timeout, so deadlines come in
   * order), from `#head` on; one timer, set for the oldest deadline, times them out.
   */
  #waiting: Waiting[] = []
  #head = 0
  #timer: NodeJS.Timeout | undefined
  /** Session records read lately, parsed. */
  #parsed = new ParsedRecords()

  constructor (client: Client, options: RedisStoreOptions = {}) {
    const { namespace = 'pow', commandTimeout = 2000 } = options
    if (client === null || typeof client !== 'object' || typeof (client as Redis).evalsha !== 'function') {
      throw new TypeError('RedisStore needs an ioredis client (Redis or Cluster)')
    }
    if (typeof namespace !== 'string' || !/^[\w.:-]+$/.test(namespace)) {
      throw new TypeError('RedisStore: namespace must be letters, digits, "_", ".", ":" or "-"')
    }
    if (typeof commandTimeout !== 'number' || !Number.isFinite(commandTimeout) || commandTimeout <= 0 || commandTimeout > MAX_TIMER_MS) {
      throw new TypeError(`RedisStore: commandTimeout must be a positive number of milliseconds, at most ${MAX_TIMER_MS}`)
    }
    this.#client = client
    this.#ns = namespace
    this.#timeout = commandTimeout
    this.#keyPrefix = (client as { options?: { keyPrefix?: string } }).options?.keyPrefix ?? ''
    this.#connected = client.status === 'ready'
    client.on('ready', () => { this.#connected = true })
    // Connection errors surface as 503s, logged once per outage by fastify-pow; this listener
    // keeps the latest for the error message, and keeps ioredis from printing every
    // reconnection failure as an unhandled 'error' event.
    client.on('error', (err: Error) => { this.#lastError = err })
  }

  async putSession (
    sidHash: string, record: SessionRecord, user: unknown, ttl: number, grace: number, conditions: PutConditions = {}
  ): Promise<boolean> {
    const now = Date.now()
    const prefix = this.#userPrefix(record.userKey, sidHash)
    return await this.#eval(PUT_SESSION, [prefix + 's:' + this.#id(sidHash)], [
      prefix, this.#id(sidHash), JSON.stringify(record), record.userKey, record.fingerprint,
      user === undefined ? '' : JSON.stringify(user), ...this.#times(ttl, now), Math.ceil(grace), now,
      this.#condition(record.userKey, conditions)
    ]) === 1
  }

  async getSession (sidHash: string): Promise<StoredSession | null> {
    const prefix = this.#hashPrefix(sidHash)
    const key = prefix + 's:' + this.#id(sidHash)
    const [json, copy, marks] = await this.#guard(() => this.#client.hmget(key, 'r', 'user', 'm'))
    if (json === null) return null
    // The marks as remark() writes them, '' for each one unset; a session stored before the marks
    // had a field of their own reads them from theirs.
    const [retired = '', unclaimedSince = '', unread = '', superseded = ''] = marks === ''
      ? NO_MARKS
      : marks !== null
        ? marks.split(',')
        : (await this.#guard(() => this.#client.hmget(key, 'x', 'n', 'p', 'sup'))).map((mark) => mark ?? '')
    const record = this.#parsed.get(json)
    // A session stored before sessions carried a copy of the credentials reads them from the user's key.
    const user = copy ?? await this.#guard(() => this.#client.get(prefix + 'u:' + record.userKey))
    if (user === null) return null
    if (unread !== '') {
      // The first read claims the session; not waited for, and done again by a later read if lost.
      // EVAL, not EVALSHA: a NOSCRIPT answer would let the commands sent after it overtake it.
      this.#guard(() => this.#client.eval(CLAIM_SESSION.lua, 1, key, this.#keyPrefix + prefix, Date.now())).catch(() => {})
    }
    const stored: StoredSession = { record, user: JSON.parse(user), retired: retired === '1' }
    if (unclaimedSince !== '') stored.unclaimedSince = Number(unclaimedSince)
    if (superseded !== '') stored.superseded = true
    return stored
  }

  async deleteSession (sidHash: string): Promise<boolean> {
    const prefix = this.#hashPrefix(sidHash)
    const id = this.#id(sidHash)
    return await this.#eval(DELETE_SESSION, [prefix + 's:' + id], [prefix, id, Date.now()]) === 1
  }

  async listSessions (userKey: string): Promise<ListedSession[]> {
    const prefix = this.#userPrefix(userKey)
    const flat = await this.#eval(LIST_SESSIONS, [prefix + 'us:' + userKey], [prefix, Date.now()]) as string[]
    const bucket = userBucket(userKey)
    const list: ListedSession[] = []
    for (let i = 0; i < flat.length; i += 3) {
      list.push({ sidHash: `${bucket}.${flat[i]}`, record: JSON.parse(flat[i + 1]), expiresAt: Number(flat[i + 2]) })
    }
    return list
  }

  async listUsers (): Promise<unknown[]> {
    const client = this.#client
    const nodes: Redis[] = 'nodes' in client && typeof (client as Cluster).nodes === 'function' && (client as Cluster).isCluster
      ? (client as Cluster).nodes('master')
      : [client as Redis]
    const pattern = `${this.#keyPrefix}${this.#ns}:{${'?'.repeat(BUCKET_LENGTH)}}:u:*`
    const users: unknown[] = []
    for (const node of nodes) {
      let cursor = '0'
      do {
        const [next, keys] = await this.#guard(() => node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000))
        cursor = next
        // Read through the top-level client: it adds its keyPrefix and routes each key to its node.
        const values = await Promise.all(keys.map(async (key) => await this.#guard(() => client.get(key.slice(this.#keyPrefix.length)))))
        for (const value of values) if (typeof value === 'string') users.push(JSON.parse(value))
      } while (cursor !== '0')
    }
    return users
  }

  async updateUser (userKey: string, user: unknown): Promise<void> {
    const prefix = this.#userPrefix(userKey)
    await this.#eval(UPDATE_USER, [prefix + 'u:' + userKey, prefix + 'ut:' + userKey, prefix + 'us:' + userKey], [prefix, JSON.stringify(user), Date.now()])
  }

  async revoke (userKey: string, selector: RevokeSelector): Promise<string[]> {
    const prefix = this.#userPrefix(userKey)
    const [mode, fingerprint] = 'fingerprint' in selector ? ['only', selector.fingerprint] : ['except', selector.except ?? '']
    const nonce = prefix + 'rv:' + randomBytes(12).toString('base64url')
    return await this.#eval(REVOKE, [prefix + 'us:' + userKey, prefix + 'ut:' + userKey, prefix + 'u:' + userKey, nonce], [
      prefix, mode, fingerprint, 2 * this.#timeout
    ]) as string[]
  }

  async putToken (tokenHash: string, record: TokenRecord, ttl: number, conditions: PutConditions = {}): Promise<boolean> {
    const now = Date.now()
    const prefix = this.#userPrefix(record.userKey, tokenHash)
    const { user, usedAt, ...rest } = record
    return await this.#eval(PUT_TOKEN, [prefix + 't:' + this.#id(tokenHash)], [
      prefix, this.#id(tokenHash), JSON.stringify(rest), JSON.stringify(user), record.userKey, record.fingerprint,
      ...this.#times(ttl, now), now, this.#condition(record.userKey, conditions)
    ]) === 1
  }

  async getToken (tokenHash: string): Promise<TokenRecord | null> {
    const prefix = this.#hashPrefix(tokenHash)
    const found = await this.#eval(GET_TOKEN, [prefix + 't:' + this.#id(tokenHash)], [prefix]) as [string, string, string, string, string, string] | null
    if (found === null) return null
    const record: TokenRecord = { ...JSON.parse(found[0]), user: JSON.parse(found[1]) }
    if (found[2] !== '') record.usedAt = Number(found[2])
    if (found[3] === '1') record.unclaimed = true
    if (found[4] === '1') record.superseded = true
    if (found[5] !== '0') record.rotatedAgain = Number(found[5])
    return record
  }

  async rotateToken (tokenHash: string, now: number, rotation: TokenRotation): Promise<'rotated' | 'used' | 'missing'> {
    const prefix = this.#hashPrefix(tokenHash)
    const { session } = rotation
    this.#userPrefix(session.userKey, tokenHash)
    this.#userPrefix(session.userKey, rotation.sidHash)
    this.#userPrefix(session.userKey, rotation.tokenHash)
    const tokenRecord = { userKey: session.userKey, fingerprint: session.fingerprint, metadata: session.metadata }
    return await this.#eval(ROTATE_TOKEN, [prefix + 't:' + this.#id(tokenHash)], [
      prefix, now,
      this.#id(rotation.sidHash), JSON.stringify(session), ...this.#times(rotation.sessionTtl, now), Math.ceil(rotation.grace),
      this.#id(rotation.tokenHash), JSON.stringify(tokenRecord), ...this.#times(rotation.tokenTtl, now), this.#id(tokenHash),
      rotation.again === true ? '1' : ''
    ]) as 'rotated' | 'used' | 'missing'
  }

  async touchToken (tokenHash: string, ttl: number): Promise<void> {
    const prefix = this.#hashPrefix(tokenHash)
    const id = this.#id(tokenHash)
    await this.#eval(TOUCH_TOKEN, [prefix + 't:' + id], [prefix, id, Math.ceil(ttl), Date.now() + Math.ceil(ttl)])
  }

  async deleteToken (tokenHash: string): Promise<void> {
    const prefix = this.#hashPrefix(tokenHash)
    const id = this.#id(tokenHash)
    await this.#eval(DELETE_TOKEN, [prefix + 't:' + id], [prefix, id])
  }

  async lock (key: string, ttl: number): Promise<boolean> {
    return await this.#guard(() => this.#client.set(`${this.#ns}:lock:${key}`, '1', 'PX', Math.ceil(ttl), 'NX')) === 'OK'
  }

  /** The id of the session a write requires, or ''; it is the same user's, so in the same slot. */
  #condition (userKey: string, conditions: PutConditions): string {
    if (conditions.session === undefined) return ''
    this.#userPrefix(userKey, conditions.session)
    return this.#id(conditions.session)
  }

  /** A duration and the time it ends, as script arguments. */
  #times (ms: number, now: number): [number, number] {
    return [Math.ceil(ms), now + Math.ceil(ms)]
  }

  /** The user's key prefix; with `hash`, that hash must carry the user's bucket. */
  #userPrefix (userKey: string, hash?: string): string {
    const bucket = userBucket(userKey)
    if (hash !== undefined && !hash.startsWith(bucket + '.')) {
      throw new TypeError('RedisStore: a session or token hash must start with its user\'s bucket (userBucket(userKey))')
    }
    return `${this.#ns}:{${bucket}}:`
  }

  /** Hashes are `<bucket>.<sha256>`; the bucket is the user's hash tag. */
  #hashPrefix (hash: string): string {
    return `${this.#ns}:{${hash.slice(0, BUCKET_LENGTH)}}:`
  }

  #id (hash: string): string {
    return hash.slice(BUCKET_LENGTH + 1)
  }

  /** ARGV[1] of every script is P, the prefix the script builds further keys from. */
  async #eval (s: Script, keys: string[], args: Array<string | number>): Promise<unknown> {
    const client = this.#client
    args[0] = this.#keyPrefix + String(args[0])
    if (s.write) args.push(await this.#deadline())
    let result: unknown
    try {
      result = await this.#guard(() => client.evalsha(s.sha, keys.length, ...keys, ...args))
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err
      result = await this.#guard(() => client.eval(s.lua, keys.length, ...keys, ...args))
    }
    if (s.write && result === -1) throw new Error('Redis reached the command after its deadline; it did nothing')
    return result
  }

  /** When a write sent now must have run, on the server's clock; past it the script does nothing. */
  async #deadline (): Promise<number> {
    if (realNow() - this.#clockCheckedAt > CLOCK_CHECK_INTERVAL) {
      const before = realNow()
      const [seconds, micros] = await this.#guard(() => this.#client.time())
      const after = realNow()
      this.#clockOffset = Number(seconds) * 1000 + Number(micros) / 1000 - (before + after) / 2
      this.#clockCheckedAt = after
    }
    // A margin, so that a script running just before the deadline still answers before the
    // client gives up.
    return Math.floor(realNow() + this.#clockOffset + this.#timeout - Math.min(100, this.#timeout / 4))
  }

  /**
   * Fails fast while the client is not connected (no command waits in ioredis' offline queue to
   * run long after its request was answered) and bounds every command by `commandTimeout`.
   */
  #guard<T> (send: () => Promise<T>): Promise<T> {
    const status = this.#client.status
    if (status !== 'ready' && status !== 'wait' && (this.#connected || (status !== 'connecting' && status !== 'connect'))) {
      const cause = this.#lastError === undefined ? '' : `: ${this.#lastError.message}`
      return Promise.reject(new Error(`Redis connection is ${status}${cause}`))
    }
    let command: Promise<T>
    try {
      command = send()
    } catch (err) {
      return Promise.reject(err)
    }
    return new Promise<T>((resolve, reject) => {
      const waiting: Waiting = { deadline: performance.now() + this.#timeout, reject }
      this.#waiting.push(waiting)
      if (this.#timer === undefined) this.#arm(this.#timeout)
      command.then((value) => {
        waiting.reject = undefined
        this.#drain()
        resolve(value)
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
