import { createHash, randomBytes } from 'node:crypto'

/**
 * Every session id and token starts with its user's bucket: 4 base64url characters of the
 * SHA-256 of the user key. The bucket survives hashing, so a sharded store (Redis Cluster) can
 * keep a session, its user's credentials and session list in one slot and find them from the
 * cookie alone.
 */
export const BUCKET_LENGTH = 4
const TOKEN_RE = /^[A-Za-z0-9_-]{47}$/

export function userBucket (userKey: string): string {
  return createHash('sha256').update(userKey).digest('base64url').slice(0, BUCKET_LENGTH)
}

/** The user's bucket and 256 random bits, base64url: session ids and remember-me tokens. */
export function randomToken (bucket: string): string {
  return bucket + randomBytes(32).toString('base64url')
}

/** 128 random bits, base64url: fingerprints. */
export function randomFingerprint (): string {
  return randomBytes(16).toString('base64url')
}

/** True for strings `randomToken` can produce; anything else is not looked up. */
export function isToken (value: string): boolean {
  return TOKEN_RE.test(value)
}

/**
 * What the store keeps instead of a token: `<bucket>.<SHA-256 of the token>`, so a dump of the
 * store signs nobody in.
 */
export function hashToken (token: string): string {
  return token.slice(0, BUCKET_LENGTH) + '.' + createHash('sha256').update(token).digest('base64url')
}
