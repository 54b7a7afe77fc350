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
 * The session records a store's `getSession` parses, cached by JSON text and shared between
 * reads: fastify-pow never changes a record, and what it gives the application is a copy (see
 * `copyMetadata`). (Freezing them would cost more than the parse it saves.) Users are not
 * cached: they are parsed on every read, a fresh object a handler may change. Two generations
 * of maps, so that a miss costs no eviction: when the newer one is full, the older one goes.
 * Each store has its own.
 */
export class ParsedRecords {
  #current = new Map<string, SessionRecord>()
  #previous = new Map<string, SessionRecord>()

  get (json: string): SessionRecord {
    let record = this.#current.get(json)
    if (record !== undefined) return record
    record = this.#previous.get(json) ?? (JSON.parse(json) as SessionRecord)
    if (json.length > MAX_CACHED_LENGTH) return record
    if (this.#current.size >= GENERATION_SIZE) {
      this.#previous = this.#current
      this.#current = new Map()
    }
    this.#current.set(json, record)
    return record
  }

  /** Lets go of a record no longer in the store (for a store that knows when one goes). */
  forget (json: string): void {
    this.#current.delete(json)
    this.#previous.delete(json)
  }
}
