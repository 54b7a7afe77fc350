import type { FastifyRequest } from 'fastify'
import { stringifySetCookie } from 'cookie'
import { optionError } from './errors.js'
import type { Rules } from './lifecycle.js'
import type { PowCookieOptions, PowOptions, PowStore, PowUser } from './types.js'

const MINUTE = 60_000
const DAY = 24 * 60 * MINUTE
export const STORE_METHODS = ['read', 'list', 'commit', 'users'] as const

/** A cookie's attributes as fastify-pow writes them. */
export type CookieAttributes = PowCookieOptions & { maxAge?: number }

export interface CookieConfig {
  name: string
  options: CookieAttributes
}

const isBoolean = (value: unknown): boolean => typeof value === 'boolean'
/** What each cookie attribute may be; `stringifySetCookie` then checks a domain's and a path's characters. */
const COOKIE_VALUES: Record<string, (value: unknown) => boolean> = {
  domain: (value) => typeof value === 'string' && value !== '',
  path: (value) => typeof value === 'string' && value.startsWith('/'),
  sameSite: (value) => value === 'lax' || value === 'strict' || value === 'none' || typeof value === 'boolean',
  secure: isBoolean,
  httpOnly: isBoolean,
  partitioned: isBoolean,
  priority: (value) => value === 'low' || value === 'medium' || value === 'high'
}
const COOKIE_ATTRIBUTES = new Set(Object.keys(COOKIE_VALUES))

export interface Config {
  secrets: string[]
  store: PowStore | undefined
  userKey: (user: unknown) => string
  reloadUser: ((user: PowUser, request: FastifyRequest) => Promise<PowUser | null>) | undefined
  maxDevices: number
  maxMetadataBytes: number
  session: CookieConfig & { ttl: number, renewAfter: number, rotationGrace: number, absoluteTtl: number | undefined }
  persistent: (CookieConfig & { ttl: number, absoluteTtl: number | undefined }) | undefined
  /** The durations the lifecycle's rules read. */
  rules: Rules
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function duration (value: unknown, option: string, fallback: number): number
function duration (value: unknown, option: string, fallback: undefined): number | undefined
function duration (value: unknown, option: string, fallback: number | undefined): number | undefined {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw optionError(option, `must be a positive, finite number of milliseconds (got ${String(value)})`)
  }
  return value
}

function count (value: unknown, option: string, fallback: number, min: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw optionError(option, `must be an integer of at least ${min} (got ${String(value)})`)
  }
  return value
}

function cookieConfig (
  prefix: string, name: unknown, fallbackName: string, cookie: unknown
): CookieConfig {
  if (name !== undefined && (typeof name !== 'string' || !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(name))) {
    throw optionError(`${prefix}.cookieName`, 'must be a valid cookie name')
  }
  if (cookie !== undefined && !isObject(cookie)) throw optionError(`${prefix}.cookie`, 'must be an object')
  // An attribute given as undefined keeps its default, as one left out does.
  const given: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(cookie ?? {})) {
    if (!COOKIE_ATTRIBUTES.has(key)) throw optionError(`${prefix}.cookie.${key}`, `is not an attribute fastify-pow lets you set (${[...COOKIE_ATTRIBUTES].join(', ')})`)
    if (value === undefined) continue
    const allowed = COOKIE_VALUES[key] as (value: unknown) => boolean
    if (!allowed(value)) throw optionError(`${prefix}.cookie.${key}`, `is not a valid value (got ${JSON.stringify(value)})`)
    given[key] = value
  }
  const cookieName = (name as string | undefined) ?? fallbackName
  const hostPrefixed = cookieName.startsWith('__Host-')
  const options: CookieAttributes = {
    httpOnly: true,
    sameSite: 'lax',
    path: '/',
    secure: hostPrefixed || cookieName.startsWith('__Secure-') || process.env.NODE_ENV === 'production',
    ...(given as PowCookieOptions)
  }
  try {
    stringifySetCookie({ ...options, name: cookieName, value: 'x' })
  } catch (err) {
    throw optionError(`${prefix}.cookie`, `is not a valid cookie: ${(err as Error).message}`)
  }
  if (hostPrefixed && (options.secure !== true || options.path !== '/' || options.domain !== undefined)) {
    throw optionError(`${prefix}.cookie`, 'must keep Secure, Path=/ and no Domain with a __Host- cookie name')
  }
  if (cookieName.startsWith('__Secure-') && options.secure !== true) {
    throw optionError(`${prefix}.cookie`, 'must keep Secure with a __Secure- cookie name')
  }
  return { name: cookieName, options }
}

