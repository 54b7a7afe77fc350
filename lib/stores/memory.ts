import type { CommitResult, DeviceChange, PowStore, StoredDevice } from '../types.js'
import { userBucket } from '../crypto.js'
import { grown, StringColumn, StringIndex } from './off-heap.js'

/*
 * Layout. A store with a million devices must stay small and cheap for the garbage collector,
 * so there is no object per device, and nothing per device on the V8 heap at all: devices are
 * *slots*, small integers indexing parallel typed arrays, and users are slots in a second set
 * of them. Strings (addresses, records, user keys, users' JSON) are in StringColumns, UTF-8 in
 * Buffers, and the maps from strings to slots are StringIndexes over them (see off-heap.ts for
 * why the heap matters even to data never touched).
 *
 * - `#devices`: address (`<bucket><fingerprint>`) -> device slot; `#users`: user key -> user slot.
 * - Each user slot heads a doubly linked list of its devices through `#prev`/`#next`, ordered
 *   by `#usedAt`; a write moves its device to its place, which is the tail when `usedAt` is now.
 *   A user slot is freed with its last device.
 * - Expiry: a binary min-heap of device slots keyed by `#expires`, each slot knowing its place,
 *   so a changed expiry moves its slot in place and a deleted device leaves at once.
 * - Freed slots go on a free list and are reused. When fewer than a quarter of the slots in use
 *   are live, the arrays are compacted, so memory follows live devices.
 */

const NONE = -1
const MIN_CAPACITY = 64
// Records read lately, decoded, by version: a browser sends its cookie with every request, and
// the same string each time lets the caller's cache of parsed records find it without decoding
// or hashing the text again. Two generations of 256, records of at most 4 kB: at most 2 MB.
const RECENT_SIZE = 256
const RECENT_MAX_LENGTH = 4096

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
 * between instances. Expired devices are evicted on every write, so memory follows the number
 * of live devices. Records and users are kept as the JSON text they are given.
 */
export class MemoryStore implements PowStore {
  /** The address of each device slot. */
  #key = new StringColumn(MIN_CAPACITY)
  /** The user key of each user slot. */
  #userKey = new StringColumn(MIN_CAPACITY)
  #devices = new StringIndex(this.#key)
  #users = new StringIndex(this.#userKey)
  /** Version numbers are never reused within the store. */
  #versions = 0
  #recent = new Map<number, string>()
  #older = new Map<number, string>()

  // ---- device slots
  /** Slots handed out so far: every slot below is live or on the free list. */
  #top = 0
  #live = 0
  #free = NONE
  #data = new StringColumn(MIN_CAPACITY)
  #version = new Float64Array(MIN_CAPACITY)
  #expires = new Float64Array(MIN_CAPACITY)
  #usedAt = new Float64Array(MIN_CAPACITY)
  /** User slot of a device; NONE for a free slot. */
  #owner = new Int32Array(MIN_CAPACITY).fill(NONE)
  #prev = new Int32Array(MIN_CAPACITY)
  /** Next in the user's list; for a free slot, the next free slot. */
  #next = new Int32Array(MIN_CAPACITY)
  #heapAt = new Int32Array(MIN_CAPACITY)
  #heap = new Int32Array(MIN_CAPACITY)
  #heapSize = 0

  // ---- user slots
  #userTop = 0
  #userLive = 0
  #userFree = NONE
  /** The user's credentials (JSON). */
  #userJson = new StringColumn(MIN_CAPACITY, { keepReads: true })
  /** First device; for a free user slot, the next free user slot. */
  #first = new Int32Array(MIN_CAPACITY)
  #last = new Int32Array(MIN_CAPACITY)
  #count = new Int32Array(MIN_CAPACITY)

