import { userBucket } from '../crypto.js'
import { ParsedRecords } from '../parsed.js'
import { grown, StringColumn, StringIndex } from './off-heap.js'
import {
  AGAIN_MAX, type ListedSession, type PowStore, type PutConditions, type RevokeSelector, type SessionRecord, type StoredSession,
  type TokenRecord, type TokenRotation
} from '../types.js'

/*
 * Layout. A store with a million sessions must stay small and cheap for the garbage collector,
 * so there is no object per session, and nothing per session on the V8 heap at all: sessions,
 * tokens and locks are *slots*, small integers indexing parallel typed arrays (struct of
 * arrays), and users are slots in a second set of them. Strings (hashes, record JSON, user keys,
 * user JSON) are in StringColumns, UTF-8 in Buffers, and the maps from strings to slots are
 * StringIndexes over them (see off-heap.ts for why the heap matters even to data never touched).
 *
 * - `#sessions`, `#tokens`, `#locks`: hash (or lock name) -> slot; `#users`: user key -> user slot.
 * - Each user slot heads two doubly linked lists through `#prev`/`#next`: its sessions and its
 *   tokens, in insertion order. A user slot is freed with the last entry on its lists.
 * - The record JSON of a session or token starts with `{"userKey":<json>,"fingerprint":<json>`
 *   (the store writes it in that order), so "has this fingerprint" is a `startsWith` on the
 *   stored bytes and no fingerprint string is kept besides it. A JSON string literal ends at
 *   its first unescaped quote, so no literal is a prefix of another and the test is exact.
 * - Expiry: a binary min-heap of slots keyed by `#expires`, each slot knowing its position, so
 *   a changed expiry moves its slot in place and a deleted entry leaves at once: the heap holds
 *   exactly the live entries.
 * - Replacements are claimed on first use (see PowStore): the little state this takes lives in
 *   three small maps keyed by hash (`#unread`, `#unclaimedSince`, `#rotations`), and only while
 *   a claim is pending, so a session in the steady state has no entry in any of them.
 * - Freed slots go on a free list and are reused. When fewer than a quarter of the slots in
 *   use are live (after evictions), the arrays are compacted, so memory follows live sessions.
 */

const NONE = -1
const MIN_CAPACITY = 64

const KIND = 3
const SESSION = 1
const TOKEN = 2
const LOCK = 3
/** A session replaced by a newer one of its fingerprint: unlisted; it lives out the grace once claimed. */
const RETIRED = 4
/** A used remember-me token (its JSON holds `usedAt`). */
const USED = 8
/** A retired session whose replacement was never read: it keeps its TTL until then. */
const UNCLAIMED = 16
/** A replacement replaced again before it was ever read: presenting it is theft. */
const SUPERSEDED = 32
/** A replacement (of sessions, or from a rotation) not read yet: its first read claims. */
const UNREAD = 64

/** What the first read of a replacement claims. */
interface Claim {
  /** It replaced sessions of its fingerprint: they live out this grace from the claim on. */
  grace: number | undefined
  /** A rotation of this token stored it. */
  token: string | undefined
}

/** A token's part in remember-me rotations, while a rotation is unclaimed. */
interface Rotation {
  /** Used, and the session and token its rotation stored were never used. */
  next: { session: string, token: string } | undefined
  /** A rotation of this token stored it: using it claims that rotation. */
  previous: string | undefined
  /** How often it rotated again. */
  again: number
}

/** The store contract: a hash carries its user's bucket, as sharded stores need it to. */
function checkBucket (hash: string, userKey: string): void {
  if (!hash.startsWith(userBucket(userKey) + '.')) {
    throw new TypeError('MemoryStore: a session or token hash must start with its user\'s bucket (userBucket(userKey))')
  }
}

/** How every stored record's JSON begins, `{"userKey":...,"fingerprint":...`, as UTF-8 (as stored). */
function recordPrefix (userKey: string, fingerprint: string): Buffer {
  return Buffer.from('{"userKey":' + JSON.stringify(userKey) + ',"fingerprint":' + JSON.stringify(fingerprint), 'utf8')
}

