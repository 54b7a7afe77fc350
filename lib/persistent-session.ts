import type { FastifyRequest } from 'fastify'
import type { PendingCookies } from './cookies.js'
import { randomFingerprint, userBucket } from './crypto.js'
import { deviceWrite, minter } from './devices.js'
import { PowSignInRevokedError } from './errors.js'
import { type Device, forget, remember, signIn, type Step } from './lifecycle.js'
import type { Pow, Verified } from './pow.js'
import { kClearCookie, kCookies, kDevice, kToken, type PowSession } from './session.js'
import type { PowUser } from './types.js'

/**
 * `request.powPersistentSession`: this browser's remember-me token (Pow's
 * `PowPersistentSession.Plug.Cookie`). `request.powSession.create(user, { persistent: true })`
 * creates it; apps that manage remember-me themselves call it directly.
 */
export class PowPersistentSession {
  #token: Verified | null = null
  #pow: Pow
  #request: FastifyRequest
  #cookies: PendingCookies
  #session: PowSession
  /** Whether the browser holds the cookie: the request carried it, or this request set it. */
  #hasCookie = false

  constructor (pow: Pow, request: FastifyRequest, session: PowSession, hasCookie: boolean) {
    this.#pow = pow
    this.#request = request
    this.#cookies = session[kCookies]
    this.#session = session
    this.#hasCookie = hasCookie
  }

  /** @internal the request's remember-me cookie, verified (null when it failed); an accessor, as PowSession's */
  get [kToken] (): Verified | null {
    return this.#token
  }

  set [kToken] (token: Verified | null) {
    this.#token = token
  }

  /**
   * Gives this browser's device a new remember-me token for `user` (a new device when the
   * browser is not signed in) and sets the cookie. Throws `PowSignInRevokedError` when the
   * device was revoked meanwhile.
   */
  async create (user: PowUser): Promise<void> {
    await this.#cookies.run(async () => { await this.#create(user) })
  }

  async #create (user: PowUser): Promise<void> {
    const pow = this.#pow
    const { rules } = pow.config
    const userKey = pow.config.userKey(user)
    const current = this.#session[kDevice]
    let step: Step
    if (current !== null && current.userKey === userKey) {
      const bucket = userBucket(userKey)
      const mint = minter(bucket, current.fingerprint)
      // Tied to the device: a revocation of it that lands first leaves no token behind.
      ;({ step } = await pow.devices.settle(bucket, current.fingerprint,
        (device, now) => device === null ? { auth: 'none', device: null, write: false } : remember(device, now, rules, mint)))
      if (step.device === null) throw new PowSignInRevokedError()
    } else {
      const now = Date.now()
      const fingerprint = randomFingerprint()
      step = signIn(userKey, fingerprint, {}, { session: false, token: true }, now, rules, minter(userBucket(userKey), fingerprint))
      const { evicted } = await pow.devices.commit(userKey, [deviceWrite(step.device as Device, 0, now, rules)], {
        user: JSON.stringify(user),
        limit: pow.config.maxDevices
      })
      pow.notifyDeleted({ request: this.#request, user, userKey }, evicted, 'evicted')
    }
    const device = step.device as Device
    if (this.#session.user !== null) this.#session[kDevice] = device
    const { name, options } = pow.config.persistent as NonNullable<Pow['config']['persistent']>
    const maxAge = Math.ceil(((device.token as NonNullable<Device['token']>).expiresAt - Date.now()) / 1000)
    this.#cookies.set(name, pow.sign(step.token as string), { ...options, maxAge })
    this.#hasCookie = true
  }

  /** Ends this browser's remember-me token server-side and expires the cookie. */
  async delete (): Promise<void> {
    await this.#cookies.run(async () => { await this.#delete() })
  }

  async #delete (): Promise<void> {
    const pow = this.#pow
    const current = this.#session[kDevice]
    const token = this[kToken]
    const at = current !== null
      ? { bucket: userBucket(current.userKey), fingerprint: current.fingerprint }
      : token
    if (at !== null) {
      const { step } = await pow.devices.settle(at.bucket, at.fingerprint,
        (device, now) => device === null ? { auth: 'none', device: null, write: false } : forget(device, now, pow.config.rules))
      if (current !== null && step.device !== null) this.#session[kDevice] = step.device
    }
    this[kClearCookie]()
  }

  /** @internal expires the cookie, if the browser holds one */
  [kClearCookie] (): void {
    if (!this.#hasCookie) return
    const { name, options } = this.#pow.config.persistent as NonNullable<Pow['config']['persistent']>
    this.#cookies.clear(name, options)
    this.#hasCookie = false
  }
}
