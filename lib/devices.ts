import { newSecret, userBucket } from './crypto.js'
import { storeError } from './errors.js'
import { type Device, isLive, type Mint, type Rules, type Step, storeTtl } from './lifecycle.js'
import { ParsedRecords, ParsedUsers } from './parsed.js'
import type { CommitResult, DeviceWrite, PowStore, PowUser, StoredDevice } from './types.js'

/** A device as read: the record, the user's credentials (JSON text) and the version a write must name. */
export interface Loaded {
  device: Device
  user: string
  version: number
}

// How often a step is decided again because another request wrote the device in between. Two
// requests of one browser rarely collide twice; a third collision is answered as a store failure.
const ATTEMPTS = 3

/** New secrets for a device, as the lifecycle module asks for them. */
export function minter (bucket: string, fingerprint: string): Mint {
  return () => newSecret(bucket, fingerprint)
}

/**
 * A device as its store keeps it: JSON without what the store holds anyway (the fingerprint is
 * its address) and without empty fields. A million devices in a MemoryStore are a million of
 * these strings, so every byte left out counts.
 */
function encode (device: Device): string {
  const { fingerprint, token, retired, ...rest } = device
  const stored: Partial<Device> = rest
  if (token !== null) stored.token = token
  if (retired.length > 0) stored.retired = retired
  return JSON.stringify(stored)
}

/** A device from its stored record (`encode`) and its fingerprint, the store's address. */
export function decodeDevice (data: string, fingerprint: string): Device {
  const device = JSON.parse(data) as Device
  device.fingerprint = fingerprint
  device.token ??= null
  device.retired ??= []
  return device
}

/** The write that stores `device` as it is now: deleted once nothing in it matters any more. */
export function deviceWrite (device: Device, version: number | undefined, now: number, rules: Rules): DeviceWrite {
  const ttl = storeTtl(device, now, rules)
  return ttl === 0
    ? { fingerprint: device.fingerprint, version, data: null, ttl: 0, usedAt: now }
    : { fingerprint: device.fingerprint, version, data: encode(device), ttl, usedAt: now }
}

/** The write that deletes a device, whatever its version. */
export function deviceDelete (fingerprint: string, now: number): DeviceWrite {
  return { fingerprint, data: null, ttl: 0, usedAt: now }
}

/**
 * The store, spoken to in devices: this is where the lifecycle's steps meet storage. Reads are
 * parsed (and cached); a step is written under the version it was decided on, and decided again
 * on a fresh read when another request wrote the device first.
 */
/** What a store's failure becomes (a 503), and news that it answers again: `Pow`'s outage log. */
export interface StoreHealth {
  storeAnswered: () => void
  storeFailed: (err: unknown) => Error
}

export class Devices {
  /** The store with its failures mapped to 503s. */
  readonly #store: PowStore
  /** The store as given: `read`, on every authenticated request, calls it without the wrapper. */
  readonly #raw: PowStore
  readonly #health: StoreHealth
  readonly #rules: Rules
  readonly #parsed = new ParsedRecords<Device>(decodeDevice)
  readonly #users = new ParsedUsers()

  constructor (store: PowStore, raw: PowStore, health: StoreHealth, rules: Rules) {
    this.#store = store
    this.#raw = raw
    this.#health = health
    this.#rules = rules
  }