/** The record as JSON with userKey and fingerprint first (see recordPrefix). */
function recordJson<T extends { userKey: string, fingerprint: string }> (record: T): string {
  const { userKey, fingerprint } = record
  return JSON.stringify(Object.assign({ userKey, fingerprint }, record))
}

/**
 * How slots `0..top` move when compacted: `moved[slot]` is a live slot's new place (in order,
 * from 0) or NONE for a free one; `capacity` fits the live ones twice.
 */
function compaction (top: number, isLive: (slot: number) => boolean): { moved: Int32Array, live: number, capacity: number } {
  const moved = new Int32Array(top).fill(NONE)
  let live = 0
  for (let slot = 0; slot < top; slot++) if (isLive(slot)) moved[slot] = live++
  return { moved, live, capacity: Math.max(MIN_CAPACITY, 2 ** Math.ceil(Math.log2(live * 2 || 1))) }
}

/**
 * The default store: everything in this process's memory, lost on restart and not shared
 * between instances. Expired entries are evicted on every write, so memory follows the number
 * of live sessions and tokens. Values are kept as JSON, so the user objects read back are
 * copies, exactly as from Redis.
 */
export class MemoryStore implements PowStore {
  /** The hash (or lock name) of each entry slot. */
  #key = new StringColumn(MIN_CAPACITY)
  /** The user key of each user slot. */
  #userKey = new StringColumn(MIN_CAPACITY)
  #sessions = new StringIndex(this.#key)
  #tokens = new StringIndex(this.#key)
  #locks = new StringIndex(this.#key)
  #users = new StringIndex(this.#userKey)
  /** Unread replacements, by hash: what their first read claims. */
  #unread = new Map<string, Claim>()
  /** Unclaimed retired sessions, by hash: when they were retired. */
  #unclaimedSince = new Map<string, number>()
  /** Unclaimed retired sessions renewed again, by hash: how often. */
  #renewedAgain = new Map<string, number>()
  /** Tokens in a rotation not yet claimed, by hash. */
  #rotations = new Map<string, Rotation>()
  /** Session records read lately, parsed. */
  #parsed = new ParsedRecords<number>()

  // ---- entry slots (sessions, tokens, locks)
  /** Slots handed out so far: every slot below is live or on the free list. */
  #top = 0
  #live = 0
  #free = NONE
  /** The record JSON of a session or token; versioned, for the parsed records' cache. */
  #data = new StringColumn(MIN_CAPACITY, { versioned: true })
  #expires = new Float64Array(MIN_CAPACITY)
  /** User slot of a session or token. */
  #owner = new Int32Array(MIN_CAPACITY)
  #prev = new Int32Array(MIN_CAPACITY)
  /** Next in the user's list; for a free slot, the next free slot. */
  #next = new Int32Array(MIN_CAPACITY)
  #heapAt = new Int32Array(MIN_CAPACITY)
  #flags = new Uint8Array(MIN_CAPACITY)
  #heap = new Int32Array(MIN_CAPACITY)
  #heapSize = 0

  // ---- user slots
  #userTop = 0
  #userLive = 0
  #userFree = NONE
  /** JSON of the credentials; none once the user's last session is gone. */
  #userJson = new StringColumn(MIN_CAPACITY)
  /** First session; for a free user slot, the next free user slot. */
  #firstSession = new Int32Array(MIN_CAPACITY)
  #lastSession = new Int32Array(MIN_CAPACITY)
  #firstToken = new Int32Array(MIN_CAPACITY)
  #lastToken = new Int32Array(MIN_CAPACITY)

