import { userBucket } from '../crypto.js'
import type {
  ListedSession, PowStore, PutConditions, RevokeSelector, SessionRecord, StoredSession, TokenRecord, TokenRotation
} from '../types.js'

interface Entry {
  key: string
  expiresAt: number
  dead: boolean
}

interface SessionEntry extends Entry {
  userKey: string
  fingerprint: string
  record: string
  retired: boolean
}

interface TokenEntry extends Entry {
  userKey: string
  fingerprint: string
  record: string
  usedAt: number | undefined
}

interface UserEntry {
  /** JSON of the credentials; undefined once the user's last session is gone. */
  user: string | undefined
  sessions: Map<string, SessionEntry>
  tokens: Map<string, TokenEntry>
}

interface HeapNode {
  at: number
  entry: Entry
}

/**
 * A min-heap of expiry times. Each entry is pushed when created and again only when its expiry
 * moves earlier; a node whose entry lives longer than the node says is pushed back at the
 * entry's real expiry, so extending a TTL costs nothing and the heap holds at most two nodes
 * per entry.
 */
class ExpiryHeap {
  #nodes: HeapNode[] = []

  get size (): number { return this.#nodes.length }

  push (entry: Entry, at: number): void {
    const nodes = this.#nodes
    nodes.push({ at, entry })
    let i = nodes.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (nodes[parent].at <= nodes[i].at) break
      ;[nodes[parent], nodes[i]] = [nodes[i], nodes[parent]]
      i = parent
    }
  }

  /** Removes and returns the earliest node if it is due at `now`. */
  popDue (now: number): HeapNode | undefined {
    const nodes = this.#nodes
    if (nodes.length === 0 || nodes[0].at > now) return undefined
    const top = nodes[0]
    const last = nodes.pop() as HeapNode
    if (nodes.length > 0) {
      nodes[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let smallest = i
        if (l < nodes.length && nodes[l].at < nodes[smallest].at) smallest = l
        if (r < nodes.length && nodes[r].at < nodes[smallest].at) smallest = r
        if (smallest === i) break
        ;[nodes[smallest], nodes[i]] = [nodes[i], nodes[smallest]]
        i = smallest
      }
    }
    return top
  }
}

/** The store contract: a hash carries its user's bucket, as sharded stores need it to. */
function checkBucket (hash: string, userKey: string): void {
  if (!hash.startsWith(userBucket(userKey) + '.')) {
    throw new TypeError('MemoryStore: a session or token hash must start with its user\'s bucket (userBucket(userKey))')
  }
}

/**
 * The default store: everything in this process's memory, lost on restart and not shared
 * between instances. Expired entries are evicted on every write, so memory follows the number
 * of live sessions and tokens. Values are kept as JSON, so the user objects read back are
 * copies, exactly as from Redis.
 */
export class MemoryStore implements PowStore {
  #sessions = new Map<string, SessionEntry>()
  #tokens = new Map<string, TokenEntry>()
  #users = new Map<string, UserEntry>()
  #locks = new Map<string, Entry>()
  #heap = new ExpiryHeap()

