import type { FastifyReply, FastifyRequest } from 'fastify'
import { toMetadata, toSessionInfos } from './credentials-cache.js'
import { hashToken, randomFingerprint, randomToken, userBucket } from './crypto.js'
import { PendingCookies } from './cookies.js'
import { PowNotSignedInError, PowSignInRevokedError } from './errors.js'
import type { PowPersistentSession } from './persistent-session.js'
import type { Pow } from './pow.js'
import type { PowMetadata, PowUser, PutConditions, SessionInfo, SessionMetadata, SessionRecord, StoredSession } from './types.js'

export const kAuthenticate = Symbol('fastify-pow.authenticate')
export const kAttach = Symbol('fastify-pow.attach')
export const kAdopt = Symbol('fastify-pow.adopt')
export const kRenewed = Symbol('fastify-pow.renewed')
export const kReload = Symbol('fastify-pow.reload')
export const kCookies = Symbol('fastify-pow.cookies')
export const kSidHash = Symbol('fastify-pow.sidHash')
export const kCreate = Symbol('fastify-pow.create')

export interface CreateOptions {
  /** Also create a remember-me token for this browser. */
  persistent?: boolean
  /** Custom metadata stored with the session (JSON-serializable). */
  metadata?: PowMetadata
}

/**
 * `request.powSession`: the session of this request. Set up by the plugin's `onRequest` hook,
 * which has already authenticated the request when a handler runs.
 */
export class PowSession {
  /** @internal whether this request renewed the session */
  [kRenewed] = false
  /** The signed-in user, or null. */
  user: PowUser | null = null
  /** @internal the cookies this request's helpers set, written when a helper call succeeds */
  readonly [kCookies]: PendingCookies
  #pow: Pow
  #request: FastifyRequest
  #cookies: PendingCookies
  #record: SessionRecord | undefined = undefined
  #sidHash: string | undefined = undefined

  constructor (pow: Pow, request: FastifyRequest, reply: FastifyReply) {
    this.#pow = pow
    this.#request = request
    this.#cookies = new PendingCookies(reply)
    this[kCookies] = this.#cookies
  }

  /** @internal the hash of this request's session id, when it has one */
  get [kSidHash] (): string | undefined {
    return this.#sidHash
  }

  /** `fingerprint`, `insertedAt`, `signedInAt` and the custom metadata of the session, or null. */
  get metadata (): SessionMetadata | null {
    return this.#record === undefined ? null : toMetadata(this.#record)
  }

  /**
   * Signs `user` in: ends this browser's current session (session fixation), stores a new
   * session with a fresh id and fingerprint and sets the cookie. With `persistent` it also
   * creates a remember-me token; without, it deletes this browser's old one.
   */
  async create (user: PowUser, options: CreateOptions = {}): Promise<void> {
    await this.#cookies.run(async () => await this.#create(user, options))
  }