  async putSession (
    sidHash: string, record: SessionRecord, user: unknown, ttl: number, grace: number, conditions: PutConditions = {}
  ): Promise<boolean> {
    checkBucket(sidHash, record.userKey)
    const now = Date.now()
    this.#evict(now)
    if (!this.#holds(conditions)) return false
    if (conditions.session !== undefined && !this.#renewable(conditions.session)) return false
    this.#storeSession(sidHash, record, user === undefined ? undefined : JSON.stringify(user), false, ttl, grace, now)
    return true
  }

  async getSession (sidHash: string): Promise<StoredSession | null> {
    const slot = this.#sessions.get(sidHash)
    if (slot === undefined || this.#expires[slot] <= Date.now()) return null
    const user = this.#userJson.get(this.#owner[slot])
    if (user === undefined) return null
    const flags = this.#flags[slot]
    const version = this.#data.version(slot)
    const record = this.#parsed.find(version) ?? this.#parsed.parse(version, this.#data.get(slot) as string)
    const stored: StoredSession = { record, user: JSON.parse(user), retired: (flags & RETIRED) !== 0 }
    if ((flags & SUPERSEDED) !== 0) stored.superseded = true
    else if ((flags & UNREAD) !== 0) this.#claim(slot, sidHash, stored.record)
    else if ((flags & UNCLAIMED) !== 0) stored.unclaimedSince = this.#unclaimedSince.get(sidHash)
    return stored
  }

  async deleteSession (sidHash: string): Promise<boolean> {
    this.#evict(Date.now())
    const slot = this.#sessions.get(sidHash)
    if (slot === undefined) return false
    // An unread replacement is claimed first, so that the sessions it retired do not outlive it.
    if ((this.#flags[slot] & UNREAD) !== 0) this.#claim(slot, sidHash, JSON.parse(this.#data.get(slot) as string))
    this.#release(slot)
    return true
  }

  async listSessions (userKey: string): Promise<ListedSession[]> {
    const now = Date.now()
    const list: ListedSession[] = []
    const user = this.#users.get(userKey)
    if (user === undefined) return list
    for (let slot = this.#firstSession[user]; slot !== NONE; slot = this.#next[slot]) {
      if (this.#expires[slot] > now && (this.#flags[slot] & RETIRED) === 0) {
        list.push({ sidHash: this.#key.get(slot) as string, record: JSON.parse(this.#data.get(slot) as string), expiresAt: this.#expires[slot] })
      }
    }
    return list
  }

  async listUsers (): Promise<unknown[]> {
    const now = Date.now()
    const users: unknown[] = []
    for (const user of this.#users.slots()) {
      const json = this.#userJson.get(user)
      if (json === undefined) continue
      for (let slot = this.#firstSession[user]; slot !== NONE; slot = this.#next[slot]) {
        if (this.#expires[slot] > now) {
          users.push(JSON.parse(json))
          break
        }
      }
    }
    return users
  }

  async updateUser (userKey: string, user: unknown): Promise<void> {
    this.#evict(Date.now())
    const slot = this.#users.get(userKey)
    if (slot === undefined) return
    if (this.#userJson.has(slot)) this.#userJson.set(slot, JSON.stringify(user))
    for (let token = this.#firstToken[slot]; token !== NONE; token = this.#next[token]) {
      const record: TokenRecord = JSON.parse(this.#data.get(token) as string)
      record.user = user
      this.#data.set(token, JSON.stringify(record))
    }
  }

  async revoke (userKey: string, selector: RevokeSelector): Promise<string[]> {
    this.#evict(Date.now())
    const user = this.#users.get(userKey)
    if (user === undefined) return []
    // Fingerprints are compared as the start of the stored JSON (see recordPrefix).
    const only = 'fingerprint' in selector ? recordPrefix(userKey, selector.fingerprint) : undefined
    const except = 'except' in selector && selector.except !== undefined ? recordPrefix(userKey, selector.except) : undefined
    const data = this.#data
    const selected = (slot: number): boolean => only !== undefined ? data.startsWith(slot, only) : except === undefined || !data.startsWith(slot, except)
    const doomed: number[] = []
    for (let slot = this.#firstSession[user]; slot !== NONE; slot = this.#next[slot]) {
      if (selected(slot)) doomed.push(slot)
    }
    for (let slot = this.#firstToken[user]; slot !== NONE; slot = this.#next[slot]) {
      if (selected(slot)) doomed.push(slot)
    }
    const revoked = new Set<string>()
    for (const slot of doomed) {
      revoked.add((JSON.parse(this.#data.get(slot) as string) as { fingerprint: string }).fingerprint)
      this.#release(slot)
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
    const slot = this.#liveSlot(this.#tokens, tokenHash)
    if (slot === undefined) return null
    const record: TokenRecord = JSON.parse(this.#data.get(slot) as string)
    if ((this.#flags[slot] & SUPERSEDED) !== 0) record.superseded = true
    const rotation = this.#rotations.get(tokenHash)
    if ((this.#flags[slot] & USED) !== 0 && rotation?.next !== undefined) record.unclaimed = true
    if (rotation !== undefined && rotation.again > 0) record.rotatedAgain = rotation.again
    return record
  }

  async rotateToken (tokenHash: string, now: number, rotation: TokenRotation): Promise<'rotated' | 'used' | 'missing'> {
    const { session } = rotation
    checkBucket(rotation.sidHash, session.userKey)
    checkBucket(rotation.tokenHash, session.userKey)
    this.#evict(Date.now())
    const slot = this.#liveSlot(this.#tokens, tokenHash)
    if (slot === undefined) return 'missing'
    const flags = this.#flags[slot]
    if ((flags & SUPERSEDED) !== 0) return 'used'
    const token: TokenRecord = JSON.parse(this.#data.get(slot) as string)
    const rotations = this.#rotations.get(tokenHash)
    const next = rotations?.next
    let usedAt = now
    let again = rotations?.again ?? 0
    if ((flags & USED) !== 0) {
      if (next !== undefined && next.session === rotation.sidHash) {
        // The same rotation again (sent twice): written again, keeping when the token was used.
        usedAt = token.usedAt as number
      } else if (next !== undefined && rotation.again === true && (rotations as Rotation).again < AGAIN_MAX &&
        now - (token.usedAt as number) > rotation.grace) {
        // Rotated again: the earlier new token is superseded (its session is, by #storeSession).
        again++
        const earlier = this.#tokens.get(next.token)
        if (earlier !== undefined) this.#flags[earlier] |= SUPERSEDED
      } else {
        return 'used'
      }
    }
    this.#flags[slot] |= USED
    this.#data.set(slot, recordJson({ ...token, usedAt }))
    this.#rotations.set(tokenHash, { next: { session: rotation.sidHash, token: rotation.tokenHash }, previous: undefined, again })
    // This token was the new token of an earlier rotation: that rotation is claimed.
    if (rotations?.previous !== undefined) this.#claimToken(rotations.previous)
    this.#storeSession(rotation.sidHash, session, JSON.stringify(token.user), true, rotation.sessionTtl, rotation.grace, now, tokenHash)
    const user = this.#users.get(token.userKey)
    const stored = user === undefined ? undefined : this.#userJson.get(user)
    this.#storeToken(rotation.tokenHash, {
      userKey: token.userKey,
      fingerprint: token.fingerprint,
      user: stored === undefined ? token.user : JSON.parse(stored),
      metadata: session.metadata
    }, rotation.tokenTtl, now)
    this.#rotations.set(rotation.tokenHash, { next: undefined, previous: tokenHash, again: 0 })
    return 'rotated'
  }

  async touchToken (tokenHash: string, ttl: number): Promise<void> {
    const now = Date.now()
    this.#evict(now)
    const slot = this.#liveSlot(this.#tokens, tokenHash)
    if (slot !== undefined && (this.#flags[slot] & USED) === 0) this.#setExpiry(slot, now + ttl)
  }

  async deleteToken (tokenHash: string): Promise<void> {
    this.#evict(Date.now())
    const slot = this.#tokens.get(tokenHash)
    if (slot !== undefined) this.#release(slot)
  }

  async lock (key: string, ttl: number): Promise<boolean> {
    const now = Date.now()
    this.#evict(now)
    const old = this.#locks.get(key)
    if (old !== undefined) {
      if (this.#expires[old] > Date.now()) return false
      this.#release(old)
    }
    const slot = this.#allocate(key, undefined, LOCK, NONE, now + ttl)
    this.#locks.set(key, slot)
    return true
  }

  /**
   * Counts of what the store holds, expired entries not yet evicted included; `heap` is the
   * number of entries waiting in the expiry heap. For tests and benchmarks.
   */
  get size (): { sessions: number, tokens: number, users: number, locks: number, heap: number } {
    return {
      sessions: this.#sessions.size,
      tokens: this.#tokens.size,
      users: this.#users.size,
      locks: this.#locks.size,
      heap: this.#heapSize
    }
  }

  /** Slots allocated in the arrays (live or free), entries and users: for tests of the compaction. */
  get slots (): { entries: number, users: number } {
    return { entries: this.#top, users: this.#userTop }
  }

  #liveSlot (map: StringIndex, key: string): number | undefined {
    const slot = map.get(key)
    return slot !== undefined && this.#expires[slot] > Date.now() ? slot : undefined
  }

  #holds (conditions: PutConditions): boolean {
    return conditions.session === undefined || this.#liveSlot(this.#sessions, conditions.session) !== undefined
  }

  /**
   * A renewal of `sidHash` may go ahead: it is claimed first if its claim is pending (it was read:
   * it is being renewed); a retired one (renewed again, its first renewal's answer lost) renews
   * again at most AGAIN_MAX times.
   */
  #renewable (sidHash: string): boolean {
    const slot = this.#sessions.get(sidHash) as number
    const flags = this.#flags[slot]
    if ((flags & UNREAD) !== 0) this.#claim(slot, sidHash, JSON.parse(this.#data.get(slot) as string))
    if ((flags & RETIRED) === 0) return true
    const again = this.#renewedAgain.get(sidHash) ?? 0
    if (again >= AGAIN_MAX) return false
    this.#renewedAgain.set(sidHash, again + 1)
    return true
  }

  /**
   * Stores a session. The user's other live sessions of its fingerprint are retired and unclaimed
   * (they keep their TTL until this one is first read); unread replacements among them are
   * superseded. `prevToken`: the token whose rotation stores it.
   */
  #storeSession (
    sidHash: string, record: SessionRecord, user: string | undefined, keepStoredUser: boolean, ttl: number, grace: number, now: number,
    prevToken?: string
  ): void {
    const old = this.#sessions.get(sidHash)
    if (old !== undefined) this.#release(old)
    const owner = this.#user(record.userKey)
    const prefix = recordPrefix(record.userKey, record.fingerprint)
    let claims = false
    for (let slot = this.#firstSession[owner]; slot !== NONE; slot = this.#next[slot]) {
      if (!this.#data.startsWith(slot, prefix)) continue
      const flags = this.#flags[slot]
      const key = this.#key.get(slot) as string
      if ((flags & UNREAD) !== 0) {
        this.#flags[slot] = (flags & ~(UNREAD | UNCLAIMED)) | RETIRED | SUPERSEDED
        this.#unread.delete(key)
      } else if ((flags & RETIRED) === 0) {
        this.#flags[slot] = flags | RETIRED | UNCLAIMED
        this.#unclaimedSince.set(key, now)
        claims = true
      } else if ((flags & UNCLAIMED) !== 0) {
        claims = true
      }
    }
    const unread = claims || prevToken !== undefined
    const slot = this.#allocate(sidHash, recordJson(record), unread ? SESSION | UNREAD : SESSION, owner, now + ttl)
    this.#sessions.set(sidHash, slot)
    if (unread) this.#unread.set(sidHash, { grace: claims ? grace : undefined, token: prevToken })
    if (user !== undefined && !(keepStoredUser && this.#userJson.has(owner))) this.#userJson.set(owner, user)
  }

  /** The first read of a replacement: the sessions it retired live out the grace from now on, and its rotation is claimed. */
  #claim (slot: number, sidHash: string, record: SessionRecord): void {
    this.#flags[slot] &= ~UNREAD
    const claim = this.#unread.get(sidHash)
    this.#unread.delete(sidHash)
    if (claim === undefined) return
    if (claim.grace !== undefined) {
      const until = Date.now() + claim.grace
      const prefix = recordPrefix(record.userKey, record.fingerprint)
      for (let other = this.#firstSession[this.#owner[slot]]; other !== NONE; other = this.#next[other]) {
        if ((this.#flags[other] & UNCLAIMED) === 0 || !this.#data.startsWith(other, prefix)) continue
        this.#flags[other] &= ~UNCLAIMED
        this.#unclaimedSince.delete(this.#key.get(other) as string)
        if (this.#expires[other] > until) this.#setExpiry(other, until)
      }
    }
    if (claim.token !== undefined) this.#claimToken(claim.token)
  }

  /** The rotation of `tokenHash` is claimed: its new session or token was used. */
  #claimToken (tokenHash: string): void {
    const rotation = this.#rotations.get(tokenHash)
    if (rotation?.next === undefined) return
    const newToken = this.#rotations.get(rotation.next.token)
    if (newToken !== undefined && newToken.previous === tokenHash) {
      newToken.previous = undefined
      if (newToken.next === undefined) this.#rotations.delete(rotation.next.token)
    }
    rotation.next = undefined
    if (rotation.previous === undefined) this.#rotations.delete(tokenHash)
  }

  #storeToken (tokenHash: string, record: TokenRecord, ttl: number, now: number): void {
    const old = this.#tokens.get(tokenHash)
    if (old !== undefined) this.#release(old)
    const { usedAt, ...rest } = record
    const json = recordJson(usedAt === undefined ? rest : { ...rest, usedAt })
    const slot = this.#allocate(tokenHash, json, usedAt === undefined ? TOKEN : TOKEN | USED, this.#user(record.userKey), now + ttl)
    this.#tokens.set(tokenHash, slot)
  }

  // ---- entry slots

  /** A new entry: a slot, on its user's list (sessions and tokens) and in the expiry heap. */
  #allocate (key: string, data: string | undefined, flags: number, owner: number, expires: number): number {
    let slot = this.#free
    if (slot !== NONE) {
      this.#free = this.#next[slot]
    } else {
      if (this.#top === this.#flags.length) this.#resizeEntries(this.#flags.length * 2)
      slot = this.#top++
    }
    this.#live++
    this.#key.set(slot, key)
    this.#data.set(slot, data)
    this.#flags[slot] = flags
    this.#owner[slot] = owner
    this.#expires[slot] = expires
    this.#next[slot] = NONE
    const kind = flags & KIND
    if (kind !== LOCK) {
      const first = kind === SESSION ? this.#firstSession : this.#firstToken
      const last = kind === SESSION ? this.#lastSession : this.#lastToken
      const tail = last[owner]
      this.#prev[slot] = tail
      if (tail === NONE) first[owner] = slot
      else this.#next[tail] = slot
      last[owner] = slot
    }
    this.#heapPush(slot)
    return slot
  }

  /** Deletes an entry: from its map, its user's list (the user too once it has nothing left) and the heap. */
  #release (slot: number): void {
    const kind = this.#flags[slot] & KIND
    const key = this.#key.get(slot) as string
    if (kind === LOCK) {
      this.#locks.delete(key)
    } else {
      const owner = this.#owner[slot]
      const first = kind === SESSION ? this.#firstSession : this.#firstToken
      const last = kind === SESSION ? this.#lastSession : this.#lastToken
      const prev = this.#prev[slot]
      const next = this.#next[slot]
      if (prev === NONE) first[owner] = next
      else this.#next[prev] = next
      if (next === NONE) last[owner] = prev
      else this.#prev[next] = prev
      if (kind === SESSION) {
        this.#sessions.delete(key)
        if ((this.#flags[slot] & UNREAD) !== 0) this.#unread.delete(key)
        if ((this.#flags[slot] & UNCLAIMED) !== 0) this.#unclaimedSince.delete(key)
        if (this.#renewedAgain.size > 0) this.#renewedAgain.delete(key)
        this.#parsed.forget(this.#data.version(slot))
        if (this.#firstSession[owner] === NONE) this.#userJson.set(owner, undefined)
      } else {
        this.#tokens.delete(key)
        if (this.#rotations.size > 0) this.#rotations.delete(key)
      }
      if (this.#firstSession[owner] === NONE && this.#firstToken[owner] === NONE) this.#releaseUser(owner)
    }
    this.#heapRemove(slot)
    this.#key.set(slot, undefined)
    this.#data.set(slot, undefined)
    this.#flags[slot] = 0
    this.#next[slot] = this.#free
    this.#free = slot
    this.#live--
  }

  #resizeEntries (capacity: number): void {
    this.#key.resize(capacity)
    this.#data.resize(capacity)
    this.#expires = grown(this.#expires, capacity)
    this.#owner = grown(this.#owner, capacity)
    this.#prev = grown(this.#prev, capacity)
    this.#next = grown(this.#next, capacity)
    this.#heapAt = grown(this.#heapAt, capacity)
    this.#flags = grown(this.#flags, capacity)
    this.#heap = grown(this.#heap, capacity)
  }

  /** Moves the live entries to the lowest slots, in order, and shrinks the arrays to fit them twice. */
  #compactEntries (): void {
    const top = this.#top
    const { moved, live, capacity } = compaction(top, (slot) => this.#flags[slot] !== 0)
    const expires = new Float64Array(capacity)
    const owner = new Int32Array(capacity)
    const prev = new Int32Array(capacity)
    const next = new Int32Array(capacity)
    const heapAt = new Int32Array(capacity)
    const flags = new Uint8Array(capacity)
    const heap = new Int32Array(capacity)
    const at = (slot: number): number => slot === NONE ? NONE : moved[slot]
    for (let slot = 0; slot < top; slot++) {
      const to = moved[slot]
      if (to === NONE) continue
      expires[to] = this.#expires[slot]
      owner[to] = this.#owner[slot]
      prev[to] = at(this.#prev[slot])
      next[to] = at(this.#next[slot])
      heapAt[to] = this.#heapAt[slot]
      flags[to] = this.#flags[slot]
    }
    for (let i = 0; i < this.#heapSize; i++) heap[i] = moved[this.#heap[i]]
    this.#key.move(moved, top, capacity)
    this.#data.move(moved, top, capacity)
    for (const index of [this.#sessions, this.#tokens, this.#locks]) index.renumber(moved)
    for (const user of this.#users.slots()) {
      this.#firstSession[user] = at(this.#firstSession[user])
      this.#lastSession[user] = at(this.#lastSession[user])
      this.#firstToken[user] = at(this.#firstToken[user])
      this.#lastToken[user] = at(this.#lastToken[user])
    }
    this.#expires = expires
    this.#owner = owner
    this.#prev = prev
    this.#next = next
    this.#heapAt = heapAt
    this.#flags = flags
    this.#heap = heap
    this.#top = live
    this.#free = NONE
  }

  // ---- user slots

  /** The user's slot, made when missing. */
  #user (userKey: string): number {
    let user = this.#users.get(userKey)
    if (user !== undefined) return user
    user = this.#userFree
    if (user !== NONE) {
      this.#userFree = this.#firstSession[user]
    } else {
      if (this.#userTop === this.#firstSession.length) this.#resizeUsers(this.#firstSession.length * 2)
      user = this.#userTop++
    }
    this.#userLive++
    this.#userKey.set(user, userKey)
    this.#userJson.set(user, undefined)
    this.#firstSession[user] = NONE
    this.#lastSession[user] = NONE
    this.#firstToken[user] = NONE
    this.#lastToken[user] = NONE
    this.#users.set(userKey, user)
    return user
  }

  #releaseUser (user: number): void {
    this.#users.delete(this.#userKey.get(user) as string)
    this.#userKey.set(user, undefined)
    this.#userJson.set(user, undefined)
    this.#firstSession[user] = this.#userFree
    this.#userFree = user
    this.#userLive--
  }

  #resizeUsers (capacity: number): void {
    this.#userKey.resize(capacity)
    this.#userJson.resize(capacity)
    this.#firstSession = grown(this.#firstSession, capacity)
    this.#lastSession = grown(this.#lastSession, capacity)
    this.#firstToken = grown(this.#firstToken, capacity)
    this.#lastToken = grown(this.#lastToken, capacity)
  }

  #compactUsers (): void {
    const top = this.#userTop
    const { moved, live, capacity } = compaction(top, (user) => this.#userKey.has(user))
    const firstSession = new Int32Array(capacity)
    const lastSession = new Int32Array(capacity)
    const firstToken = new Int32Array(capacity)
    const lastToken = new Int32Array(capacity)
    for (let user = 0; user < top; user++) {
      const to = moved[user]
      if (to === NONE) continue
      firstSession[to] = this.#firstSession[user]
      lastSession[to] = this.#lastSession[user]
      firstToken[to] = this.#firstToken[user]
      lastToken[to] = this.#lastToken[user]
    }
    this.#userKey.move(moved, top, capacity)
    this.#userJson.move(moved, top, capacity)
    this.#users.renumber(moved)
    for (let slot = 0; slot < this.#top; slot++) {
      if ((this.#flags[slot] & KIND) === SESSION || (this.#flags[slot] & KIND) === TOKEN) this.#owner[slot] = moved[this.#owner[slot]]
    }
    this.#firstSession = firstSession
    this.#lastSession = lastSession
    this.#firstToken = firstToken
    this.#lastToken = lastToken
    this.#userTop = live
    this.#userFree = NONE
  }

  // ---- expiry

  #evict (now: number): void {
    while (this.#heapSize > 0 && this.#expires[this.#heap[0]] <= now) this.#release(this.#heap[0])
    // Compacting moves slots, so it happens here, before a write looks any slot up, never
    // while one is being worked on. Amortized: a compaction of n slots follows 3n/4 releases.
    if (this.#top > MIN_CAPACITY && this.#live * 4 < this.#top) this.#compactEntries()
    if (this.#userTop > MIN_CAPACITY && this.#userLive * 4 < this.#userTop) this.#compactUsers()
  }

  #setExpiry (slot: number, expires: number): void {
    const earlier = expires < this.#expires[slot]
    this.#expires[slot] = expires
    if (earlier) this.#siftUp(this.#heapAt[slot])
    else this.#siftDown(this.#heapAt[slot])
  }

  #heapPush (slot: number): void {
    const i = this.#heapSize++
    this.#heap[i] = slot
    this.#heapAt[slot] = i
    this.#siftUp(i)
  }

  #heapRemove (slot: number): void {
    const i = this.#heapAt[slot]
    const last = this.#heap[--this.#heapSize]
    if (i === this.#heapSize) return
    this.#heap[i] = last
    this.#heapAt[last] = i
    if (this.#expires[last] < this.#expires[slot]) this.#siftUp(i)
    else this.#siftDown(i)
  }

  #siftUp (i: number): void {
    const heap = this.#heap
    const expires = this.#expires
    const slot = heap[i]
    const at = expires[slot]
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (expires[heap[parent]] <= at) break
      heap[i] = heap[parent]
      this.#heapAt[heap[i]] = i
      i = parent
    }
    heap[i] = slot
    this.#heapAt[slot] = i
  }

  #siftDown (i: number): void {
    const heap = this.#heap
    const expires = this.#expires
    const size = this.#heapSize
    const slot = heap[i]
    const at = expires[slot]
    for (;;) {
      const l = 2 * i + 1
      if (l >= size) break
      const r = l + 1
      const child = r < size && expires[heap[r]] < expires[heap[l]] ? r : l
      if (expires[heap[child]] >= at) break
      heap[i] = heap[child]
      this.#heapAt[heap[i]] = i
      i = child
    }
    heap[i] = slot
    this.#heapAt[slot] = i
  }
}
