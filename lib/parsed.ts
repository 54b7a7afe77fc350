import type { PowMetadata } from './types.js'

// Device records parsed lately, by their JSON text: a browser sends its session cookie with every
// request, and parsing the record was the largest part of reading it. At most 512
// records (two generations of 256) of at most 4 kB of JSON each: about 200 kB with little
// metadata, a few MB at most.
const GENERATION_SIZE = 256
const MAX_CACHED_LENGTH = 4096

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
 * Device records parsed lately, by their JSON text: a browser sends its session cookie with
 * every request, and parsing the record was the largest part of reading it. fastify-pow never
 * changes a parsed record (the lifecycle module copies what it changes, and what the
 * application gets is a copy, see `copyMetadata`); freezing them would cost more than the
 * parse saves. Users are not cached: they are parsed on every read, a fresh object a handler
 * may change. Two generations of maps, so that a miss costs no eviction: when the newer one is
 * full, the older one goes.
 */
export class ParsedRecords<T extends { fingerprint: string }> {
  #current = new Map<string, T>()
  #previous = new Map<string, T>()
  readonly #decode: (json: string, fingerprint: string) => T

  constructor (decode: (json: string, fingerprint: string) => T) {
    this.#decode = decode
  }

  /** The record of this JSON text at `fingerprint`, cached under the text. */
  get (json: string, fingerprint: string): T {
    let value = this.#current.get(json)
    if (value === undefined) {
      value = this.#previous.get(json)
      if (value !== undefined) this.#keep(json, value)
    }
    // A record's text names secrets of its device only, so it never fits two fingerprints;
    // checked all the same, as the text alone is the key.
    if (value !== undefined && value.fingerprint === fingerprint) return value
    value = this.#decode(json, fingerprint)
    if (json.length <= MAX_CACHED_LENGTH) this.#keep(json, value)
    return value
  }

  #keep (json: string, value: T): void {
    if (this.#current.size >= GENERATION_SIZE) {
      this.#previous = this.#current
      this.#current = new Map()
    }
    this.#current.set(json, value)
  }
}
