import type { FastifyReply, FastifyRequest } from 'fastify'
import { PendingCookies } from './cookies.js'
import { isFingerprint, randomFingerprint, userBucket } from './crypto.js'
import { deviceDelete, deviceWrite, type Loaded, minter } from './devices.js'
import { PowMetadataTooLargeError, PowNotSignedInError } from './errors.js'
import { type Device, isLive, isRemembered, showSession, showToken, signIn, type Step } from './lifecycle.js'
import { copyMetadata } from './parsed.js'
import type { Pow, Verified } from './pow.js'
import type { DeletedReason, DeviceWrite, PowEvent, PowMetadata, PowUser, SessionInfo, SessionMetadata } from './types.js'

/** A device this request's cookies named, with its user's credentials (JSON text) as read. */
type Named = Pick<Loaded, 'device' | 'user'>

/** No device named: shared by every request until its cookies name one. */
const NONE_NAMED: readonly Named[] = Object.freeze([])

export const kAuthenticate = Symbol('fastify-pow.authenticate')
export const kCookies = Symbol('fastify-pow.cookies')
export const kDevice = Symbol('fastify-pow.device')
export const kToken = Symbol('fastify-pow.token')
export const kClearCookie = Symbol('fastify-pow.clearCookie')

export interface CreateOptions {
  /** Also create a remember-me token for this browser. */
  persistent?: boolean | undefined
  /** Custom metadata stored with the device (JSON-serializable, at most `maxMetadataBytes` as JSON). */
  metadata?: PowMetadata | undefined
}

/** Custom metadata without what `metadata` shows of the device itself (`fingerprint`, `insertedAt`, `signedInAt`). */
function customOnly (metadata: PowMetadata): PowMetadata {
  if (!('fingerprint' in metadata) && !('insertedAt' in metadata) && !('signedInAt' in metadata)) return metadata
  const { fingerprint: _f, insertedAt: _i, signedInAt: _s, ...custom } = metadata
  return custom
}

/** The metadata `request.powSession.metadata` shows for a device. */
export function toMetadata (device: Device): SessionMetadata {
  return {
    ...copyMetadata(device.metadata),
    fingerprint: device.fingerprint,
    insertedAt: device.session === null ? device.signedInAt : device.session.insertedAt,
    signedInAt: device.signedInAt
  }
}

/** The user's live devices as `sessions()` lists them, oldest sign-in first. */
export function toSessionInfos (pow: Pow, listed: Loaded[], current: string | undefined): SessionInfo[] {
  const now = Date.now()
  return listed
    .map(({ device }) => ({
      fingerprint: device.fingerprint,
      insertedAt: device.session === null ? device.signedInAt : device.session.insertedAt,
      signedInAt: device.signedInAt,
      current: device.fingerprint === current,
      remembered: isRemembered(device, now, pow.config.rules),
      metadata: copyMetadata(device.metadata)
    }))
    .sort((a, b) => a.signedInAt - b.signedInAt)
}

/**
 * `request.powSession`: the session of this request. Set up by the plugin's `onRequest` hook,
 * which has already authenticated the request when a handler runs.
 */
export class PowSession {
  /** The signed-in user, or null. */
  user: PowUser | null = null
  #pow: Pow
  #request: FastifyRequest
  #cookies: PendingCookies
  /** The device this request is signed in with. */
  #device: Device | null = null
  /**
   * Devices this request's cookies named, signed in or not: a sign-in or sign-out ends them.
   * Replaced, never changed in place: it starts as one shared empty list, not a new array per request.
   */
  #named: readonly Named[] = NONE_NAMED
  /** The browser holds a session cookie: it came with the request, or this request set one. */
  #hasCookie: boolean

  constructor (pow: Pow, request: FastifyRequest, reply: FastifyReply, hasCookie: boolean) {
    this.#pow = pow
    this.#request = request
    this.#cookies = new PendingCookies(reply)
    this.#hasCookie = hasCookie
  }

  // Accessors on the prototype, not fields with a symbol key: such a field is defined on every
  // instance by a call into V8's runtime, one for each request.

  /** @internal the cookies this request's helpers set, written when a helper call succeeds */
  get [kCookies] (): PendingCookies {
    return this.#cookies
  }

  /** @internal the device this request is signed in with */
  get [kDevice] (): Device | null {
    return this.#device
  }

  set [kDevice] (device: Device | null) {
    this.#device = device
  }

  /**
   * The signed-in user; throws `PowNotSignedInError` (401 "Not signed in") when nobody is. For a
   * route that needs a user, `{ onRequest: app.pow.requireUser }` answers 401 before the handler.
   */
  requireUser (): PowUser {
    if (this.user === null) throw new PowNotSignedInError('request.powSession.requireUser()')
    return this.user
  }

