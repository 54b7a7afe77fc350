import { EventEmitter } from 'node:events'
import { Signer } from '@fastify/cookie'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import { CredentialsCache } from './credentials-cache.js'
import { hashSecret, isSecret, SECRET_LENGTH, secretDevice } from './crypto.js'
import { Devices, minter } from './devices.js'
import { PowNotSignedInError, PowReloadUserError, PowStoreError, storeError } from './errors.js'
import type { Mint } from './lifecycle.js'
import { type Config, STORE_METHODS } from './options.js'
import type { PowSession } from './session.js'
import type { DeletedReason, PowEvent, PowEvents, PowStore, PowUser } from './types.js'
import { OutageLog } from './outage-log.js'

// A signed secret is `<69 chars>.<43 chars of base64 HMAC-SHA256>`; anything else is rejected before any HMAC.
const SIGNED_LENGTH = SECRET_LENGTH + 44
// Cookies verified lately, so that a browser's every request does not cost an HMAC and a SHA-256.
// 1024 entries: about 350 kB at most.
const VERIFIED_CACHE_SIZE = 1024

/** A cookie value that passed verification: the secret, its device, its hash, and whether it must be re-signed. */
export interface Verified {
  readonly secret: string
  readonly bucket: string
  readonly fingerprint: string
  readonly hash: string
  /** Signed with an older secret: re-issue it signed with the current one. */
  readonly renew: boolean
  /** New secrets for this device, as the lifecycle asks for them: made once per verified value, not per request. */
  readonly mint: Mint
}

/**
 * Every store call goes through this: whatever the store throws becomes a 503
 * `POW_ERR_STORE_UNAVAILABLE` (see {@link Pow.storeFailed}).
 */
function guardStore (store: PowStore, pow: Pow): PowStore {
  const ok = <T>(value: T): T => {
    pow.storeAnswered()
    return value
  }
  const fail = (err: unknown): never => { throw pow.storeFailed(err) }
  const guarded: Record<string, unknown> = {}
  for (const method of STORE_METHODS) {
    guarded[method] = (...args: unknown[]) => {
      try {
        // MemoryStore's read answers at once: a promise here all the same.
        return Promise.resolve((store[method] as (...a: unknown[]) => unknown).apply(store, args)).then(ok, fail)
      } catch (err) {
        return Promise.resolve(err).then(fail)
      }
    }
  }
  return guarded as unknown as PowStore
}

/** `app.pow`: the credentials cache, the store and the session events. */
export class Pow extends EventEmitter<PowEvents> {
  /** The credentials cache (Pow's `CredentialsCache`), keyed by raw session ids. */
  readonly credentials: CredentialsCache
  /** The store as given (or the default one). */
  readonly rawStore: PowStore
  /** @internal the store with failures mapped to 503 */
  readonly store: PowStore
  /** @internal the store, spoken to in devices */
  readonly devices: Devices
  /** @internal */
  readonly config: Config
  /** @internal */
  readonly log: FastifyBaseLogger
  #signer: Signer
  /**
   * Signed cookie values lately verified, by a number made of the signature's last characters
   * (see `verify`): the entry holds the whole value it is for. Only values with a valid
   * signature get in.
   */
  #verified = new Map<number, { signed: string, verified: Verified }>()
  /** Store and `reloadUser` failures, logged as outages. */
  #storeOutage: OutageLog
  #reloadOutage: OutageLog

  /**
   * A hook for routes that need a signed-in user: `{ onRequest: app.pow.requireUser }` (or
   * `preHandler`) answers 401 `POW_ERR_NOT_SIGNED_IN` "Not signed in" to anonymous requests, so
   * the handler can read `request.powSession.requireUser()` or `request.powSession.user!`.
   * fastify-pow's own `onRequest` hook, registered with the plugin, has run before a route's.
   */
  readonly requireUser = (request: FastifyRequest, _reply: FastifyReply, done: (err?: Error) => void): void => {
    const session = request.powSession as PowSession | undefined
    if (session === undefined) {
      done(new Error('fastify-pow: app.pow.requireUser ran on a route outside the context fastify-pow is registered in (request.powSession is missing): register fastify-pow at the root'))
    } else if (session.user === null) {
      done(new PowNotSignedInError('app.pow.requireUser'))
    } else {
      done()
    }
  }

  /** @internal made by the plugin */
  constructor (config: Config, store: PowStore, log: FastifyBaseLogger) {
    super()
    this.config = config
    this.rawStore = store
    this.log = log
    this.#storeOutage = new OutageLog(log, 'the session store', 'answering 503 to the requests that need it until it is back')
    this.#reloadOutage = new OutageLog(log, 'reloadUser', 'answering 503 to the requests it fails for')
    this.store = guardStore(store, this)
    this.devices = new Devices(this.store, store, this, config.rules)
    this.#signer = new Signer(config.secrets)
    this.credentials = new CredentialsCache(this)
  }

