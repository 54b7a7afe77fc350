import type { PowMetadata } from './types.js'

// Device records (by device) and users (by their JSON text) parsed lately: a browser sends its
// session cookie with every request, and parsing was the largest part of reading a device. At
// most 512 of each (two generations of 256) of at most 4 kB of JSON each: about 200 kB with
// little metadata, a few MB at most.
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
 * Values by a string key, in two generations of maps, so that a miss costs no eviction: when
 * the newer one is full, the older one goes. At most 512 entries.
 */
class Generations<T> {
  #current = new Map<string, T>()
  #previous = new Map<string, T>()

  get (key: string): T | undefined {
    const value = this.#current.get(key)
    if (value !== undefined) return value
    const older = this.#previous.get(key)
    if (older !== undefined) this.keep(key, older)
    return older
  }

  keep (key: string, value: T): void {
    if (this.#current.size >= GENERATION_SIZE) {
      this.#previous = this.#current
      this.#current = new Map()
    }
    this.#current.set(key, value)
  }
}

/**
 * Device records parsed lately, one per device: a browser sends its session cookie with every
 * request, and parsing the record was the largest part of reading it. Found by the fingerprint
 * (whose hash V8 keeps on the string: it comes from the cookie's cached verification), then the
 * text read is compared in full with the text parsed; keyed by the text, each read of a store
 * that answers with new strings (Redis, PostgreSQL) would hash all of it. fastify-pow never
 * changes a parsed record (the lifecycle module copies what it changes, and what the
 * application gets is a copy, see `copyMetadata`); freezing them would cost more than the
 * parse saves.
 */
export class ParsedRecords<T extends { fingerprint: string }> {
  readonly #cache = new Generations<{ json: string, value: T }>()
  readonly #decode: (json: string, fingerprint: string) => T

  constructor (decode: (json: string, fingerprint: string) => T) {
    this.#decode = decode
  }

  /** The record of this JSON text at `fingerprint`: the device's cached one when its text is this one. */
  get (json: string, fingerprint: string): T {
    const cached = this.#cache.get(fingerprint)
    if (cached !== undefined && cached.json === json) return cached.value
    const value = this.#decode(json, fingerprint)
    if (json.length <= MAX_CACHED_LENGTH) this.#cache.keep(fingerprint, { json, value })
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