  /** `fingerprint`, `insertedAt`, `signedInAt` and the custom metadata of this device, or null. */
  get metadata (): SessionMetadata | null {
    return this.#device === null || this.user === null ? null : toMetadata(this.#device)
  }

  /**
   * True when this device signed in with credentials (`create()`) at most `maxAgeMs` ago: for
   * "enter your password again" before a sensitive change. Remember-me sign-ins do not count.
   */
  isFresh (maxAgeMs: number): boolean {
    return this.#device !== null && this.user !== null && Date.now() - this.#device.signedInAt <= maxAgeMs
  }

  /**
   * Signs `user` in: ends the devices this browser's cookies named (session fixation), stores a
   * new device with a fresh fingerprint and session id and sets the cookie. With `persistent` it
   * also creates a remember-me token; without, it clears this browser's old one.
   */
  async create (user: PowUser, options: CreateOptions = {}): Promise<void> {
    await this.#cookies.run(async () => await this.#create(user, options))
  }

  async #create (user: PowUser, options: CreateOptions): Promise<void> {
    const pow = this.#pow
    const { config } = pow
    const userKey = config.userKey(user)
    const persistent = this.#request.powPersistentSession
    if (options.persistent === true && persistent === null) {
      throw new TypeError('fastify-pow: create(user, { persistent: true }) needs the persistentSession option')
    }
    // As the store will give it back (a Date becomes its ISO string), in this request too.
    // What `metadata` shows of the device itself is not custom metadata: `create(user, { metadata:
    // request.powSession.metadata })` keeps the custom part only.
    const json = options.metadata === undefined ? '{}' : JSON.stringify(customOnly(options.metadata))
    if (Buffer.byteLength(json) > config.maxMetadataBytes) throw new PowMetadataTooLargeError(config.maxMetadataBytes)
    const metadata = JSON.parse(json) as PowMetadata
    const now = Date.now()
    const fingerprint = randomFingerprint()
    const step = signIn(userKey, fingerprint, metadata, { session: true, token: options.persistent === true }, now, config.rules,
      minter(userBucket(userKey), fingerprint))
    const device = step.device as Device
    // The devices this browser named end in the same step when they are the user's (a second
    // round trip only for another user's).
    const ended = this.#named
    const same: DeviceWrite[] = []
    for (const { device: old } of ended) {
      if (old.userKey === userKey) same.push(deviceDelete(old.fingerprint, now))
      else await pow.devices.end(old.userKey, old.fingerprint)
    }
    const userJson = JSON.stringify(user)
    const { evicted } = await pow.devices.commit(userKey, [deviceWrite(device, 0, now, config.rules), ...same], {
      user: userJson,
      limit: config.maxDevices
    })
    for (const old of ended) this.#notifyDeleted(old, 'sign-in')
    this.#named = [{ device, user: userJson }]
    this.#device = device
    this.user = user
    this.#setCookies(step, null)
    if (step.token === undefined) persistent?.[kClearCookie]()
    pow.notify('session:created', this.#event(user, device))
    pow.notifyDeleted({ request: this.#request, user, userKey }, evicted, 'evicted')
  }

  /** Signs out: ends this browser's device (its session and remember-me token) and clears the cookies the request carried. */
  async delete (): Promise<void> {
    await this.#cookies.run(async () => { await this.#end('sign-out') })
  }

  async #end (reason: DeletedReason): Promise<void> {
    const ended = this.#named
    for (const { device } of ended) await this.#pow.devices.end(device.userKey, device.fingerprint)
    const current = this.#device === null ? null : { device: this.#device, user: this.user }
    this.#named = NONE_NAMED
    this.#device = null
    this.user = null
    for (const old of ended) this.#notifyDeleted(old, reason, current)
    this.#request.powPersistentSession?.[kClearCookie]()
    this.#clearCookie()
  }

  /**
   * Expires the session cookie, if the browser holds one. A sign-out that came without cookies
   * (a cross-site post, say) sends no Set-Cookie: there is nothing of this browser's to clear.
   */
  #clearCookie (): void {
    if (!this.#hasCookie) return
    const { name, options } = this.#pow.config.session
    this.#cookies.clear(name, options)
    this.#hasCookie = false
  }

  /** Stores new credentials for the signed-in user; all the user's devices see them. */
  async update (user: PowUser): Promise<void> {
    const device = this.#requireDevice('update')
    if (this.#pow.config.userKey(user) !== device.userKey) {
      throw new TypeError('fastify-pow: update(user) must be given the signed-in user')
    }
    await this.#pow.devices.commit(device.userKey, [], { user: JSON.stringify(user) })
    this.user = user
  }

  /** The signed-in user's devices: each browser with a working session or remember-me token. */
  async sessions (): Promise<SessionInfo[]> {
    const device = this.#requireDevice('sessions')
    return toSessionInfos(this.#pow, await this.#pow.devices.list(device.userKey), device.fingerprint)
  }

  /** Ends another device of the signed-in user; false when the fingerprint is not one of this user's devices. */
  async deleteSession (fingerprint: string): Promise<boolean> {
    const device = this.#requireDevice('deleteSession')
    if (fingerprint === device.fingerprint) {
      await this.delete()
      return true
    }
    if (!isFingerprint(fingerprint)) return false
    const ended = await this.#pow.devices.revoke(device.userKey, fingerprint)
    if (ended) this.#pow.notifyDeleted({ request: this.#request, user: this.user as PowUser, userKey: device.userKey }, [fingerprint], 'revoked')
    return ended
  }

  /** Ends every other device of the signed-in user; returns their fingerprints. */
  async deleteOtherSessions (): Promise<string[]> {
    const device = this.#requireDevice('deleteOtherSessions')
    const { fingerprints } = await this.#pow.devices.revokeAll(device.userKey, device.fingerprint)
    this.#pow.notifyDeleted({ request: this.#request, user: this.user as PowUser, userKey: device.userKey }, fingerprints, 'revoked')
    return fingerprints
  }

  /**
   * @internal Authenticates the request from its verified cookies: the session id first, then,
   * when it signs nobody in, the remember-me token. Done at once (undefined) when the store
   * answers at once and the request needs no write, as most requests; else a promise.
   */
  [kAuthenticate] (sid: Verified | null, token: Verified | null, reloadUser: boolean): Promise<void> | undefined {
    if (sid === null) return this.#byToken(token, reloadUser)
    const read = this.#pow.devices.read(sid.bucket, sid.fingerprint)
    if (read instanceof Promise) return read.then((loaded) => this.#bySession(sid, token, reloadUser, loaded))
    return this.#bySession(sid, token, reloadUser, read)
  }

  /** The session id's device as read: signed in at once when the step needs no write, no event and no reload. */
  #bySession (sid: Verified, token: Verified | null, reloadUser: boolean, read: Loaded | null): Promise<void> | undefined {
    const rules = this.#pow.config.rules
    // The token cookie of the same device lives on when the session renews.
    const tokenHash = token !== null && token.fingerprint === sid.fingerprint && token.bucket === sid.bucket ? token.hash : undefined
    const step = showSession(read === null ? null : read.device, sid.hash, tokenHash, Date.now(), rules, sid.mint)
    if (step.write || step.auth !== 'session' || step.event !== undefined || reloadUser) {
      return this.#bySessionSettled(sid, token, tokenHash, reloadUser, { loaded: read, step })
    }
    const loaded = read as Loaded
    this.#name(loaded)
    this.#signIn(step, loaded.user, token)
    this.#resign(sid, step)
    return undefined
  }

  /** The session id's step written (settled against parallel writes), then the token's when the id signs nobody in. */
  async #bySessionSettled (sid: Verified, token: Verified | null, tokenHash: string | undefined, reloadUser: boolean, first: { loaded: Loaded | null, step: Step }): Promise<void> {
    const pow = this.#pow
    const rules = pow.config.rules
    const decide = (device: Device | null, now: number): Step => showSession(device, sid.hash, tokenHash, now, rules, sid.mint)
    const { step, loaded } = first.step.write ? await pow.devices.settle(sid.bucket, sid.fingerprint, decide, first) : first
    if (loaded !== null) this.#name(loaded)
    if (step.auth === 'theft') {
      const { userKey, fingerprint } = step.device as Device
      await pow.revokeStolen({ request: this.#request, user: JSON.parse((loaded as Loaded).user) as PowUser, userKey, fingerprint }, 'session:reuse',
        'a superseded session id came back')
      this.#named = NONE_NAMED
      this.#clearCookie()
      return
    }
    if (step.auth === 'session') {
      if (!await this.#signedIn(step, (loaded as Loaded).user, reloadUser, token)) return
      if (step.event !== undefined) pow.notify('session:renewed', this.#event(this.user as PowUser, step.device as Device))
      this.#resign(sid, step)
      return
    }
    this.#request.log.debug('fastify-pow: the session cookie names no working session')
    await this.#byToken(token, reloadUser)
  }

  /**
   * Signed with an older secret: signed again with the current one. Only the current id: a
   * retired one must not come back into the cookie over its replacement.
   */
  #resign (sid: Verified, step: Step): void {
    if (step.session === undefined && sid.renew && step.device?.session?.hash === sid.hash) {
      this.#cookies.set(this.#pow.config.session.name, this.#pow.sign(sid.secret), this.#pow.config.session.options)
    }
  }

  /** The remember-me token, when the session id signed nobody in. */
  async #byToken (token: Verified | null, reloadUser: boolean): Promise<void> {
    if (token === null) return
    const pow = this.#pow
    const rules = pow.config.rules
    const { step, loaded } = await pow.devices.settle(token.bucket, token.fingerprint,
      (device, now) => showToken(device, token.hash, now, rules, token.mint))
    const persistent = pow.config.persistent as NonNullable<Pow['config']['persistent']>
    if (loaded !== null && !this.#named.some((n) => n.device.fingerprint === loaded.device.fingerprint)) this.#name(loaded)
    if (step.auth === 'theft') {
      const { userKey, fingerprint } = step.device as Device
      await pow.revokeStolen({ request: this.#request, user: JSON.parse((loaded as Loaded).user) as PowUser, userKey, fingerprint }, 'persistent:reuse',
        'a used remember-me token came back after its grace')
      this.#named = NONE_NAMED
    }
    if (step.clear === true) {
      this.#request.log.debug('fastify-pow: the remember-me cookie names no working token')
      this.#cookies.clear(persistent.name, persistent.options)
      return
    }
    if (step.auth === 'none') return
    if (!await this.#signedIn(step, (loaded as Loaded).user, reloadUser, token)) return
    if (step.auth === 'session') {
      const user = this.user as PowUser
      const device = step.device as Device
      pow.notify('persistent:used', this.#event(user, device))
      pow.notify('session:created', this.#event(user, device))
    }
  }

  /** A device this request's cookies named, as read. */
  #name (loaded: Named): void {
    this.#named = this.#named.length === 0 ? [loaded] : [...this.#named, loaded]
  }

  /** The request is signed in by `step`, with the user as stored: the device, the user and the cookies. */
  #signIn (step: Step, user: string, token: Verified | null): void {
    this.#device = step.device as Device
    this.user = this.#pow.devices.user(user)
    this.#setCookies(step, token)
  }

  /** The request is signed in by `step`: the user (reloaded), the device and the cookies; false when `reloadUser` ended it. */
  async #signedIn (step: Step, user: string, reloadUser: boolean, token: Verified | null): Promise<boolean> {
    if (!reloadUser) {
      this.#signIn(step, user, token)
      return true
    }
    this.#device = step.device as Device
    this.user = this.#pow.devices.user(user)
    const reloaded = await this.#pow.reload(this.user, this.#request)
    if (reloaded === null) {
      await this.#end('reload')
      return false
    }
    this.user = reloaded
    this.#setCookies(step, token)
    return true
  }

  /** The cookies a step asks for. */
  #setCookies (step: Step, token: Verified | null): void {
    const pow = this.#pow
    const { session, persistent } = pow.config
    if (step.session !== undefined) {
      this.#cookies.set(session.name, pow.sign(step.session), session.options)
      this.#hasCookie = true
    }
    if (persistent === undefined) return
    if (step.token !== undefined) {
      this.#cookies.set(persistent.name, pow.sign(step.token), { ...persistent.options, maxAge: this.#tokenMaxAge(step.device as Device) })
    } else if (token !== null && (step.tokenMoved === true || token.renew) && (step.device as Device).token?.hash === token.hash) {
      this.#cookies.set(persistent.name, pow.sign(token.secret), { ...persistent.options, maxAge: this.#tokenMaxAge(step.device as Device) })
    }
  }

  /** The remember-me cookie's Max-Age: until the device's token expires, in whole seconds. */
  #tokenMaxAge (device: Device): number {
    const expiresAt = device.token === null ? Date.now() : device.token.expiresAt
    return Math.max(0, Math.ceil((expiresAt - Date.now()) / 1000))
  }

  #requireDevice (method: string): Device {
    if (this.#device === null || this.user === null) throw new PowNotSignedInError(`request.powSession.${method}()`)
    return this.#device
  }

  #event (user: PowUser, device: Device): PowEvent {
    return { request: this.#request, user, userKey: device.userKey, fingerprint: device.fingerprint }
  }

  /**
   * `session:deleted` for a device this request's cookies named, when it was live. Its user: the
   * request's (as `reloadUser` gave it) when it is the device signed in, else as the store had it.
   */
  #notifyDeleted ({ device, user }: Named, reason: DeletedReason, current = this.#device === null ? null : { device: this.#device, user: this.user }): void {
    if (!isLive(device, Date.now(), this.#pow.config.rules)) return
    if (this.#pow.listenerCount('session:deleted') === 0) return
    const shown = current !== null && current.user !== null && current.device.fingerprint === device.fingerprint ? current.user : JSON.parse(user) as PowUser
    this.#pow.notify('session:deleted', { ...this.#event(shown, device), reason })
  }
}