  /** @internal a store call answered: logs the end of an outage */
  storeAnswered (): void {
    this.#storeOutage.answered()
  }

  /** @internal a store call threw `err`: the error to throw instead, a 503. Logged as an outage. */
  storeFailed (err: unknown): Error {
    this.#storeOutage.failed(err)
    return err instanceof PowStoreError ? err : storeError()
  }

  /**
   * @internal The `reloadUser` option's answer for `user`, null (or undefined) to sign out. An
   * error with a 4xx `statusCode` (a 403 for a banned user) is the answer as thrown; any other
   * is a 503 `POW_ERR_RELOAD_USER`. Failures are logged as an outage (see OutageLog): a user
   * whose reload always fails must not log a line per request.
   */
  async reload (user: PowUser, request: FastifyRequest): Promise<PowUser | null> {
    const reloadUser = this.config.reloadUser as NonNullable<Config['reloadUser']>
    let reloaded: PowUser | null | undefined
    try {
      reloaded = await reloadUser(user, request)
    } catch (err) {
      const status = (err as { statusCode?: unknown } | null)?.statusCode
      if (typeof status === 'number' && status >= 400 && status < 500) throw err
      this.#reloadOutage.failed(err, request.log)
      throw new PowReloadUserError()
    }
    this.#reloadOutage.answered()
    return reloaded ?? null
  }

  /** @internal */
  sign (token: string): string {
    return this.#signer.sign(token)
  }

  /**
   * @internal The token in a signed cookie value and its store hash, or null when the value is
   * malformed or forged. Recent results are cached, each for its exact signed value (a forged
   * value never is, so it cannot push out anything but the oldest entries).
   */
  verify (signed: string): Verified | null {
    // Keyed by a number made of the signature's last five characters, not by a string: a key
    // string would be a new one each request (cut from the Cookie header), which V8 hashes on
    // every lookup. They are as random as the signature; a value that only shares them (a
    // forgery) is compared in full, and verified.
    let key = 0
    for (let i = signed.length - 5; i < signed.length; i++) key = key * 64 + (signed.charCodeAt(i) & 63)
    const cached = this.#verified.get(key)
    if (cached !== undefined && cached.signed === signed) return cached.verified
    if (signed.length !== SIGNED_LENGTH || signed.charCodeAt(SECRET_LENGTH) !== 46 || !isSecret(signed.slice(0, SECRET_LENGTH))) return null
    const result = this.#signer.unsign(signed)
    if (!result.valid || result.value === null) return null
    const secret = result.value
    const { bucket, fingerprint } = secretDevice(secret)
    const verified: Verified = { secret, bucket, fingerprint, hash: hashSecret(secret), renew: result.renew, mint: minter(bucket, fingerprint) }
    const cache = this.#verified
    if (cache.size >= VERIFIED_CACHE_SIZE) cache.delete(cache.keys().next().value as number)
    cache.set(key, { signed, verified })
    return verified
  }

  /**
   * @internal A secret that someone else moved on from came back (`what` says which): whoever
   * holds it, the device is revoked, a warning logged and `kind` fired. The caller clears the
   * cookie.
   */
  async revokeStolen (event: PowEvent & { request: FastifyRequest }, kind: 'session:reuse' | 'persistent:reuse', what: string): Promise<void> {
    const { userKey, fingerprint } = event
    await this.devices.end(userKey, fingerprint)
    event.request.log.warn({ userKey, fingerprint }, `fastify-pow: ${what}; its device was revoked`)
    this.notify(kind, event)
    this.notify('session:deleted', { ...event, reason: 'theft' })
  }

  /** @internal `session:deleted`, with `reason`, for each device of `fingerprints` */
  notifyDeleted (event: Omit<PowEvent, 'fingerprint' | 'reason'>, fingerprints: string[], reason: DeletedReason): void {
    for (const fingerprint of fingerprints) this.notify('session:deleted', { ...event, fingerprint, reason })
  }

  /** @internal listeners must not break a request */
  notify<K extends keyof PowEvents> (event: K, ...args: PowEvents[K]): void {
    if (this.listenerCount(event) === 0) return
    try {
      (this.emit as (e: K, ...a: PowEvents[K]) => boolean)(event, ...args)
    } catch (err) {
      this.log.error({ err, event }, 'fastify-pow: an event listener threw')
    }
  }
}
