import type { FastifyRequest } from 'fastify'
import { hashToken, randomFingerprint, randomToken, userBucket } from './crypto.js'
import type { Pow } from './pow.js'
import type { PendingCookies } from './cookies.js'
import { kAdopt, kAttach, kAuthenticate, kCookies, kCreate, kReload, kRenewed, kSidHash, type PowSession } from './session.js'
import { AGAIN_MAX, type PowUser, type PutConditions, type SessionMetadata, type SessionRecord, type TokenRecord } from './types.js'

/**
 * `request.powPersistentSession`: this browser's remember-me token (Pow's
 * `PowPersistentSession.Plug.Cookie`). `request.powSession.create(user, { persistent: true })`
 * uses it; apps that manage remember-me themselves call it directly.
 */
export class PowPersistentSession {
  #pow: Pow
  #request: FastifyRequest
  #cookies: PendingCookies
  #session: PowSession
  /** Hash of the verified token in this request's cookie; null when none. */
  #tokenHash: string | null = null
  /** Whether the request carried a cookie at all, verified or not. */
  #hasCookie = false

  constructor (pow: Pow, request: FastifyRequest, session: PowSession) {
    this.#pow = pow
    this.#request = request
    this.#cookies = session[kCookies]
    this.#session = session
  }

  /**
   * Replaces this browser's remember-me token with a new one for `user`, tied to the current
   * session's fingerprint (a fresh one without a session), and sets the cookie.
   */
  async create (user: PowUser): Promise<void> {
    await this.#cookies.run(async () => { await this[kCreate](user) })
  }

  /** @internal false when the current session was revoked meanwhile: no token then */
  async [kCreate] (user: PowUser): Promise<boolean> {
    const pow = this.#pow
    const userKey = pow.config.userKey(user)
    await this.#deleteStored()
    const current = this.#session.metadata
    const { fingerprint = randomFingerprint(), insertedAt, signedInAt, ...metadata } = current ?? {} as Partial<SessionMetadata>
    const sidHash = this.#session[kSidHash]
    // Tied to the current session: a revocation of it that lands first leaves no token behind.
    return await this.#issue({ userKey, fingerprint, user, metadata }, sidHash === undefined ? {} : { session: sidHash })
  }

  /** Deletes this browser's remember-me token server-side and expires the cookie. */
  async delete (): Promise<void> {
    await this.#cookies.run(async () => await this.#delete())
  }