  async putSession (
    sidHash: string, record: SessionRecord, user: unknown, ttl: number, grace: number, conditions: PutConditions = {}
  ): Promise<boolean> {
    checkBucket(sidHash, record.userKey)
    const now = Date.now()
    this.#evict(now)
    if (!this.#holds(conditions)) return false
    this.#storeSession(sidHash, record, user === undefined ? undefined : JSON.stringify(user), false, ttl, grace, now)
    return true
  }

  async getSession (sidHash: string): Promise<StoredSession | null> {
    const entry = this.#live(this.#sessions, sidHash)
    if (entry === undefined) return null
    const user = this.#users.get(entry.userKey)?.user
    if (user === undefined) return null
    return { record: JSON.parse(entry.record), user: JSON.parse(user), retired: entry.retired }
  }

  async deleteSession (sidHash: string): Promise<boolean> {
    this.#evict(Date.now())
    const entry = this.#sessions.get(sidHash)
    if (entry === undefined) return false
    this.#deleteSessionEntry(entry)
    return true
  }

  async listSessions (userKey: string): Promise<ListedSession[]> {
    const now = Date.now()
    const list: ListedSession[] = []
    for (const entry of this.#users.get(userKey)?.sessions.values() ?? []) {
      if (entry.expiresAt > now && !entry.retired) {
        list.push({ sidHash: entry.key, record: JSON.parse(entry.record), expiresAt: entry.expiresAt })
      }
    }
    return list
  }

  async listUsers (): Promise<unknown[]> {
    const now = Date.now()
    const users: unknown[] = []
    for (const entry of this.#users.values()) {
      if (entry.user === undefined) continue
      for (const session of entry.sessions.values()) {
        if (session.expiresAt > now) {
          users.push(JSON.parse(entry.user))
          break
        }
      }
    }
    return users
  }

  async updateUser (userKey: string, user: unknown): Promise<void> {
    this.#evict(Date.now())
    const entry = this.#users.get(userKey)
    if (entry === undefined) return
    const json = JSON.stringify(user)
    if (entry.user !== undefined) entry.user = json
    for (const token of entry.tokens.values()) {
      const record: TokenRecord = JSON.parse(token.record)
      record.user = user
      token.record = JSON.stringify(record)
    }
  }

  async revoke (userKey: string, selector: RevokeSelector): Promise<string[]> {
    this.#evict(Date.now())
    const entry = this.#users.get(userKey)
    if (entry === undefined) return []
    const selected = 'fingerprint' in selector
      ? (fingerprint: string) => fingerprint === selector.fingerprint
      : (fingerprint: string) => fingerprint !== selector.except
    const revoked = new Set<string>()
    for (const session of [...entry.sessions.values()]) {
      if (selected(session.fingerprint)) {
        revoked.add(session.fingerprint)
        this.#deleteSessionEntry(session)
      }
    }
    for (const token of [...entry.tokens.values()]) {
      if (selected(token.fingerprint)) {
        revoked.add(token.fingerprint)
        this.#deleteTokenEntry(token)
      }
    }
    return [...revoked]
  }

  async putToken (tokenHash: string, record: TokenRecord, ttl: number, conditions: PutConditions = {}): Promise<boolean> {
    checkBucket(tokenHash, record.userKey)
    const now = Date.now()
    this.#evict(now)
    if (!this.#holds(conditions)) return false
    this.#storeToken(tokenHash, record, ttl, now)
    return true
  }

  async getToken (tokenHash: string): Promise<TokenRecord | null> {
    const entry = this.#live(this.#tokens, tokenHash)
    if (entry === undefined) return null
    const record: TokenRecord = JSON.parse(entry.record)
    if (entry.usedAt !== undefined) record.usedAt = entry.usedAt
    return record
  }

  async rotateToken (tokenHash: string, now: number, rotation: TokenRotation): Promise<'rotated' | 'used' | 'missing'> {
    const { session } = rotation
    checkBucket(rotation.sidHash, session.userKey)
    checkBucket(rotation.tokenHash, session.userKey)
    this.#evict(Date.now())
    const entry = this.#live(this.#tokens, tokenHash)
    if (entry === undefined) return 'missing'
    if (entry.usedAt !== undefined) return 'used'
    entry.usedAt = now
    const token: TokenRecord = JSON.parse(entry.record)
    this.#storeSession(rotation.sidHash, session, JSON.stringify(token.user), true, rotation.sessionTtl, rotation.grace, now)
    const stored = this.#users.get(token.userKey)?.user
    this.#storeToken(rotation.tokenHash, {
      userKey: token.userKey,
      fingerprint: token.fingerprint,
      user: stored === undefined ? token.user : JSON.parse(stored),
      metadata: session.metadata
    }, rotation.tokenTtl, now)
    return 'rotated'
  }

  async touchToken (tokenHash: string, ttl: number): Promise<void> {
    const now = Date.now()
    this.#evict(now)
    const entry = this.#live(this.#tokens, tokenHash)
    if (entry !== undefined && entry.usedAt === undefined) entry.expiresAt = now + ttl
  }

  async deleteToken (tokenHash: string): Promise<void> {
    this.#evict(Date.now())
    this.#deleteTokenEntry(this.#tokens.get(tokenHash))
  }

