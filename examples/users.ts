import { randomBytes, scrypt, timingSafeEqual, type BinaryLike } from 'node:crypto'

/** What the session holds and the API returns: never the password hash. */
export interface PublicUser {
  id: number
  email: string
  name: string
}

interface UserRecord extends PublicUser {
  /** Null for an account made at an identity provider's sign-in: no password signs it in. */
  passwordHash: PasswordHash | null
}

/** What an identity provider's ID token says about the person signing in. */
export interface IdentityClaims {
  email?: string | undefined
  emailVerified?: boolean | undefined
  name?: string | undefined
}

/** Why `signInWithIdentity` made no user. */
export type IdentityRefusal = 'email-taken' | 'email-unverified'

interface PasswordHash {
  salt: Buffer
  hash: Buffer
}

const KEY_LENGTH = 64
const SALT_LENGTH = 16

function scryptAsync (password: BinaryLike, salt: BinaryLike): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, KEY_LENGTH, (err, key) => {
      if (err !== null) reject(err)
      else resolve(key)
    })
  })
}

export async function hashPassword (password: string): Promise<PasswordHash> {
  const salt = randomBytes(SALT_LENGTH)
  return { salt, hash: await scryptAsync(password, salt) }
}

export async function verifyPassword (password: string, stored: PasswordHash): Promise<boolean> {
  const candidate = await scryptAsync(password, stored.salt)
  return timingSafeEqual(candidate, stored.hash)
}

const SEED = [
  { id: 1, email: 'alice@example.com', name: 'Alice', password: 'alice-password' },
  { id: 2, email: 'bob@example.com', name: 'Bob', password: 'bob-password' }
]

/**
 * An email as accounts are keyed: trimmed, ASCII letters lower-cased. Only ASCII: Unicode case
 * folding maps other characters onto ASCII ones (the Kelvin sign K onto k), which would let an
 * address at an identity provider claim a different local one.
 */
export function normalizeEmail (email: string): string {
  return email.trim().replace(/[A-Z]+/g, (letters) => letters.toLowerCase())
}

function toPublic (record: UserRecord): PublicUser {
  return { id: record.id, email: record.email, name: record.name }
}

/** An in-memory user table with the two seeded users; each app gets its own, hashed at start-up. */
export class UserStore {
  /** How many scrypt verifications `authenticate` ran: one per call, known email or not. */
  passwordChecks = 0
  #byId: Map<number, UserRecord>
  #dummyHash: PasswordHash
  /** `<issuer> <subject>` -> user id: the accounts linked to an identity provider's users. */
  #identities = new Map<string, number>()

  private constructor (records: UserRecord[], dummyHash: PasswordHash) {
    this.#byId = new Map(records.map((record) => [record.id, record]))
    this.#dummyHash = dummyHash
  }

  /** Hashes the seeded passwords (random salt each) and a dummy hash for unknown emails. */
  static async create (): Promise<UserStore> {
    const records = await Promise.all(SEED.map(async ({ password, ...user }) => ({
      ...user,
      passwordHash: await hashPassword(password)
    })))
    const dummyHash = await hashPassword(randomBytes(32).toString('base64url'))
    return new UserStore(records, dummyHash)
  }

  #findByEmail (email: string): UserRecord | undefined {
    const normalized = normalizeEmail(email)
    for (const record of this.#byId.values()) {
      if (record.email === normalized) return record
    }
    return undefined
  }

  /**
   * The user for these credentials, or null. An unknown email still costs one scrypt run
   * against a dummy hash, so the response time does not tell whether the email exists.
   */
  async authenticate (email: string, password: string): Promise<PublicUser | null> {
    const record = this.#findByEmail(email)
    this.passwordChecks++
    const valid = await verifyPassword(password, record?.passwordHash ?? this.#dummyHash)
    return valid && record?.passwordHash != null ? toPublic(record) : null
  }

  /**
   * The user an identity provider signed in: the account linked to its `issuer` and `subject`,
   * or a new account for a verified email that no account has. An existing account is never
   * linked by email alone: whoever controls that email at some provider would take it over.
   */
  signInWithIdentity (issuer: string, subject: string, claims: IdentityClaims): PublicUser | IdentityRefusal {
    const key = `${issuer} ${subject}`
    const linked = this.#identities.get(key)
    if (linked !== undefined) return toPublic(this.#byId.get(linked) as UserRecord)
    if (claims.email === undefined || claims.emailVerified !== true) return 'email-unverified'
    const email = normalizeEmail(claims.email)
    if (this.#findByEmail(email) !== undefined) return 'email-taken'
    const id = Math.max(0, ...this.#byId.keys()) + 1
    const record: UserRecord = { id, email, name: claims.name?.trim().slice(0, 100) || email, passwordHash: null }
    this.#byId.set(id, record)
    this.#identities.set(key, id)
    return toPublic(record)
  }

  updateName (id: number, name: string): PublicUser | null {
    const record = this.#byId.get(id)
    if (record === undefined) return null
    record.name = name
    return toPublic(record)
  }
}
