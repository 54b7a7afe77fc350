import type { CookieSerializeOptions } from '@fastify/cookie'
import type { FastifyRequest } from 'fastify'

/**
 * The application's user type. Merge your own into it:
 *
 * ```ts
 * declare module 'fastify-pow' {
 *   interface PowUser { id: number, email: string, name: string }
 * }
 * ```
 */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface PowUser {}

/** Custom metadata an application stores with a session (user agent, IP, ...). Must be JSON-serializable. */
export type PowMetadata = Record<string, unknown>

/** One stored session: what a hashed session id points at. Times are epoch milliseconds. */
export interface SessionRecord {
  /** `String(userId(user))`: the key of the user's credentials and session list. */
  userKey: string
  /** Names one browser's chain of sessions across renewals and remember-me sign-ins. */
  fingerprint: string
  /** When this session id was issued (login, renewal or remember-me sign-in). */
  insertedAt: number
  /** When the browser signed in (login or remember-me); renewals keep it. Bounds `absoluteTtl`. */
  signedInAt: number
  /** Application metadata given at sign-in. */
  metadata: PowMetadata
}

/** What `PowStore.getSession` returns. */
export interface StoredSession {
  /** Read-only: the built-in stores hand the same object to every read of the same record. */
  readonly record: Readonly<SessionRecord>
  /** The user's current credentials. */
  user: unknown
  /** True once a later `putSession` (or `rotateToken`) with the same fingerprint replaced it. */
  retired: boolean
  /**
   * When it was retired, while the session that replaced it was never read: its browser may not
   * have received that one (a 503 after the store ran the write). It keeps its TTL until the
   * replacement is first read; from then on it lives out the grace.
   */
  unclaimedSince?: number
  /**
   * Replaced before it was ever read. Whoever presents it got the cookie of a renewal or
   * rotation that was done again for someone else: theft.
   */
  superseded?: boolean
}

/** A live, non-retired session in a user's list. */
export interface ListedSession {
  sidHash: string
  record: SessionRecord
  expiresAt: number
}

/** A stored remember-me token. */
export interface TokenRecord {
  userKey: string
  fingerprint: string
  /** The user's credentials, so the token still signs in after every session of the user has expired. */
  user: unknown
  /** Metadata of the session the token was created from; carried into the sessions it creates. */
  metadata: PowMetadata
  /** Set by `rotateToken`: when the token was used. */
  usedAt?: number
  /**
   * Used, but neither the session nor the token its rotation stored has been used yet (the
   * browser may never have received them): it may rotate again.
   */
  unclaimed?: boolean
  /** The token of a rotation that was done again (`TokenRotation.again`): presenting it is theft. */
  superseded?: boolean
  /** How often it rotated again (`TokenRotation.again`); a store refuses more than 3. */
  rotatedAgain?: number
}

/**
 * A condition on a write, checked atomically with it: a renewal or a new remember-me token that
 * races a revocation on another request or instance must not bring the browser back.
 */
export interface PutConditions {
  /** Write only while this session (hash) still exists. */
  session?: string
}

/** What a remember-me sign-in stores in the same atomic step as it uses the token. */
export interface TokenRotation {
  /** The new session: `record.userKey` and `record.fingerprint` are the token's. */
  sidHash: string
  session: SessionRecord
  sessionTtl: number
  /** Other sessions of the fingerprint are retired as with `putSession`, for this long once the new one is read. */
  grace: number
  /** The new token: same user, fingerprint and metadata. */
  tokenHash: string
  tokenTtl: number
  /**
   * Rotate a used token again, to these new ids, when its rotation is unclaimed, it was used
   * longer than `grace` ago and it has rotated again fewer than 3 times; the earlier new session
   * and token become superseded.
   */
  again?: boolean
}

/**
 * How often an unclaimed session may renew again, or an unclaimed token rotate again (its answers
 * lost each time), before a store refuses: a replayed old cookie must not mint sessions forever.
 */
export const AGAIN_MAX = 3

/** Which of a user's fingerprints `PowStore.revoke` removes. */
export type RevokeSelector = { fingerprint: string } | { except?: string }

/**
 * The storage backend. Every method is async; TTLs are milliseconds. Session and token keys are
 * `<bucket>.<SHA-256 of the secret the browser holds>`, never the secret; the bucket is
 * `userBucket(userKey)`, the same for every id and token of a user, so a sharded store can keep
 * all of one user's entries together. A store must pass `test/store-contract.ts`.
 */