  /**
   * The device as the store has it. At once when the store answers at once (MemoryStore), so
   * that a request that needs no write is authenticated without a promise; else a promise.
   */
  read (bucket: string, fingerprint: string): Promise<Loaded | null> | Loaded | null {
    let stored
    try {
      stored = this.#raw.read(bucket, fingerprint)
    } catch (err) {
      throw this.#health.storeFailed(err)
    }
    // Any thenable, as `await` would take it (a promise of another realm or library): a native
    // promise from here on.
    if (typeof (stored as PromiseLike<unknown> | null)?.then === 'function') {
      return Promise.resolve(stored).then((found) => this.#loaded(found, fingerprint), (err: unknown) => { throw this.#health.storeFailed(err) })
    }
    return this.#loaded(stored as StoredDevice | null, fingerprint)
  }

  #loaded (stored: StoredDevice | null, fingerprint: string): Loaded | null {
    this.#health.storeAnswered()
    return stored === null ? null : { device: this.#parsed.get(stored.data, fingerprint), user: stored.user, version: stored.version }
  }

  /** A user from its credentials as stored (JSON text): a fresh object, as `JSON.parse` would give. */
  user (json: string): PowUser {
    return this.#users.get(json) as PowUser
  }

  /** The user's live devices, least recently used first. */
  async list (userKey: string): Promise<Loaded[]> {
    const now = Date.now()
    const listed: Loaded[] = []
    for (const stored of await this.#store.list(userKey)) {
      const device = this.#parsed.get(stored.data, stored.fingerprint)
      if (isLive(device, now, this.#rules)) listed.push({ device, user: stored.user, version: stored.version })
    }
    return listed
  }

  async commit (userKey: string, writes: DeviceWrite[], options: { user?: string, limit?: number } = {}): Promise<CommitResult> {
    return await this.#store.commit({ userKey, devices: writes, ...options })
  }

  /**
   * Reads the device, lets `decide` take the step and writes it back under the version read;
   * when the version moved meanwhile (a parallel request wrote the device), reads and decides
   * again. `first`: the device as the caller read it already, for the first attempt.
   */
  async settle (
    bucket: string, fingerprint: string, decide: (device: Device | null, now: number) => Step, first?: { loaded: Loaded | null, step: Step }
  ): Promise<{ step: Step, loaded: Loaded | null }> {
    for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
      let loaded: Loaded | null
      let step: Step
      let now: number
      if (attempt === 1 && first !== undefined) {
        ({ loaded, step } = first)
        now = Date.now()
      } else {
        loaded = await this.read(bucket, fingerprint)
        now = Date.now()
        step = decide(loaded === null ? null : loaded.device, now)
      }
      if (!step.write) return { step, loaded }
      const device = step.device as Device
      let ok: boolean
      try {
        ({ ok } = await this.commit(device.userKey, [deviceWrite(device, loaded === null ? 0 : loaded.version, now, this.#rules)]))
      } catch (err) {
        // The store failed (a refused write, a lost race, is no failure): the step's fallback, if any.
        if (step.unwritten !== undefined) return { step: step.unwritten, loaded }
        throw err
      }
      if (ok) return { step, loaded }
    }
    throw storeError()
  }

  /** Ends one device of the user, whatever its version. */
  async end (userKey: string, fingerprint: string): Promise<void> {
    await this.commit(userKey, [deviceDelete(fingerprint, Date.now())])
  }

  /**
   * Ends the user's devices but `except`; returns the fingerprints of those that were live, and
   * the user's credentials (JSON text) as the store had them (null when it had no device).
   */
  async revokeAll (userKey: string, except?: string): Promise<{ fingerprints: string[], user: string | null }> {
    const now = Date.now()
    const doomed = (await this.#store.list(userKey)).filter((stored) => stored.fingerprint !== except)
    if (doomed.length === 0) return { fingerprints: [], user: null }
    await this.commit(userKey, doomed.map((stored) => deviceDelete(stored.fingerprint, now)))
    const fingerprints = doomed.filter((stored) => isLive(this.#parsed.get(stored.data, stored.fingerprint), now, this.#rules)).map((stored) => stored.fingerprint)
    return { fingerprints, user: (doomed[0] as StoredDevice).user }
  }

  /** Ends one device of the user; false when the user has no such live device. */
  async revoke (userKey: string, fingerprint: string): Promise<boolean> {
    const loaded = await this.read(userBucket(userKey), fingerprint)
    // The bucket is shared by other users' devices: the device must be this user's.
    if (loaded === null || loaded.device.userKey !== userKey) return false
    await this.end(userKey, fingerprint)
    return isLive(loaded.device, Date.now(), this.#rules)
  }
}
