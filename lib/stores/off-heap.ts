import { constants } from 'node:buffer'
import { randomBytes } from 'node:crypto'

/*
 * Storage off the V8 heap, for MemoryStore. Each young-generation collection (scavenge) of
 * Node 20's V8 visits the header of every page of the old generation, so its pause grows with
 * the heap a process keeps, whatever is in it: with a million sessions kept as strings and Map
 * entries (about 540 MB), each scavenge took 1.2 to 2 ms instead of 0.5, and GC became a fifth
 * of a request's CPU time. Bytes in a Buffer or a typed array are outside that heap (only a
 * small object per buffer is on it), so the store keeps its strings and its indexes there.
 */

const EMPTY = -1
/** A column's strings kept as read (`keepReads`): at most this many, of at most this many bytes. */
const READ_CACHE_SIZE = 512
const READ_CACHE_MAX_BYTES = 4096
const MIN_BYTES = 4096
/** The most one column holds: its byte offsets are 32-bit (Node 22 allows larger Buffers). */
const MAX_BYTES = Math.min(constants.MAX_LENGTH, 2 ** 32 - 1)

/** A buffer of its own (not a slice of Node's shared pool) of at least `size` bytes, and some room. */
function bytesOf (size: number): Buffer {
  if (size > MAX_BYTES) {
    throw new RangeError(`MemoryStore: more than ${MAX_BYTES} bytes of sessions in one process; use RedisStore`)
  }
  // Room for half as much again: enough that copying the live strings stays a small share of
  // the writes, little enough that the slack is not most of what a store uses.
  return Buffer.allocUnsafeSlow(Math.min(Math.max(MIN_BYTES, Math.ceil(size * 1.5)), MAX_BYTES))
}

/**
 * A string as the column gives it back: UTF-8 has no lone surrogates, so they come back as
 * U+FFFD (as from Redis, whose keys and values are bytes too).
 */
function asStored (value: string): string {
  return Buffer.from(value, 'utf8').toString('utf8')
}

/** A copy of a typed array with a larger capacity; the new elements are `fill`. */
export function grown<T extends Int32Array | Uint32Array | Float64Array | Uint8Array> (array: T, capacity: number, fill = 0): T {
  const next = new (array.constructor as new (n: number) => T)(capacity)
  next.set(array)
  if (fill !== 0) next.fill(fill, array.length)
  return next
}

/**
 * A column of optional strings by index (a slot), kept as UTF-8 in one buffer. A string set
 * again is appended and its old bytes become garbage, reclaimed when the buffer is full: the
 * live strings are then copied, in slot order, into a buffer half as large again as they are.
 */
export class StringColumn {
  #bytes: Buffer = Buffer.allocUnsafeSlow(MIN_BYTES)
  /** Byte offset of each slot's string. */
  #start: Uint32Array
  /** Byte length of each slot's string, EMPTY when it has none. */
  #length: Int32Array
  /** Bytes written so far: live strings and garbage. */
  #end = 0
  #garbage = 0
  /**
   * With `keepReads`: strings read lately, by slot, so that a string read on every request is
   * decoded once and read back as the same string (whose hash V8 keeps). At most READ_CACHE_SIZE.
   */
  #read: Map<number, string> | undefined

  constructor (capacity: number, options: { keepReads?: boolean } = {}) {
    this.#start = new Uint32Array(capacity)
    this.#length = new Int32Array(capacity).fill(EMPTY)
    if (options.keepReads === true) this.#read = new Map()
  }

  /** Bytes held by live strings. */
  get bytes (): number {
    return this.#end - this.#garbage
  }

  has (slot: number): boolean {
    return this.#length[slot] !== EMPTY
  }

  get (slot: number): string | undefined {
    const read = this.#read
    const kept = read?.get(slot)
    if (kept !== undefined) return kept
    const length = this.#length[slot]
    if (length === EMPTY) return undefined
    const start = this.#start[slot]
    const value = this.#bytes.toString('utf8', start, start + length)
    if (read !== undefined && length <= READ_CACHE_MAX_BYTES) {
      if (read.size >= READ_CACHE_SIZE) read.clear()
      read.set(slot, value)
    }
    return value
  }