/** Validates every option before the plugin does anything; throws a `POW_ERR_OPTION` error naming the option. */
export function buildConfig (opts: PowOptions): Config {
  if (!isObject(opts)) throw optionError('options', 'must be an object')
  const secrets = typeof opts.secret === 'string' ? [opts.secret] : opts.secret
  if (!Array.isArray(secrets) || secrets.length === 0) {
    throw optionError('secret', 'is required: a string of at least 32 characters, or an array of them')
  }
  for (const secret of secrets) {
    if (typeof secret !== 'string' || secret.length < 32) {
      throw optionError('secret', 'must be at least 32 characters long')
    }
  }

  const store = opts.store
  if (store !== undefined) {
    const missing = STORE_METHODS.filter((method) => typeof (store as unknown as Record<string, unknown>)?.[method] !== 'function')
    if (missing.length > 0) throw optionError('store', `does not implement the store interface (missing ${missing.join(', ')})`)
  }

  if (opts.userId !== undefined && typeof opts.userId !== 'function') throw optionError('userId', 'must be a function')
  if (opts.reloadUser !== undefined && typeof opts.reloadUser !== 'function') throw optionError('reloadUser', 'must be a function')
  const maxDevices = count(opts.maxDevices, 'maxDevices', 100, 1)
  const maxMetadataBytes = count(opts.maxMetadataBytes, 'maxMetadataBytes', 4096, 2)
  const userId = opts.userId ?? ((user: PowUser) => (user as { id?: string | number }).id as string | number)
  const userKey = (user: unknown): string => {
    const id = isObject(user) ? userId(user as unknown as PowUser) : undefined
    if ((typeof id !== 'string' || id === '') && (typeof id !== 'number' || !Number.isFinite(id))) {
      throw new TypeError('fastify-pow: userId(user) must return a non-empty string or a finite number')
    }
    return String(id)
  }

  const session = opts.session ?? {}
  if (!isObject(session)) throw optionError('session', 'must be an object')
  const ttl = duration(session.ttl, 'session.ttl', 30 * MINUTE)
  const renewAfter = duration(session.renewAfter, 'session.renewAfter', 15 * MINUTE)
  if (renewAfter >= ttl) throw optionError('session.renewAfter', `must be below session.ttl (${ttl} ms)`)
  const rotationGrace = duration(session.rotationGrace, 'session.rotationGrace', 10_000)
  if (rotationGrace >= ttl) throw optionError('session.rotationGrace', `must be below session.ttl (${ttl} ms)`)
  const absoluteTtl = duration(session.absoluteTtl, 'session.absoluteTtl', undefined)

  let persistent: Config['persistent']
  const p = opts.persistentSession
  if (p !== false) {
    if (p !== undefined && !isObject(p)) throw optionError('persistentSession', 'must be false or an object')
    const pttl = duration(p?.ttl, 'persistentSession.ttl', 30 * DAY)
    // The cookie's Max-Age is in whole seconds; browsers cap it at 400 days.
    if (pttl < 1000 || pttl > 400 * DAY) throw optionError('persistentSession.ttl', 'must be from 1 second to 400 days (in milliseconds)')
    const pAbsoluteTtl = duration(p?.absoluteTtl, 'persistentSession.absoluteTtl', undefined)
    const cookie = cookieConfig('persistentSession', p?.cookieName, 'pow_persistent_session', p?.cookie)
    cookie.options.maxAge = Math.floor(pttl / 1000)
    persistent = { ...cookie, ttl: pttl, absoluteTtl: pAbsoluteTtl }
  }

  const sessionCookie = cookieConfig('session', session.cookieName, 'pow_session', session.cookie)
  if (persistent !== undefined && persistent.name === sessionCookie.name) {
    throw optionError('persistentSession.cookieName', 'must differ from session.cookieName')
  }

  return {
    secrets,
    store,
    userKey,
    reloadUser: opts.reloadUser,
    maxDevices,
    maxMetadataBytes,
    session: { ...sessionCookie, ttl, renewAfter, rotationGrace, absoluteTtl },
    persistent,
    rules: {
      ttl,
      renewAfter,
      grace: rotationGrace,
      absoluteTtl,
      tokenTtl: persistent?.ttl,
      tokenAbsoluteTtl: persistent?.absoluteTtl
    }
  }
}
