import { createHash, randomBytes } from 'node:crypto'

/**
 * A secret (session id or remember-me token) is `<bucket><fingerprint><random>`, base64url:
 * - bucket: 4 characters of the SHA-256 of the user key, so that a sharded store (Redis
 *   Cluster) keeps all of a user's devices in one slot and finds them from the cookie alone;
 * - fingerprint: the device's 22 characters (128 random bits), so that the cookie names the
 *   device to read;
 * - random: 256 bits, the part that makes it a secret. The device keeps only its SHA-256.
 */
export const BUCKET_LENGTH = 4
export const FINGERPRINT_LENGTH = 22
const RANDOM_LENGTH = 43
export const SECRET_LENGTH = BUCKET_LENGTH + FINGERPRINT_LENGTH + RANDOM_LENGTH
const SECRET_RE = new RegExp(`^[A-Za-z0-9_-]{${SECRET_LENGTH}}$`)
const FINGERPRINT_RE = new RegExp(`^[A-Za-z0-9_-]{${FINGERPRINT_LENGTH}}$`)

export function userBucket (userKey: string): string {
  return createHash('sha256').update(userKey).digest('base64url').slice(0, BUCKET_LENGTH)
}

/** 128 random bits, base64url: a new device's fingerprint. */
export function randomFingerprint (): string {
  return randomBytes(16).toString('base64url')
}

/** True for strings `randomFingerprint` can produce; anything else names no device. */
export function isFingerprint (value: unknown): value is string {
  return typeof value === 'string' && FINGERPRINT_RE.test(value)
}

/** A new secret for the device `fingerprint` of the user in `bucket`: what the cookie holds, and the hash the device keeps. */
export function newSecret (bucket: string, fingerprint: string): { secret: string, hash: string } {
  const secret = bucket + fingerprint + randomBytes(32).toString('base64url')
  return { secret, hash: hashSecret(secret) }
}

/** True for strings `newSecret` can produce; anything else is not looked up. */
export function isSecret (value: string): boolean {
  return SECRET_RE.test(value)
}

/** What a device keeps instead of a secret: its SHA-256, so a dump of the store signs nobody in. */
export function hashSecret (secret: string): string {
  return createHash('sha256').update(secret).digest('base64url')
}

/** The device a secret belongs to. */
export function secretDevice (secret: string): { bucket: string, fingerprint: string } {
  return { bucket: secret.slice(0, BUCKET_LENGTH), fingerprint: secret.slice(BUCKET_LENGTH, BUCKET_LENGTH + FINGERPRINT_LENGTH) }
}