  async lock (key: string, ttl: number): Promise<boolean> {
    const now = Date.now()
    this.#evict(now)
    if (this.#live(this.#locks, key) !== undefined) return false
    const entry: Entry = { key, expiresAt: now + ttl, dead: false }
    this.#locks.set(key, entry)
    this.#heap.push(entry, entry.expiresAt)
    return true
  }

  /** Counts of what the store holds, expired entries not yet evicted included. For tests and benchmarks. */
  get size (): { sessions: number, tokens: number, users: number, locks: number, heap: number } {
    return {
      sessions: this.#sessions.size,
      tokens: this.#tokens.size,
      users: this.#users.size,
      locks: this.#locks.size,
      heap: this.#heap.size
    }
  }

  #live<E extends Entry> (map: Map<string, E>, key: string): E | undefined {
    const entry = map.get(key)
    return entry !== undefined && entry.expiresAt > Date.now() ? entry : undefined
  }

  #holds (conditions: PutConditions): boolean {
    return conditions.session === undefined || this.#live(this.#sessions, conditions.session) !== undefined
  }

  /** Stores a session; retires the user's other sessions of its fingerprint for `grace` ms. */
  #storeSession (
    sidHash: string, record: SessionRecord, user: string | undefined, keepStoredUser: boolean, ttl: number, grace: number, now: number
  ): void {
    this.#deleteSessionEntry(this.#sessions.get(sidHash))
    const userEntry = this.#user(record.userKey)
    for (const other of userEntry.sessions.values()) {
      if (other.fingerprint === record.fingerprint) this.#retire(other, now + grace)
    }
    const entry: SessionEntry = {
      key: sidHash,
      expiresAt: now + ttl,
      dead: false,
      userKey: record.userKey,
      fingerprint: record.fingerprint,
      record: JSON.stringify(record),
      retired: false
    }
    this.#sessions.set(sidHash, entry)
    userEntry.sessions.set(sidHash, entry)
    if (user !== undefined && !(keepStoredUser && userEntry.user !== undefined)) userEntry.user = user
    this.#heap.push(entry, entry.expiresAt)
  }

  #storeToken (tokenHash: string, record: TokenRecord, ttl: number, now: number): void {
    this.#deleteTokenEntry(this.#tokens.get(tokenHash))
    const { usedAt, ...rest } = record
    const entry: TokenEntry = {
      key: tokenHash,
      expiresAt: now + ttl,
      dead: false,
      userKey: record.userKey,
      fingerprint: record.fingerprint,
      record: JSON.stringify(rest),
      usedAt
    }
    this.#tokens.set(tokenHash, entry)
    this.#user(record.userKey).tokens.set(tokenHash, entry)
    this.#heap.push(entry, entry.expiresAt)
  }

  #user (userKey: string): UserEntry {
    let entry = this.#users.get(userKey)
    if (entry === undefined) {
      entry = { user: undefined, sessions: new Map(), tokens: new Map() }
      this.#users.set(userKey, entry)
    }
    return entry
  }

  #retire (entry: SessionEntry, until: number): void {
    entry.retired = true
    if (entry.expiresAt > until) {
      entry.expiresAt = until
      this.#heap.push(entry, until)
    }
  }

  #deleteSessionEntry (entry: SessionEntry | undefined): void {
    if (entry === undefined || entry.dead) return
    entry.dead = true
    entry.record = ''
    this.#sessions.delete(entry.key)
    const user = this.#users.get(entry.userKey)
    if (user === undefined) return
    user.sessions.delete(entry.key)
    if (user.sessions.size === 0) {
      user.user = undefined
      if (user.tokens.size === 0) this.#users.delete(entry.userKey)
    }
  }

  #deleteTokenEntry (entry: TokenEntry | undefined): void {
    if (entry === undefined || entry.dead) return
    entry.dead = true
    entry.record = ''
    this.#tokens.delete(entry.key)
    const user = this.#users.get(entry.userKey)
    if (user === undefined) return
    user.tokens.delete(entry.key)
    if (user.sessions.size === 0 && user.tokens.size === 0) this.#users.delete(entry.userKey)
  }

  #evict (now: number): void {
    for (let node = this.#heap.popDue(now); node !== undefined; node = this.#heap.popDue(now)) {
      const entry = node.entry
      if (entry.dead) continue
      if (entry.expiresAt > now) {
        this.#heap.push(entry, entry.expiresAt)
        continue
      }
      if (this.#sessions.get(entry.key) === entry) this.#deleteSessionEntry(entry as SessionEntry)
      else if (this.#tokens.get(entry.key) === entry) this.#deleteTokenEntry(entry as TokenEntry)
      else if (this.#locks.get(entry.key) === entry) {
        entry.dead = true
        this.#locks.delete(entry.key)
      }
    }
  }
}
