import { createHash, randomBytes } from 'node:crypto'

const TOKEN_RE = /^[A-Za-z0-9_-]{43}$/

/** 256 random bits, base64url: session ids and remember-me tokens. */
export function randomToken (): string {
  return randomBytes(32).toString('base64url')
}

/** 128 random bits, base64url: fingerprints. */
export function randomFingerprint (): string {
  return randomBytes(16).toString('base64url')
}

/** True for strings `randomToken` can produce; anything else is not looked up. */
export function isToken (value: string): boolean {
  return TOKEN_RE.test(value)
}

/** What the store keeps instead of a token: a dump of the store signs nobody in. */
export function hashToken (token: string): string {
  return createHash('sha256').update(token).digest('base64url')
}