  async #create (user: PowUser, options: CreateOptions): Promise<void> {
    const pow = this.#pow
    const userKey = pow.config.userKey(user)
    const persistent = this.#request.powPersistentSession
    if (options.persistent === true && persistent === null) {
      throw new TypeError('fastify-pow: create(user, { persistent: true }) needs the persistentSession option')
    }
    await this.#revokeCurrent()
    const now = Date.now()
    await this.#issue({
      userKey,
      fingerprint: randomFingerprint(),
      insertedAt: now,
      signedInAt: now,
      // As the store will give it back (a Date becomes its ISO string), in this request too.
      metadata: options.metadata === undefined ? {} : JSON.parse(JSON.stringify(options.metadata))
    }, user)
    this.user = user
    // The session is stored: listeners hear of it even if a racing revocation ends it below.
    pow.notify('session:created', this.#event(user))
    if (options.persistent === true) {
      if (!await (persistent as PowPersistentSession)[kCreate](user)) {
        // Revoked by another request while signing in: this sign-in is over too, and says so.
        this.#set(null, undefined, undefined)
        throw new PowSignInRevokedError()
      }
    } else {
      await persistent?.delete()
    }
  }

  /** Signs out: ends this browser's sessions and remember-me token server-side and clears both cookies. */
  async delete (): Promise<void> {
    await this.#cookies.run(async () => await this.#delete())
  }

  async #delete (): Promise<void> {
    await this.#revokeCurrent()
    await this.#request.powPersistentSession?.delete()
    const { name, options } = this.#pow.config.session
    this.#cookies.clear(name, options)
  }

  /** Stores new credentials for the signed-in user; all the user's sessions see them. */
  async update (user: PowUser): Promise<void> {
    const record = this.#requireUser('update')
    if (this.#pow.config.userKey(user) !== record.userKey) {
      throw new TypeError('fastify-pow: update(user) must be given the signed-in user')
    }
    await this.#pow.credentials.updateUser(user)
    this.user = user
  }

  /** The signed-in user's live sessions, one per fingerprint (browser). */
  async sessions (): Promise<SessionInfo[]> {
    const record = this.#requireUser('sessions')
    return toSessionInfos(await this.#pow.store.listSessions(record.userKey), record.fingerprint)
  }

  /** Ends another session of the signed-in user and its remember-me token; false when the fingerprint is not this user's. */
  async deleteSession (fingerprint: string): Promise<boolean> {
    const record = this.#requireUser('deleteSession')
    if (fingerprint === record.fingerprint) {
      await this.delete()
      return true
    }
    const revoked = await this.#pow.store.revoke(record.userKey, { fingerprint })
    this.#notifyDeleted(revoked)
    return revoked.length > 0
  }

  /** Ends every other session of the signed-in user and their remember-me tokens; returns their fingerprints. */
  async deleteOtherSessions (): Promise<string[]> {
    const record = this.#requireUser('deleteOtherSessions')
    const revoked = await this.#pow.store.revoke(record.userKey, { except: record.fingerprint })
    this.#notifyDeleted(revoked)
    return revoked
  }

  /** @internal verifies the session cookie, loads the session, renews it when due */
  async [kAuthenticate] (signed: string, reloadUser: boolean): Promise<void> {
    const pow = this.#pow
    const unsigned = pow.verify(signed)
    if (unsigned === null) {
      this.#request.log.debug('fastify-pow: session cookie failed verification')
      return
    }
    const sidHash = unsigned.hash
    // The store called directly, not through pow.store, on the path every request takes.
    let found: StoredSession | null
    try {
      found = await pow.rawStore.getSession(sidHash)
    } catch (err) {
      throw pow.storeFailed(err)
    }
    pow.storeAnswered()
    if (found === null) {
      this.#request.log.debug('fastify-pow: session cookie points at no session')
      return
    }
    const { record, retired } = found
    const now = Date.now()
    const config = pow.config.session
    if (found.superseded === true) {
      // A renewal was done again for whoever presented the old id once its grace was over, so
      // two parties hold cookies of one session: like a reused remember-me token, theft.
      const { userKey, fingerprint } = record
      await pow.revokeReused({ request: this.#request, user: null, userKey, fingerprint }, 'session:reuse',
        'a replaced session id came back after its replacement was reissued')
      this.#cookies.clear(config.name, config.options)
      return
    }
    if (config.absoluteTtl !== undefined && now - record.signedInAt >= config.absoluteTtl) return
    let user = found.user as PowUser
    if (reloadUser) {
      const reloaded = await this[kReload](user, record)
      if (reloaded === null) return
      user = reloaded
    }
    this.#set(user, record, sidHash)
    // A retired id works for the grace. Past it, an id whose replacement was never used means the
    // answer that carried the replacement never reached the browser (a 503 after the store ran
    // the renewal): renew again. The unused replacement is superseded.
    const lost = retired && found.unclaimedSince !== undefined && now - found.unclaimedSince > config.rotationGrace
    if (retired && !lost) return
    if (lost || now - record.insertedAt >= config.renewAfter) {
      // One renewal at a time per id. A renewal again takes a lock of its own per grace period of
      // the app's clock: the first renewal's lock may live on in a store with a clock of its own.
      const lock = lost ? `renew-again:${sidHash}:${Math.floor(now / config.rotationGrace)}` : `renew:${sidHash}`
      if (await pow.store.lock(lock, config.rotationGrace)) {
        // Only while the old session exists: a revocation that landed since the read wins.
        if (!await this.#issue({ ...record, insertedAt: now }, undefined, { session: sidHash })) {
          this.#set(null, undefined, undefined)
          return
        }
        this[kRenewed] = true
        pow.notify('session:renewed', this.#event(user))
      }
    } else if (unsigned.renew) {
      this.#cookies.set(config.name, pow.sign(unsigned.token), config.options)
    }
  }

  /** @internal signs in with a session the store already holds under `sessionId` (hashed: `sidHash`) */
  [kAttach] (user: PowUser, record: SessionRecord, sessionId: string, sidHash: string): void {
    const { name, options } = this.#pow.config.session
    this.#cookies.set(name, this.#pow.sign(sessionId), options)
    this.#set(user, record, sidHash)
  }

  /** @internal signs in for this request only (a used remember-me token inside its grace) */
  [kAdopt] (user: PowUser, record: SessionRecord): void {
    this.#set(user, record, undefined)
  }

  /** @internal Pow's `reload`: null ends the browser's sessions and tokens */
  async [kReload] (user: PowUser, record: SessionRecord): Promise<PowUser | null> {
    const reload = this.#pow.config.reloadUser as NonNullable<Pow['config']['reloadUser']>
    const reloaded = await reload(user, this.#request)
    if (reloaded !== null && reloaded !== undefined) return reloaded
    this.#set(user, record, undefined)
    await this.delete()
    return null
  }

  /** Stores a new session for `record` and sets the cookie; false, with nothing stored, when a condition failed. */
  async #issue (record: SessionRecord, user: PowUser | undefined, conditions?: PutConditions): Promise<boolean> {
    const pow = this.#pow
    const config = pow.config.session
    const now = Date.now()
    const ttl = config.absoluteTtl === undefined
      ? config.ttl
      : Math.min(config.ttl, record.signedInAt + config.absoluteTtl - now)
    const token = randomToken(userBucket(record.userKey))
    const sidHash = hashToken(token)
    if (!await pow.store.putSession(sidHash, record, user, ttl, config.rotationGrace, conditions)) return false
    this.#cookies.set(config.name, pow.sign(token), config.options)
    this.#record = record
    this.#sidHash = sidHash
    return true
  }

  #set (user: PowUser | null, record: SessionRecord | undefined, sidHash: string | undefined): void {
    this.user = user
    this.#record = record
    this.#sidHash = sidHash
  }

  async #revokeCurrent (): Promise<void> {
    const record = this.#record
    if (record !== undefined) {
      const revoked = await this.#pow.store.revoke(record.userKey, { fingerprint: record.fingerprint })
      this.#notifyDeleted(revoked)
    }
    this.#set(null, undefined, undefined)
  }

  #requireUser (method: string): SessionRecord {
    if (this.#record === undefined || this.user === null) throw new PowNotSignedInError(method)
    return this.#record
  }

  #event (user: unknown, fingerprint = (this.#record as SessionRecord).fingerprint) {
    return { request: this.#request, user, userKey: (this.#record as SessionRecord).userKey, fingerprint }
  }

  #notifyDeleted (fingerprints: string[]): void {
    for (const fingerprint of fingerprints) this.#pow.notify('session:deleted', this.#event(this.user, fingerprint))
  }
}
