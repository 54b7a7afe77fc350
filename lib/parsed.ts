import type { PowMetadata } from './types.js'

// Device records and users parsed lately, by their JSON text: a browser sends its session cookie
// with every request, and parsing was the largest part of reading a device. At most 512 of each
// (two generations of 256) of at most 4 kB of JSON each: about 200 kB with little metadata, a
// few MB at most.
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
 * Values by their JSON text, in two generations of maps, so that a miss costs no eviction: when
 * the newer one is full, the older one goes. At most 512 entries of at most 4 kB of JSON each.
 */
class Generations<T> {
  #current = new Map<string, T>()
  #previous = new Map<string, T>()

  get (json: string): T | undefined {
    const value = this.#current.get(json)
    if (value !== undefined) return value
    const older = this.#previous.get(json)
    if (older !== undefined) this.keep(json, older)
    return older
  }

  keep (json: string, value: T): void {
    if (json.length > MAX_CACHED_LENGTH) return
    if (this.#current.size >= GENERATION_SIZE) {
      this.#previous = this.#current
      this.#current = new Map()
    }
    this.#current.set(json, value)
  }
}

/**
 * Device records parsed lately, by their JSON text: a browser sends its session cookie with
 * every request, and parsing the record was the largest part of reading it. fastify-pow never
 * changes a parsed record (the lifecycle module copies what it changes, and what the
 * application gets is a copy, see `copyMetadata`); freezing them would cost more than the
 * parse saves.
 */
export class ParsedRecords<T extends { fingerprint: string }> {
  readonly #cache = new Generations<T>()
  readonly #decode: (json: string, fingerprint: string) => T

  constructor (decode: (json: string, fingerprint: string) => T) {
    this.#decode = decode
  }

  /** The record of this JSON text at `fingerprint`, cached under the text. */
  get (json: string, fingerprint: string): T {
    const cached = this.#cache.get(json)
    // A record's text names secrets of its device only, so it never fits two fingerprints;
    // checked all the same, as the text alone is the key.
    if (cached !== undefined && cached.fingerprint === fingerprint) return cached
    const value = this.#decode(json, fingerprint)
    this.#cache.keep(json, value)
    return value
  }
}

/** A parsed user and the keys of its values that are objects or arrays (copied deeply). */
interface Template {
  value: Record<string, unknown>
  nested: string[]
}

/**
 * Users (credentials, JSON text) parsed lately. Each read gets a fresh object, equal to what
 * `JSON.parse` gives, which a handler may change: a copy of the cached one, made by spreading it
 * (V8 copies a plain object of one shape in one step), its nested objects and arrays copied
 * deeply. Parsing the text again costs several times as much.
 */
export class ParsedUsers {
  readonly #cache = new Generations<Template>()

  get (json: string): unknown {
    let template = this.#cache.get(json)
    if (template === undefined) {
      const value: unknown = JSON.parse(json)
      // Not kept (an array, a primitive or a text over the limit): this parse is fresh already.
      if (typeof value !== 'object' || value === null || Array.isArray(value) || json.length > MAX_CACHED_LENGTH) return value
      const record = value as Record<string, unknown>
      template = { value: record, nested: Object.keys(record).filter((key) => typeof record[key] === 'object' && record[key] !== null) }
      this.#cache.keep(json, template)
    }
    // Own enumerable properties as JSON.parse made them, "__proto__" included (spread defines it).
    const user: Record<string, unknown> = { ...template.value }
    for (const key of template.nested) user[key] = copyJson(template.value[key])
    return user
  }
}
