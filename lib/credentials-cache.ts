import { hashToken, isToken, randomFingerprint, randomToken, userBucket } from './crypto.js'
import { copyMetadata } from './parsed.js'
import type { Pow } from './pow.js'
import type { ListedSession, PowUser, SessionInfo, SessionMetadata, SessionRecord } from './types.js'

/** Splits the metadata an application passes into the record's own fields and the custom rest. */
export function toRecord (userKey: string, metadata: Partial<SessionMetadata> | undefined, now: number): SessionRecord {
  const { fingerprint, insertedAt, signedInAt, ...custom } = metadata ?? {}
  return {
    userKey,
    fingerprint: typeof fingerprint === 'string' && fingerprint !== '' ? fingerprint : randomFingerprint(),
    insertedAt: typeof insertedAt === 'number' ? insertedAt : now,
    signedInAt: typeof signedInAt === 'number' ? signedInAt : now,
    metadata: custom
  }
}

export function toMetadata (record: SessionRecord): SessionMetadata {
  return { ...copyMetadata(record.metadata), fingerprint: record.fingerprint, insertedAt: record.insertedAt, signedInAt: record.signedInAt }
}

/** One entry per fingerprint, the newest session of each, oldest sign-in first. */
export function toSessionInfos (list: ListedSession[], currentFingerprint: string | undefined): SessionInfo[] {
  const byFingerprint = new Map<string, SessionRecord>()
  for (const { record } of list) {
    const seen = byFingerprint.get(record.fingerprint)
    if (seen === undefined || seen.insertedAt < record.insertedAt) byFingerprint.set(record.fingerprint, record)
  }
  return [...byFingerprint.values()]
    .sort((a, b) => a.signedInAt - b.signedInAt)
    .map((record) => ({
      fingerprint: record.fingerprint,
      insertedAt: record.insertedAt,
      signedInAt: record.signedInAt,
      current: record.fingerprint === currentFingerprint,
      metadata: record.metadata
    }))
}

/**
 * `app.pow.credentials`: Pow's credentials cache. Session ids are the raw ids the cookies hold;
 * the store only ever sees their hashes. Every method fails with a 503
 * `POW_ERR_STORE_UNAVAILABLE` error when the store does.
 */
export class CredentialsCache {
  #pow: Pow

  constructor (pow: Pow) {
    this.#pow = pow
  }

  /** A new random session id for `user`, for `put`. */
  generateId (user: PowUser): string {
    return randomToken(userBucket(this.#pow.config.userKey(user)))
  }

  /**
   * Stores `user` under `sessionId` (from `generateId(user)`) for the session TTL and adds the
   * session to the user's list. `metadata.fingerprint` (random when absent) names the browser:
   * other sessions of the user with that fingerprint are retired: they stay valid until this one
   * is first read, then for the rotation grace only.
   */
  async put (sessionId: string, user: PowUser, metadata?: Partial<SessionMetadata>): Promise<void> {
    const { session, userKey } = this.#pow.config
    const key = userKey(user)
    if (!isToken(sessionId) || !sessionId.startsWith(userBucket(key))) {
      throw new TypeError('fastify-pow: credentials.put needs a session id from credentials.generateId(user)')
    }
    const record = toRecord(key, metadata, Date.now())
    await this.#pow.store.putSession(hashToken(sessionId), record, user, session.ttl, session.rotationGrace)
  }

  /** The user and metadata stored under `sessionId`, or null. */
  async get (sessionId: string): Promise<{ user: PowUser, metadata: SessionMetadata } | null> {
    if (!isToken(sessionId)) return null
    const found = await this.#pow.store.getSession(hashToken(sessionId))
    return found === null ? null : { user: found.user as PowUser, metadata: toMetadata(found.record) }
  }

  /** Deletes one session; the user's credentials go with their last session. */
  async delete (sessionId: string): Promise<boolean> {
    return isToken(sessionId) && await this.#pow.store.deleteSession(hashToken(sessionId))
  }

  /** The user's live sessions, one per fingerprint. */
  async sessions (user: PowUser): Promise<Array<Omit<SessionInfo, 'current'>>> {
    const list = await this.#pow.store.listSessions(this.#pow.config.userKey(user))
    return toSessionInfos(list, undefined).map(({ current, ...info }) => info)
  }

  /** Every user with at least one live session. */
  async users (): Promise<PowUser[]> {
    return await this.#pow.store.listUsers() as PowUser[]
  }

  /**
   * Ends the user's sessions and their remember-me tokens, all but the fingerprint `except`
   * (for example `request.powSession.metadata.fingerprint` after a password change).
   * Returns the fingerprints that were ended.
   */
  async deleteUserSessions (user: PowUser, options: { except?: string } = {}): Promise<string[]> {
    const userKey = this.#pow.config.userKey(user)
    const revoked = await this.#pow.store.revoke(userKey, { except: options.except })
    for (const fingerprint of revoked) this.#pow.notify('session:deleted', { user, userKey, fingerprint })
    return revoked
  }

  /** Stores new credentials for the user: every session of the user sees them on its next request. */
  async updateUser (user: PowUser): Promise<void> {
    await this.#pow.store.updateUser(this.#pow.config.userKey(user), user)
  }
}