  set (slot: number, value: string | undefined): void {
    this.#read?.delete(slot)
    // A UTF-16 code unit is at most 3 bytes of UTF-8. Room is made first, so that a column that
    // cannot grow (it throws) still holds what it held.
    const room = value === undefined ? 0 : value.length * 3
    if (this.#end + room > this.#bytes.length) this.#reclaim(room)
    const old = this.#length[slot]
    if (old !== EMPTY) {
      this.#garbage += old
      this.#length[slot] = EMPTY
    }
    if (value === undefined) return
    const written = this.#bytes.write(value, this.#end, 'utf8')
    this.#start[slot] = this.#end
    this.#length[slot] = written
    this.#end += written
  }

  /** Whether the slot's string starts with these UTF-8 bytes. */
  startsWith (slot: number, prefix: Uint8Array): boolean {
    const length = this.#length[slot]
    if (length < prefix.length) return false
    const start = this.#start[slot]
    return this.#bytes.compare(prefix, 0, prefix.length, start, start + prefix.length) === 0
  }

  /**
   * Whether the slot holds exactly `head + tail` (a key may come in two parts, as a store read's
   * address does: joining them would make V8 build and flatten a new string).
   */
  equals (slot: number, head: string, tail = ''): boolean {
    const length = this.#length[slot]
    const total = head.length + tail.length
    if (length !== total) {
      // Only a string with characters beyond ASCII has more bytes than characters.
      return length > total && this.get(slot) === asStored(head + tail)
    }
    const bytes = this.#bytes
    const start = this.#start[slot]
    let codes = 0
    for (let i = 0; i < head.length; i++) {
      const code = head.charCodeAt(i)
      if (bytes[start + i] !== code) return false
      codes |= code
    }
    const from = start + head.length
    for (let i = 0; i < tail.length; i++) {
      const code = tail.charCodeAt(i)
      if (bytes[from + i] !== code) return false
      codes |= code
    }
    // Beyond ASCII a character is not one byte (bytes equal to the codes are another string):
    // compare the strings.
    return codes <= 0x7f || this.get(slot) === asStored(head + tail)
  }

  /** Room for `capacity` (more) slots; the new ones are empty. */
  resize (capacity: number): void {
    this.#start = grown(this.#start, capacity)
    this.#length = grown(this.#length, capacity, EMPTY)
  }

  /**
   * Moves the strings of slots `0..top` to `moved[slot]` (NONE, i.e. -1: the slot is dropped,
   * and must be empty), in arrays of `capacity` slots.
   */
  move (moved: Int32Array, top: number, capacity: number): void {
    this.#read?.clear()
    const start = new Uint32Array(capacity)
    const length = new Int32Array(capacity).fill(EMPTY)
    for (let slot = 0; slot < top; slot++) {
      const to = moved[slot]
      if (to === EMPTY) continue
      start[to] = this.#start[slot]
      length[to] = this.#length[slot]
    }
    this.#start = start
    this.#length = length
    // The slots shrank because most strings went: so does the buffer, once they are mostly garbage.
    if (this.#garbage > this.#end - this.#garbage && this.#bytes.length > MIN_BYTES) this.#reclaim(0)
  }

  /** Makes room for `room` more bytes: copies the live strings into a new buffer, with room to spare. */
  #reclaim (room: number): void {
    const bytes = bytesOf(this.#end - this.#garbage + room)
    let end = 0
    const lengths = this.#length
    const starts = this.#start
    // Strings next to each other in the old buffer stay so in the new one: copied as one run.
    let runFrom = 0
    let runTo = 0
    for (let slot = 0; slot < lengths.length; slot++) {
      const length = lengths[slot]
      if (length === EMPTY) continue
      const start = starts[slot]
      if (start !== runTo) {
        if (runTo > runFrom) this.#bytes.copy(bytes, end - (runTo - runFrom), runFrom, runTo)
        runFrom = start
        runTo = start
      }
      runTo += length
      starts[slot] = end
      end += length
    }
    if (runTo > runFrom) this.#bytes.copy(bytes, end - (runTo - runFrom), runFrom, runTo)
    this.#bytes = bytes
    this.#end = end
    this.#garbage = 0
  }
}

const MIN_TABLE = 16

/**
 * A hash index from strings to slots (small non-negative integers) whose strings are in a
 * {@link StringColumn}: `index.get(key)` is the slot whose column string is `key`. Open
 * addressing with linear probing in typed arrays, at most half full; a deletion shifts the
 * following entries back, so there are no tombstones. The hash is FNV-1a with a random seed
 * per index, so that which keys collide cannot be known in advance.
 */
export class StringIndex {
  #keys: StringColumn
  /** Slot + 1 at each position, 0 when the position is free. */
  #table = new Int32Array(MIN_TABLE)
  /** The hash of the key at each position. */
  #hashes = new Int32Array(MIN_TABLE)
  #mask = MIN_TABLE - 1
  #size = 0
  #seed = randomBytes(4).readInt32LE(0)

  constructor (keys: StringColumn) {
    this.#keys = keys
  }

  get size (): number {
    return this.#size
  }

  /**
   * The slot whose key is `head + tail`: a key may come in two parts, as a store read's address
   * does (joining them would make V8 build and flatten a new string on every read).
   */
  get (head: string, tail = ''): number | undefined {
    const at = this.#find(head, tail, this.#hash(head, tail))
    return at < 0 ? undefined : this.#table[at] - 1
  }

  /**
   * Indexes `slot` under `key`, which must be the slot's string in the column. A key indexed
   * already moves to `slot`; the slot it was at must still hold it then (MemoryStore deletes a
   * key before its slot is cleared).
   */
  set (key: string, slot: number): void {
    const hash = this.#hash(key)
    const at = this.#find(key, '', hash)
    if (at >= 0) {
      this.#table[at] = slot + 1
      return
    }
    if ((this.#size + 1) * 2 > this.#table.length) this.#rehash(this.#table.length * 2)
    let position = hash & this.#mask
    while (this.#table[position] !== 0) position = (position + 1) & this.#mask
    this.#table[position] = slot + 1
    this.#hashes[position] = hash
    this.#size++
  }

  delete (key: string): boolean {
    let hole = this.#find(key, '', this.#hash(key))
    if (hole < 0) return false
    const table = this.#table
    const hashes = this.#hashes
    const mask = this.#mask
    // Back-shift: each following entry of the run moves into the hole when the hole lies between
    // its home position and where it is.
    for (let position = (hole + 1) & mask; table[position] !== 0; position = (position + 1) & mask) {
      if (((position - (hashes[position] & mask)) & mask) >= ((position - hole) & mask)) {
        table[hole] = table[position]
        hashes[hole] = hashes[position]
        hole = position
      }
    }
    table[hole] = 0
    this.#size--
    if (this.#table.length > MIN_TABLE && this.#size * 8 < this.#table.length) this.#rehash(this.#table.length / 2)
    return true
  }

  /** Every slot indexed, in no particular order. */
  slots (): number[] {
    const slots: number[] = []
    for (const entry of this.#table) if (entry !== 0) slots.push(entry - 1)
    return slots
  }

  /** After the slots moved (see StringColumn.move): each indexed slot becomes `moved[slot]`. */
  renumber (moved: Int32Array): void {
    const table = this.#table
    for (let position = 0; position < table.length; position++) {
      if (table[position] !== 0) table[position] = moved[table[position] - 1] + 1
    }
  }

  /** The hash of the key `head + tail` as the column stores it, so that a key and what it reads back as agree. */
  #hash (head: string, tail = ''): number {
    let hash = this.#seed ^ 0x811c9dc5
    let surrogates = false
    for (let i = 0; i < head.length; i++) {
      const code = head.charCodeAt(i)
      surrogates ||= (code & 0xf800) === 0xd800
      hash = Math.imul(hash ^ code, 0x01000193)
    }
    for (let i = 0; i < tail.length; i++) {
      const code = tail.charCodeAt(i)
      surrogates ||= (code & 0xf800) === 0xd800
      hash = Math.imul(hash ^ code, 0x01000193)
    }
    // A lone surrogate is stored as U+FFFD: hash that (equals() already compares that way).
    if (surrogates) {
      const key = head + tail
      const stored = asStored(key)
      if (stored !== key) return this.#hash(stored)
    }
    return hash
  }

  /** The position of the key `head + tail`, or -1. */
  #find (head: string, tail: string, hash: number): number {
    const table = this.#table
    const mask = this.#mask
    for (let position = hash & mask; table[position] !== 0; position = (position + 1) & mask) {
      if (this.#hashes[position] === hash && this.#keys.equals(table[position] - 1, head, tail)) return position
    }
    return -1
  }

  #rehash (size: number): void {
    const table = this.#table
    const hashes = this.#hashes
    this.#table = new Int32Array(size)
    this.#hashes = new Int32Array(size)
    this.#mask = size - 1
    for (let position = 0; position < table.length; position++) {
      if (table[position] === 0) continue
      let to = hashes[position] & this.#mask
      while (this.#table[to] !== 0) to = (to + 1) & this.#mask
      this.#table[to] = table[position]
      this.#hashes[to] = hashes[position]
    }
  }
}
