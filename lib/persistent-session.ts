import type { FastifyRequest } from 'fastify'
import { hashToken, randomFingerprint, randomToken, userBucket } from './crypto.js'
import type { Pow } from './pow.js'
import type { PendingCookies } from './cookies.js'
import { kAdopt, kAuthenticate, kCookies, kForget, kReload, kRenewed, kSignIn, type PowSession } from './session.js'
import type { PowUser, PutConditions, SessionMetadata, SessionRecord, TokenRecord } from './types.js'

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
    await this.#cookies.run(async () => await this.#create(user))
  }

  async #create (user: PowUser): Promise<void> {
    const pow = this.#pow
    const userKey = pow.config.userKey(user)
    await this.#deleteStored()
    const current = this.#session.metadata
    const { fingerprint = randomFingerprint(), insertedAt, signedInAt, ...metadata } = current ?? {} as Partial<SessionMetadata>
    await this.#issue({ userKey, fingerprint, user, metadata })
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
    const unsigned = pow.unsign(signed)
    if (unsigned === null) {
      this.#request.log.debug('fastify-pow: remember-me cookie failed verification')
      return
    }
    const tokenHash = hashToken(unsigned.token)
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
    const claim = await pow.store.claimToken(tokenHash, now)
    if (claim === null) {
      this.#request.log.debug('fastify-pow: remember-me cookie points at no token')
      this.#tokenHash = null
      this.#cookies.clear(config.name, config.options)
      return
    }
    const token = claim.record
    const record: SessionRecord = {
      userKey: token.userKey,
      fingerprint: token.fingerprint,
      insertedAt: now,
      signedInAt: now,
      metadata: token.metadata
    }
    const event = { request: this.#request, user: token.user, userKey: token.userKey, fingerprint: token.fingerprint }

    if (!claim.claimed) {
      if (now - (token.usedAt as number) <= pow.config.session.rotationGrace) {
        let user = token.user as PowUser
        if (reloadUser) {
          const reloaded = await session[kReload](user, record)
          if (reloaded === null) return
          user = reloaded
        }
        session[kAdopt](user, record)
        return
      }
      const revoked = await pow.store.revoke(token.userKey, { fingerprint: token.fingerprint })
      this.#tokenHash = null
      this.#cookies.clear(config.name, config.options)
      this.#request.log.warn(
        { userKey: token.userKey, fingerprint: token.fingerprint },
        'fastify-pow: a used remember-me token came back after its grace; its fingerprint was revoked'
      )
      pow.notify('persistent:reuse', event)
      for (const fingerprint of revoked) pow.notify('session:deleted', { ...event, fingerprint })
      return
    }

    let user = token.user as PowUser
    if (reloadUser) {
      const reloaded = await session[kReload](user, record)
      if (reloaded === null) return
      user = reloaded
    }
    // Both writes hold only while the browser is not revoked meanwhile, and neither undoes an
    // update of the user made since the token was written.
    const sidHash = await session[kSignIn](user, record, { token: tokenHash, keepStoredUser: true })
    const issued = sidHash !== null &&
      await this.#issue({ userKey: token.userKey, fingerprint: token.fingerprint, user, metadata: token.metadata }, { session: sidHash, keepStoredUser: true })
    if (!issued) {
      this.#request.log.debug('fastify-pow: the remember-me token was revoked while it was being used')
      session[kForget]()
      this.#tokenHash = null
      this.#cookies.clear(config.name, config.options)
      return
    }
    pow.notify('persistent:used', { ...event, user })
    pow.notify('session:created', { ...event, user })
  }

  async #issue (record: TokenRecord, conditions?: PutConditions): Promise<boolean> {
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