  async #delete (): Promise<void> {
    await this.#deleteStored()
    if (this.#hasCookie) {
      const { name, options } = this.#pow.config.persistent as NonNullable<Pow['config']['persistent']>
      this.#cookies.clear(name, options)
      this.#hasCookie = false
    }
  }

  /**
   * @internal With a session: renews the cookie's max-age (and the token's TTL when the session
   * was renewed). Without: a valid token signs the browser in once, with a new session and a new
   * token on the same fingerprint; a used token works for the rotation grace, then is theft.
   */
  async [kAuthenticate] (signed: string, reloadUser: boolean): Promise<void> {
    const pow = this.#pow
    const config = pow.config.persistent as NonNullable<Pow['config']['persistent']>
    this.#hasCookie = true
    const unsigned = pow.verify(signed)
    if (unsigned === null) {
      this.#request.log.debug('fastify-pow: remember-me cookie failed verification')
      return
    }
    const tokenHash = unsigned.hash
    this.#tokenHash = tokenHash
    const session = this.#session
    if (session.user !== null) {
      // Extending the token is a courtesy: a failure must not fail a request whose renewal is stored.
      if (session[kRenewed]) {
        await pow.store.touchToken(tokenHash, config.ttl).catch((err: unknown) => {
          this.#request.log.debug({ err }, 'fastify-pow: could not extend the remember-me token')
        })
      }
      this.#cookies.set(config.name, unsigned.renew ? pow.sign(unsigned.token) : signed, config.options)
      return
    }

    const now = Date.now()
    const token = await pow.store.getToken(tokenHash)
    if (token === null) {
      this.#request.log.debug('fastify-pow: remember-me cookie points at no token')
      this.#forgetCookie()
      return
    }
    const record: SessionRecord = {
      userKey: token.userKey,
      fingerprint: token.fingerprint,
      insertedAt: now,
      signedInAt: now,
      metadata: token.metadata
    }
    const event = { request: this.#request, user: token.user, userKey: token.userKey, fingerprint: token.fingerprint }
    // Past the grace, a used token is theft, unless nobody has used the session and token its
    // rotation stored: then the answer that carried them never reached the browser (a 503 after
    // the store ran the rotation), and the token rotates again; the unused ones are superseded.
    // Only a few times: a token replayed again and again without its results ever being used is
    // not a browser whose answers keep getting lost.
    const pastGrace = token.usedAt !== undefined && now - token.usedAt > pow.config.session.rotationGrace
    const lostTooOften = (token.rotatedAgain ?? 0) >= AGAIN_MAX
    if (token.superseded === true || (pastGrace && (token.unclaimed !== true || lostTooOften))) {
      this.#forgetCookie()
      await pow.revokeReused(event, 'persistent:reuse', 'a used remember-me token came back after its grace')
      return
    }

    // One atomic step marks the token used and stores the new session and the new token, so a
    // failure leaves the token unused and the browser's cookies working.
    let outcome: 'rotated' | 'used' | 'missing' = 'used'
    const bucket = userBucket(token.userKey)
    const sessionId = randomToken(bucket)
    const sidHash = hashToken(sessionId)
    const newToken = randomToken(bucket)
    const newTokenHash = hashToken(newToken)
    if (token.usedAt === undefined || pastGrace) {
      const { ttl, absoluteTtl, rotationGrace } = pow.config.session
      outcome = await pow.store.rotateToken(tokenHash, now, {
        sidHash,
        session: record,
        sessionTtl: absoluteTtl === undefined ? ttl : Math.min(ttl, absoluteTtl),
        grace: rotationGrace,
        tokenHash: newTokenHash,
        tokenTtl: config.ttl,
        again: pastGrace
      })
    }
    if (outcome === 'missing') {
      this.#request.log.debug('fastify-pow: the remember-me token was revoked while it was being used')
      this.#forgetCookie()
      return
    }

    let user = token.user as PowUser
    if (reloadUser) {
      const reloaded = await session[kReload](user, record)
      if (reloaded === null) return
      user = reloaded
    }
    if (outcome === 'used') {
      // Used a moment ago by a parallel request of this browser: signed in for this request only.
      session[kAdopt](user, record)
      return
    }
    session[kAttach](user, record, sessionId, sidHash)
    this.#cookies.set(config.name, pow.sign(newToken), config.options)
    this.#tokenHash = newTokenHash
    pow.notify('persistent:used', { ...event, user })
    pow.notify('session:created', { ...event, user })
  }

  #forgetCookie (): void {
    const config = this.#pow.config.persistent as NonNullable<Pow['config']['persistent']>
    this.#tokenHash = null
    this.#cookies.clear(config.name, config.options)
  }

  async #issue (record: TokenRecord, conditions: PutConditions): Promise<boolean> {
    const pow = this.#pow
    const config = pow.config.persistent as NonNullable<Pow['config']['persistent']>
    const token = randomToken(userBucket(record.userKey))
    const tokenHash = hashToken(token)
    if (!await pow.store.putToken(tokenHash, record, config.ttl, conditions)) return false
    this.#cookies.set(config.name, pow.sign(token), config.options)
    this.#tokenHash = tokenHash
    this.#hasCookie = true
    return true
  }

  async #deleteStored (): Promise<void> {
    if (this.#tokenHash === null) return
    await this.#pow.store.deleteToken(this.#tokenHash)
    this.#tokenHash = null
  }
}
