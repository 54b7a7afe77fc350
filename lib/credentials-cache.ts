import { hashSecret, isSecret, newSecret, randomFingerprint, secretDevice, userBucket } from './crypto.js'
import { deviceWrite } from './devices.js'
import { type Device, isLive, showSession, signIn } from './lifecycle.js'
import type { Pow } from './pow.js'
import { toMetadata, toSessionInfos } from './session.js'
import type { PowActor, PowMetadata, PowUser, SessionInfo, SessionMetadata } from './types.js'

/** A user, or the user's id (what `userId(user)` returns). */
export type UserOrId = PowUser | string | number

/**
 * `app.pow.credentials`: Pow's credentials cache, for work outside a request (admin pages,
 * scripts, tests). Session ids are the raw ids the cookies hold; the store only ever sees their
 * hashes. Every method fails with a 503 `POW_ERR_STORE_UNAVAILABLE` error when the store does.
 */
export class CredentialsCache {
  #pow: Pow

  constructor (pow: Pow) {
    this.#pow = pow
  }

  /** A new random session id for a new device of `user`, for `put`. */
  generateId (user: PowUser): string {
    return newSecret(userBucket(this.#pow.config.userKey(user)), randomFingerprint()).secret
  }

  /**
   * Signs `user` in on a new device under `sessionId` (from `generateId(user)`), for the
   * session TTL. `metadata` is stored with it, as `create()` does.
   */
  async put (sessionId: string, user: PowUser, metadata: PowMetadata = {}, by: PowActor = {}): Promise<void> {
    const { config } = this.#pow
    const userKey = config.userKey(user)
    if (!isSecret(sessionId) || !sessionId.startsWith(userBucket(userKey))) {
      throw new TypeError('fastify-pow: credentials.put needs a session id from credentials.generateId(user)')
    }
    const { fingerprint } = secretDevice(sessionId)
    const { fingerprint: _f, insertedAt: _i, signedInAt: _s, ...custom } = metadata
    const now = Date.now()
    const step = signIn(userKey, fingerprint, JSON.parse(JSON.stringify(custom)), { session: true, token: false }, now, config.rules,
      () => ({ secret: sessionId, hash: hashSecret(sessionId) }))
    const { ok, evicted } = await this.#pow.devices.commit(userKey, [deviceWrite(step.device as NonNullable<typeof step.device>, 0, now, config.rules)], {
      user: JSON.stringify(user),
      limit: config.maxDevices
    })
    if (!ok) throw new TypeError('fastify-pow: credentials.put was given a session id that is stored already')
    this.#pow.notify('session:created', { ...actor(by), user, userKey, fingerprint })
    this.#pow.notifyDeleted({ ...actor(by), user, userKey }, evicted, 'evicted')
  }

  /** The user and metadata of the device `sessionId` signs in, or null. Reads only: a renewal due is left to the browser's next request. */
  async get (sessionId: string): Promise<{ user: PowUser, metadata: SessionMetadata } | null> {
    if (!isSecret(sessionId)) return null
    const { bucket, fingerprint } = secretDevice(sessionId)
    const loaded = await this.#pow.devices.read(bucket, fingerprint)
    if (loaded === null) return null
    return this.#signsIn(loaded.device, sessionId) ? { user: JSON.parse(loaded.user), metadata: toMetadata(loaded.device) } : null
  }

  /** Whether `sessionId` signs `device` in now; reads only (a renewal due is left to the browser). */
  #signsIn (device: Device, sessionId: string): boolean {
    return showSession(device, hashSecret(sessionId), undefined, Date.now(), this.#pow.config.rules, () => ({ secret: '', hash: '' })).auth === 'session'
  }

  /**
   * Ends the device `sessionId` signs in (its remember-me token too); false when it signs in
   * none. `session:deleted` (reason `'revoked'`) carries `by`.
   */
  async delete (sessionId: string, by: PowActor = {}): Promise<boolean> {
    if (!isSecret(sessionId)) return false
    const { bucket, fingerprint } = secretDevice(sessionId)
    const loaded = await this.#pow.devices.read(bucket, fingerprint)
    if (loaded === null || !this.#signsIn(loaded.device, sessionId)) return false
    const { userKey } = loaded.device
    await this.#pow.devices.end(userKey, fingerprint)
    if (isLive(loaded.device, Date.now(), this.#pow.config.rules) && this.#pow.listenerCount('session:deleted') > 0) {
      this.#pow.notifyDeleted({ ...actor(by), user: JSON.parse(loaded.user) as PowUser, userKey }, [fingerprint], 'revoked')
    }
    return true
  }

  /** The user's devices: each browser with a working session or remember-me token. */
  async sessions (user: UserOrId): Promise<Array<Omit<SessionInfo, 'current'>>> {
    const listed = await this.#pow.devices.list(this.#userKey(user))
    return toSessionInfos(this.#pow, listed, undefined).map(({ current, ...info }) => info)
  }

  /** Every user with at least one device. */
  async users (): Promise<PowUser[]> {
    return (await this.#pow.store.users()).map((json) => JSON.parse(json) as PowUser)
  }

  /**
   * Ends the user's devices, all but the fingerprint `except` (after a password change:
   * `request.powSession.metadata?.fingerprint`). Returns the fingerprints of those that were live; each
   * fires `session:deleted` (reason `'revoked'`) with the `request` or `actor` given.
   */
  async deleteUserSessions (user: UserOrId, options: PowActor & { except?: string | undefined } = {}): Promise<string[]> {
    const userKey = this.#userKey(user)
    const { fingerprints, user: stored } = await this.#pow.devices.revokeAll(userKey, options.except)
    // The credentials are parsed for listeners only; a user with no device ended has none stored.
    if (stored !== null && this.#pow.listenerCount('session:deleted') > 0) {
      this.#pow.notifyDeleted({ ...actor(options), user: JSON.parse(stored) as PowUser, userKey }, fingerprints, 'revoked')
    }
    return fingerprints
  }

  /** Stores new credentials for the user: every device of the user sees them on its next request. */
  async updateUser (user: PowUser): Promise<void> {
    const userKey = this.#pow.config.userKey(user)
    await this.#pow.devices.commit(userKey, [], { user: JSON.stringify(user) })
  }

  #userKey (user: UserOrId): string {
    if ((typeof user === 'string' && user !== '') || (typeof user === 'number' && Number.isFinite(user))) return String(user)
    return this.#pow.config.userKey(user)
  }
}

/** What an event says of who acted: only the fields given. */
function actor (by: PowActor): PowActor {
  const shown: PowActor = {}
  if (by.request !== undefined) shown.request = by.request
  if (by.actor !== undefined) shown.actor = by.actor
  return shown
}
