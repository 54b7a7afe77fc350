import type { FastifyBaseLogger, FastifyRequest } from 'fastify'

/**
 * The application's user type. Merge your own into it:
 *
 * ```ts
 * declare module 'fastify-pow' {
 *   interface PowUser { id: number, email: string, name: string }
 * }
 * ```
 */
export interface PowUser {}

/**
 * Custom metadata an application stores with a device (browser, IP, ...); JSON-serializable.
 * Type yours by merging, as with `PowUser`:
 *
 * ```ts
 * declare module 'fastify-pow' {
 *   interface PowMetadata { browser?: string, ip?: string }
 * }
 * ```
 */
export interface PowMetadata { [key: string]: unknown }

/**
 * A device as a store holds it. The store does not read `data`: what it means is written in
 * `lib/lifecycle.ts` (and docs/sessions.md); the store keeps it, with the user's credentials,
 * under the device's fingerprint.
 */
export interface StoredDevice {
  /** The device record, JSON text written by the lifecycle module. */
  readonly data: string
  /** The user's credentials, JSON text. */
  readonly user: string
  /** Changes with every write of the device; a write may require the version it read. */
  readonly version: number
}

/** One device in a `DeviceChange`. */
export interface DeviceWrite {
  /** The device's fingerprint: with the user's bucket, its address in the store. */
  fingerprint: string
  /**
   * The write applies only while the device is at this version: the version read, or 0 for a
   * device that must not exist (an expired one does not). Undefined: whatever it is. Versions
   * change only with writes of the device (not with `DeviceChange.user`).
   */
  version?: number | undefined
  /** The new record (JSON text), or null to delete the device. */
  data: string | null
  /** Milliseconds from now until the store may forget the device. Ignored for a delete. */
  ttl: number
  /** Orders the user's devices for `DeviceChange.limit`: the lowest goes first. */
  usedAt: number
}

/** What `PowStore.commit` applies: all of it, atomically, or nothing. */
export interface DeviceChange {
  /** The user the devices belong to. */
  userKey: string
  devices: DeviceWrite[]
  /**
   * New credentials (JSON text): every device of the user reads them from now on. A change that
   * creates a user's first device must carry them; a later new device without them reads the
   * user's current ones. A user without devices keeps none.
   */
  user?: string | undefined
  /**
   * After the writes, keep at most this many devices of the user: those with the lowest
   * `usedAt` go, never one this change writes.
   */
  limit?: number | undefined
}

/** What `PowStore.commit` answers. */
export interface CommitResult {
  /** False, with nothing written (and `evicted` empty), when a device was not at the version a write required. */
  ok: boolean
  /** The fingerprints of the live devices that `limit` deleted; never an expired one. Ties in `usedAt` may go either way. */
  evicted: string[]
}

/**
 * Where fastify-pow keeps devices. A store knows nothing of sessions: it keeps each device's
 * record (opaque JSON) under the user's bucket (`userBucket(userKey)`) and the device's
 * fingerprint, with a TTL, a per-user index ordered by `usedAt`, and the user's credentials;
 * it applies a change atomically under the versions it names. Every rule (renewal, grace,
 * claims, rotation, theft, revocation, limits) is in `lib/lifecycle.ts`, so a store is storage
 * only. A store must pass `test/store-contract.ts`.
 */
export interface PowStore {
  /**
   * The device, or null when it is missing or expired. One read, no write: every authenticated
   * request makes it. A store in the process may answer at once instead of with a promise
   * (MemoryStore does): the request is then authenticated without waiting for a promise.
   */
  read (bucket: string, fingerprint: string): Promise<StoredDevice | null> | StoredDevice | null
  /** The user's live devices, with their fingerprints. */
  list (userKey: string): Promise<Array<StoredDevice & { fingerprint: string }>>
  /** Applies the change atomically when every version it requires holds; else writes nothing. */
  commit (change: DeviceChange): Promise<CommitResult>
  /** The credentials (JSON text) of every user with a live device. */
  users (): Promise<string[]>
  /**
   * Optional: called when fastify-pow is registered (to check or create tables), with the app's
   * logger for what should not stop the app; a throw fails `app.ready()`.
   */
  ready?: ((log: FastifyBaseLogger) => Promise<void>) | undefined
  /** Optional: called when the app closes, to stop the store's own timers. Never closes a client or pool the store was given. */
  close?: (() => Promise<void>) | undefined
}

/** Attributes of a fastify-pow cookie, over its defaults (HttpOnly, SameSite=Lax, Path=/, Secure in production). */
export interface PowCookieOptions {
  domain?: string | undefined
  path?: string | undefined
  sameSite?: 'lax' | 'strict' | 'none' | boolean | undefined
  secure?: boolean | undefined
  httpOnly?: boolean | undefined
  partitioned?: boolean | undefined
  priority?: 'low' | 'medium' | 'high' | undefined
}