  /** Answers at once, not with a promise: the request that reads is authenticated without a wait. */
  read (bucket: string, fingerprint: string): StoredDevice | null {
    const slot = this.#devices.get(bucket, fingerprint)
    if (slot === undefined || this.#expires[slot] <= Date.now()) return null
    const version = this.#version[slot]
    return { data: this.#record(slot, version), user: this.#userJson.get(this.#owner[slot]) ?? 'null', version }
  }

  /** The record of a slot at `version`, decoded once while it is read often. */
  #record (slot: number, version: number): string {
    let data = this.#recent.get(version)
    if (data !== undefined) return data
    data = this.#older.get(version)
    if (data === undefined) data = this.#data.get(slot) as string
    if (data.length <= RECENT_MAX_LENGTH) {
      if (this.#recent.size >= RECENT_SIZE) {
        this.#older = this.#recent
        this.#recent = new Map()
      }
      this.#recent.set(version, data)
    }
    return data
  }

  async list (userKey: string): Promise<Array<StoredDevice & { fingerprint: string }>> {
    const user = this.#users.get(userKey)
    if (user === undefined) return []
    const now = Date.now()
    const json = this.#userJson.get(user) ?? 'null'
    const listed: Array<StoredDevice & { fingerprint: string }> = []
    for (let slot = this.#first[user]; slot !== NONE; slot = this.#next[slot]) {
      if (this.#expires[slot] <= now) continue
      listed.push({
        fingerprint: (this.#key.get(slot) as string).slice(4),
        data: this.#data.get(slot) as string,
        user: json,
        version: this.#version[slot]
      })
    }
    return listed
  }

  async commit (change: DeviceChange): Promise<CommitResult> {
    const now = Date.now()
    this.#evict(now)
    const bucket = userBucket(change.userKey)
    for (const write of change.devices) {
      if (write.version === undefined) continue
      const slot = this.#devices.get(bucket + write.fingerprint)
      if ((slot === undefined ? 0 : this.#version[slot]) !== write.version) return { ok: false, evicted: [] }
    }
    for (const write of change.devices) {
      const key = bucket + write.fingerprint
      const slot = this.#devices.get(key)
      if (write.data === null) {
        if (slot !== undefined) this.#release(slot)
      } else if (slot === undefined) {
        this.#allocate(key, write.data, this.#user(change.userKey), now + write.ttl, write.usedAt)
      } else {
        this.#data.set(slot, write.data)
        this.#version[slot] = ++this.#versions
        this.#setExpiry(slot, now + write.ttl)
        this.#usedAt[slot] = write.usedAt
        this.#unlink(slot)
        this.#link(slot)
      }
    }
    const user = this.#users.get(change.userKey)
    if (user === undefined) return { ok: true, evicted: [] }
    if (change.user !== undefined) this.#userJson.set(user, change.user)
    const evicted: string[] = []
    if (change.limit !== undefined) {
      // The devices this change writes stay, so the user's slot does too.
      const written = new Set(change.devices.map((write) => write.fingerprint))
      let slot = this.#first[user]
      while (this.#count[user] > change.limit && slot !== NONE) {
        const next = this.#next[slot]
        const fingerprint = (this.#key.get(slot) as string).slice(4)
        if (!written.has(fingerprint)) {
          evicted.push(fingerprint)
          this.#release(slot)
        }
        slot = next
      }
    }
    return { ok: true, evicted }
  }

  async users (): Promise<string[]> {
    const now = Date.now()
    const users: string[] = []
    for (const user of this.#users.slots()) {
      for (let slot = this.#first[user]; slot !== NONE; slot = this.#next[slot]) {
        if (this.#expires[slot] > now) {
          users.push(this.#userJson.get(user) ?? 'null')
          break
        }
      }
    }
    return users
  }

  /**
   * Counts of what the store holds, expired devices not yet evicted included; `heap` is the
   * number of devices waiting in the expiry heap. For tests and benchmarks.
   */
  get size (): { devices: number, users: number, heap: number } {
    return { devices: this.#devices.size, users: this.#users.size, heap: this.#heapSize }
  }

  /** Slots allocated in the arrays (live or free), devices and users: for tests of the compaction. */
  get slots (): { devices: number, users: number } {
    return { devices: this.#top, users: this.#userTop }
  }

  // ---- device slots

  /** A new device: a slot, in its user's list and in the expiry heap. */
  #allocate (key: string, data: string, owner: number, expires: number, usedAt: number): void {
    let slot = this.#free
    if (slot !== NONE) {
      this.#free = this.#next[slot]
    } else {
      if (this.#top === this.#expires.length) this.#resizeDevices(this.#expires.length * 2)
      slot = this.#top++
    }
    this.#live++
    this.#key.set(slot, key)
    this.#data.set(slot, data)
    this.#version[slot] = ++this.#versions
    this.#owner[slot] = owner
    this.#expires[slot] = expires
    this.#usedAt[slot] = usedAt
    this.#devices.set(key, slot)
    this.#link(slot)
    this.#count[owner]++
    this.#heapPush(slot)
  }

  /** Deletes a device: from the index, its user's list (the user too once it has none left) and the heap. */
  #release (slot: number): void {
    const owner = this.#owner[slot]
    this.#devices.delete(this.#key.get(slot) as string)
    this.#unlink(slot)
    if (--this.#count[owner] === 0) this.#releaseUser(owner)
    this.#heapRemove(slot)
    this.#key.set(slot, undefined)
    this.#data.set(slot, undefined)
    this.#owner[slot] = NONE
    this.#next[slot] = this.#free
    this.#free = slot
    this.#live--
  }

  /** Puts a device in its user's list, in `usedAt` order: walking from the tail, as writes come in order. */
  #link (slot: number): void {
    const owner = this.#owner[slot]
    const usedAt = this.#usedAt[slot]
    let after = this.#last[owner]
    while (after !== NONE && this.#usedAt[after] > usedAt) after = this.#prev[after]
    const before = after === NONE ? this.#first[owner] : this.#next[after]
    this.#prev[slot] = after
    this.#next[slot] = before
    if (after === NONE) this.#first[owner] = slot
    else this.#next[after] = slot
    if (before === NONE) this.#last[owner] = slot
    else this.#prev[before] = slot
  }

  #unlink (slot: number): void {
    const owner = this.#owner[slot]
    const prev = this.#prev[slot]
    const next = this.#next[slot]
    if (prev === NONE) this.#first[owner] = next
    else this.#next[prev] = next
    if (next === NONE) this.#last[owner] = prev
    else this.#prev[next] = prev
  }

  #resizeDevices (capacity: number): void {
    this.#key.resize(capacity)
    this.#data.resize(capacity)
    this.#version = grown(this.#version, capacity)
    this.#expires = grown(this.#expires, capacity)
    this.#usedAt = grown(this.#usedAt, capacity)
    this.#owner = grown(this.#owner, capacity, NONE)
    this.#prev = grown(this.#prev, capacity)
    this.#next = grown(this.#next, capacity)
    this.#heapAt = grown(this.#heapAt, capacity)
    this.#heap = grown(this.#heap, capacity)
  }

  /** Moves the live devices to the lowest slots, in order, and shrinks the arrays to fit them twice. */
  #compactDevices (): void {
    const top = this.#top
    const { moved, live, capacity } = compaction(top, (slot) => this.#owner[slot] !== NONE)
    const version = new Float64Array(capacity)
    const expires = new Float64Array(capacity)
    const usedAt = new Float64Array(capacity)
    const owner = new Int32Array(capacity).fill(NONE)
    const prev = new Int32Array(capacity)
    const next = new Int32Array(capacity)
    const heapAt = new Int32Array(capacity)
    const heap = new Int32Array(capacity)
    const at = (slot: number): number => slot === NONE ? NONE : moved[slot]
    for (let slot = 0; slot < top; slot++) {
      const to = moved[slot]
      if (to === NONE) continue
      version[to] = this.#version[slot]
      expires[to] = this.#expires[slot]
      usedAt[to] = this.#usedAt[slot]
      owner[to] = this.#owner[slot]
      prev[to] = at(this.#prev[slot])
      next[to] = at(this.#next[slot])
      heapAt[to] = this.#heapAt[slot]
    }
    for (let i = 0; i < this.#heapSize; i++) heap[i] = moved[this.#heap[i]]
    this.#key.move(moved, top, capacity)
    this.#data.move(moved, top, capacity)
    this.#devices.renumber(moved)
    for (const user of this.#users.slots()) {
      this.#first[user] = at(this.#first[user])
      this.#last[user] = at(this.#last[user])
    }
    this.#version = version
    this.#expires = expires
    this.#usedAt = usedAt
    this.#owner = owner
    this.#prev = prev
    this.#next = next
    this.#heapAt = heapAt
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
      this.#userFree = this.#first[user]
    } else {
      if (this.#userTop === this.#first.length) this.#resizeUsers(this.#first.length * 2)
      user = this.#userTop++
    }
    this.#userLive++
    this.#userKey.set(user, userKey)
    this.#userJson.set(user, undefined)
    this.#first[user] = NONE
    this.#last[user] = NONE
    this.#count[user] = 0
    this.#users.set(userKey, user)
    return user
  }

  #releaseUser (user: number): void {
    this.#users.delete(this.#userKey.get(user) as string)
    this.#userKey.set(user, undefined)
    this.#userJson.set(user, undefined)
    this.#first[user] = this.#userFree
    this.#userFree = user
    this.#userLive--
  }

  #resizeUsers (capacity: number): void {
    this.#userKey.resize(capacity)
    this.#userJson.resize(capacity)
    this.#first = grown(this.#first, capacity)
    this.#last = grown(this.#last, capacity)
    this.#count = grown(this.#count, capacity)
  }

  #compactUsers (): void {
    const top = this.#userTop
    const { moved, live, capacity } = compaction(top, (user) => this.#userKey.has(user))
    const first = new Int32Array(capacity)
    const last = new Int32Array(capacity)
    const count = new Int32Array(capacity)
    for (let user = 0; user < top; user++) {
      const to = moved[user]
      if (to === NONE) continue
      first[to] = this.#first[user]
      last[to] = this.#last[user]
      count[to] = this.#count[user]
    }
    this.#userKey.move(moved, top, capacity)
    this.#userJson.move(moved, top, capacity)
    this.#users.renumber(moved)
    for (let slot = 0; slot < this.#top; slot++) {
      if (this.#owner[slot] !== NONE) this.#owner[slot] = moved[this.#owner[slot]]
    }
    this.#first = first
    this.#last = last
    this.#count = count
    this.#userTop = live
    this.#userFree = NONE
  }

  // ---- expiry

  #evict (now: number): void {
    while (this.#heapSize > 0 && this.#expires[this.#heap[0]] <= now) this.#release(this.#heap[0])
    // Compacting moves slots, so it happens here, before a write looks any slot up, never
    // while one is being worked on. Amortized: a compaction of n slots follows 3n/4 releases.
    if (this.#top > MIN_CAPACITY && this.#live * 4 < this.#top) this.#compactDevices()
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
