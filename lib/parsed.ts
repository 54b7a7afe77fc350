import type { PowMetadata, SessionRecord } from './types.js'

// Session records parsed lately, by their JSON text: a browser sends its session cookie with every
// request, and parsing the record was the largest part of reading a session. At most 512
// records (two generations of 256) of at most 2 kB of JSON each: about 150 kB with little
// metadata, 1.5 MB at most.
const GENERATION_SIZE = 256
const MAX_CACHED_LENGTH = 2048

/** A fresh copy of a parsed JSON value: the same as parsing its text again. */
function copyJson (value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value
  if (Array.isArray(value)) {
    const array = new Array(value.length)
    for (let i = 0; i < value.length; i++) array[i] = copyJson(value[i])
    return array
  }
  const object: Record<string, unknown> = {}
  for (const key of Object.keys(value)) {
    const copy = copyJson((value as Record<string, unknown>)[key])
    // JSON.parse makes "__proto__" an own property; plain assignment would set the prototype.
    if (key === '__proto__') Object.defineProperty(object, key, { value: copy, enumerable: true, writable: true, configurable: true })
    else object[key] = copy
  }
  return object
}

/** A session's custom metadata (JSON values only) as the application may change it: a copy of the shared one. */
export function copyMetadata (metadata: PowMetadata): PowMetadata {
  return copyJson(metadata) as PowMetadata
}

/**
 * The session records a store's `getSession` parses, cached and shared between reads:
 * fastify-pow never changes a record, and what it gives the application is a copy (see
 * `copyMetadata`). (Freezing them would cost more than the parse it saves.) Users are not
 * cached: they are parsed on every read, a fresh object a handler may change. Two generations
 * of maps, so that a miss costs no eviction: when the newer one is full, the older one goes.
 * Each store has its own. The key is the JSON text itself (`get`), or anything that names one
 * text for good, such as MemoryStore's version of a stored string (`find` and `parse`).
 */
export class ParsedRecords<K = string> {
  #current = new Map<K, SessionRecord>()
  #previous = new Map<K, SessionRecord>()

  /** The record of this JSON text, cached under the text. */
  get (this: ParsedRecords<string>, json: string): SessionRecord {
    return this.find(json) ?? this.parse(json, json)
  }

  /** The record cached under `key`, if it is. */
  find (key: K): SessionRecord | undefined {
    const record = this.#current.get(key)
    if (record !== undefined) return record
    const older = this.#previous.get(key)
    if (older !== undefined) this.#keep(key, older)
    return older
  }

  /** Parses `json` and caches the record under `key` (unless the text is too long to keep). */
  parse (key: K, json: string): SessionRecord {
    const record = JSON.parse(json) as SessionRecord
    if (json.length <= MAX_CACHED_LENGTH) this.#keep(key, record)
    return record
  }

  /** Lets go of a record no longer in the store (for a store that knows when one goes). */
  forget (key: K): void {
    this.#current.delete(key)
    this.#previous.delete(key)
  }

  #keep (key: K, record: SessionRecord): void {
    if (this.#current.size >= GENERATION_SIZE) {
      this.#previous = this.#current
      this.#current = new Map()
    }
    this.#current.set(key, record)
  }
}