export interface PowStore {
  /**
   * Stores a session for `ttl` ms, adds it to its user's session list (pruning expired entries)
   * and, when `user` is not `undefined`, replaces the user's credentials. Other sessions of the
   * same user with the same fingerprint are retired and unclaimed: they keep their TTL until
   * this session is first read by `getSession`, then stay readable for at most `grace` ms. Those
   * that were themselves replacements (of a put that retired sessions, or of `rotateToken`) and
   * were never read are superseded instead. A condition session that is itself retired (renewed
   * again because its first renewal's answer was lost) renews again at most 3 times: then the put
   * returns false.
   * Returns false, having written nothing, when a condition does not hold.
   */
  putSession (
    sidHash: string, record: SessionRecord, user: unknown, ttl: number, grace: number, conditions?: PutConditions
  ): Promise<boolean>
  /**
   * The session and its user's credentials, or null when either is missing or expired. The first
   * read of a session claims it: the sessions it retired then live out their grace, and the token
   * whose rotation stored it is no longer unclaimed.
   */
  getSession (sidHash: string): Promise<StoredSession | null>
  /**
   * Deletes one session; deleting a user's last session also deletes the user's credentials.
   * An unread replacement is claimed first: the sessions it retired live out the grace only.
   */
  deleteSession (sidHash: string): Promise<boolean>
  /** The user's live, non-retired sessions. */
  listSessions (userKey: string): Promise<ListedSession[]>
  /** The credentials of every user with at least one live session. */
  listUsers (): Promise<unknown[]>
  /** Replaces the user's credentials (when stored) and the user held by the user's tokens. */
  updateUser (userKey: string, user: unknown): Promise<void>
  /**
   * Deletes the user's sessions (retired ones included) and remember-me tokens whose fingerprint
   * is selected. Returns the distinct fingerprints that had a session or token deleted.
   */
  revoke (userKey: string, selector: RevokeSelector): Promise<string[]>
  /**
   * Stores a remember-me token for `ttl` ms and indexes it under its user. Returns false, having
   * written nothing, when the condition does not hold.
   */
  putToken (tokenHash: string, record: TokenRecord, ttl: number, conditions?: PutConditions): Promise<boolean>
  /** The token, with `usedAt` once used, or null when missing or expired. */
  getToken (tokenHash: string): Promise<TokenRecord | null>
  /**
   * Uses an unused token, in one atomic step: marks it used at `now` (it stays readable, used,
   * until it expires), stores the new session as `putSession` would, and the new token. The user
   * of both is the user's stored credentials when there are any (a newer update wins), else the
   * token's. 'used' when the token was used already and 'missing' when it is gone: nothing is
   * written then. Of concurrent rotations of one token with different new ids exactly one is
   * 'rotated'. The same rotation again (the same new session id, a command sent twice) writes
   * the same again and is 'rotated'; so is `again` (see `TokenRotation`). Rotating a token
   * that an earlier rotation stored claims that earlier rotation. A superseded token is 'used'.
   */
  rotateToken (tokenHash: string, now: number, rotation: TokenRotation): Promise<'rotated' | 'used' | 'missing'>
  /** Extends an unused token's lifetime to `ttl` ms from now. */
  touchToken (tokenHash: string, ttl: number): Promise<void>
  deleteToken (tokenHash: string): Promise<void>
  /** Takes the named lock for `ttl` ms; true for exactly one of concurrent callers. */
  lock (key: string, ttl: number): Promise<boolean>
}

export interface SessionOptions {
  /** Cookie name. Default `pow_session`; a `__Host-` name is supported. */
  cookieName?: string
  /** Idle timeout in ms. Default 30 minutes. */
  ttl?: number
  /** Age in ms after which a request renews the session id. Default 15 minutes; must be below `ttl`. */
  renewAfter?: number
  /** How long in ms a rotated session id or a used remember-me token keeps working. Default 10 s. */
  rotationGrace?: number
  /** Hard limit in ms on a session family from sign-in, across renewals. Off by default. */
  absoluteTtl?: number
  /** Cookie attributes; they override the defaults (HttpOnly, SameSite=Lax, Path=/, Secure in production). */
  cookie?: CookieSerializeOptions
}

export interface PersistentSessionOptions {
  /** Cookie name. Default `pow_persistent_session`. */
  cookieName?: string
  /** Token and cookie lifetime in ms. Default 30 days. */
  ttl?: number
  cookie?: CookieSerializeOptions
}

export interface PowOptions {
  /** Cookie signing secrets, each at least 32 characters. The first signs; all verify. */
  secret: string | string[]
  /** Default: a new `MemoryStore`, or a `RedisStore` on `app.redis` when @fastify/redis is registered. */
  store?: PowStore
  /** The user's unique id. Default `user.id`. */
  userId?: (user: PowUser) => string | number
  /** Refreshes the user on every authenticated request; null ends the session (Pow's `reload`). */
  reloadUser?: (user: PowUser, request: FastifyRequest) => Promise<PowUser | null>
  session?: SessionOptions
  /** Remember-me; on by default, `false` turns it off. */
  persistentSession?: false | PersistentSessionOptions
}

/** A session of the signed-in user, as `request.powSession.sessions()` lists it. */
export interface SessionInfo {
  fingerprint: string
  insertedAt: number
  signedInAt: number
  current: boolean
  metadata: PowMetadata
}

/** `request.powSession.metadata`. */
export interface SessionMetadata extends PowMetadata {
  fingerprint: string
  insertedAt: number
  signedInAt: number
}

/** Payload of the events on `app.pow`. */
export interface PowEvent {
  request?: FastifyRequest
  user: unknown
  userKey: string
  fingerprint: string
}

export interface PowEvents {
  /** A user signed in with `create()` or a remember-me token. */
  'session:created': [PowEvent]
  /** A session got a new id (same fingerprint). */
  'session:renewed': [PowEvent]
  /** Sessions of a fingerprint were ended (sign-out, revocation, reload returning null). */
  'session:deleted': [PowEvent]
  /** A remember-me token signed a user in and was replaced. */
  'persistent:used': [PowEvent]
  /** A used remember-me token came back after the grace: the fingerprint was revoked. */
  'persistent:reuse': [PowEvent]
  /** A replaced session id came back after its replacement was reissued: the fingerprint was revoked. */
  'session:reuse': [PowEvent]
}