export interface SessionOptions {
  /** Cookie name. Default `pow_session`; a `__Host-` name is supported. */
  cookieName?: string | undefined
  /** Idle timeout in ms. Default 30 minutes. */
  ttl?: number | undefined
  /** Age in ms after which a request renews the session id. Default 15 minutes; must be below `ttl`. */
  renewAfter?: number | undefined
  /** How long in ms a retired session id or a used remember-me token keeps working once its replacement is claimed. Default 10 s. */
  rotationGrace?: number | undefined
  /** Hard limit in ms on a session from its start (a sign-in or a remember-me sign-in), across renewals. Off by default. */
  absoluteTtl?: number | undefined
  /** Cookie attributes; they override the defaults (HttpOnly, SameSite=Lax, Path=/, Secure in production). */
  cookie?: PowCookieOptions | undefined
}

export interface PersistentSessionOptions {
  /** Cookie name. Default `pow_persistent_session`. */
  cookieName?: string | undefined
  /** Token and cookie lifetime in ms, from the token's last use or renewal. Default 30 days. */
  ttl?: number | undefined
  /**
   * A token no longer signs in once the device's last sign-in with credentials (`signedInAt`)
   * is older than this, in ms, however active the browser. Off by default.
   */
  absoluteTtl?: number | undefined
  cookie?: PowCookieOptions | undefined
}

export interface PowOptions {
  /** Cookie signing secrets, each at least 32 characters. The first signs; all verify. */
  secret: string | string[]
  /** Default: a `RedisStore` on `app.redis` when @fastify/redis is registered, else a `PostgresStore` on `app.pg` when @fastify/postgres is, else a new `MemoryStore`. */
  store?: PowStore | undefined
  /** The user's unique id. Default `user.id`. */
  userId?: ((user: PowUser) => string | number) | undefined
  /**
   * Called on every authenticated request with the stored user: what it returns is this
   * request's `request.powSession.user` (the store keeps what it had: `update()` stores); null
   * signs the device out (Pow's `reload`). A throw answers 503 `POW_ERR_RELOAD_USER` and changes
   * no cookie.
   */
  reloadUser?: ((user: PowUser, request: FastifyRequest) => Promise<PowUser | null>) | undefined
  /** How many devices a user may have; a sign-in beyond it ends the least recently used. Default 100. */
  maxDevices?: number | undefined
  /** The largest session metadata `create()` accepts, in bytes of its JSON. Default 4096. */
  maxMetadataBytes?: number | undefined
  session?: SessionOptions | undefined
  /** Remember-me; on by default, `false` turns it off. */
  persistentSession?: false | PersistentSessionOptions | undefined
}

/** A device of the signed-in user, as `request.powSession.sessions()` lists it. */
export interface SessionInfo {
  fingerprint: string
  /** When the device's latest session id was issued. */
  insertedAt: number
  /** When the device last signed in with credentials (`create()`). */
  signedInAt: number
  current: boolean
  /** The device has a live remember-me token. */
  remembered: boolean
  metadata: PowMetadata
}

/** `request.powSession.metadata`. */
export interface SessionMetadata extends PowMetadata {
  fingerprint: string
  /** When the current session id was issued. */
  insertedAt: number
  /** When this device last signed in with credentials (`create()`); renewals and remember-me keep it. */
  signedInAt: number
}

/** Why `session:deleted` fired. */
export type DeletedReason =
  /** `delete()`: the browser signed out. */
  | 'sign-out'
  /** `create()` on a browser that was signed in: its earlier device ends. */
  | 'sign-in'
  /** `deleteSession()`, `deleteOtherSessions()` or `credentials.deleteUserSessions()`. */
  | 'revoked'
  /** `reloadUser` returned null. */
  | 'reload'
  /** A retired or superseded secret came back: see `session:reuse` and `persistent:reuse`. */
  | 'theft'
  /** A sign-in beyond `maxDevices` ended the user's least recently used device. */
  | 'evicted'

/** Payload of the events on `app.pow`. */
export interface PowEvent {
  /**
   * The request that caused the event: the user's own, or the request of whoever called an
   * `app.pow.credentials` method with `{ request }` (an admin: `request.powSession.user`).
   */
  request?: FastifyRequest | undefined
  /** Who acted, as an `app.pow.credentials` call outside a request named them (`{ actor: 'cli' }`). */
  actor?: string | undefined
  /** The user whose device it is, with the credentials the store holds (or the new ones at sign-in). */
  user: PowUser
  userKey: string
  fingerprint: string
  /** `session:deleted` only: why. */
  reason?: DeletedReason | undefined
}

/** Who made an `app.pow.credentials` change, for its events. */
export interface PowActor {
  /** The request that made the change (an admin's); events carry it. */
  request?: FastifyRequest | undefined
  /** A name for whoever made it outside a request (`'cli'`, `'password-reset-job'`). */
  actor?: string | undefined
}

export interface PowEvents {
  /** A user signed in with `create()` or a remember-me token. */
  'session:created': [PowEvent]
  /** A session got a new id (same fingerprint). */
  'session:renewed': [PowEvent]
  /** A device was ended; `reason` says why. */
  'session:deleted': [PowEvent]
  /** A remember-me token signed a user in and was replaced. */
  'persistent:used': [PowEvent]
  /** A used remember-me token came back after the grace: the device was revoked. */
  'persistent:reuse': [PowEvent]
  /** A superseded session id came back: the device was revoked. */
  'session:reuse': [PowEvent]
}
