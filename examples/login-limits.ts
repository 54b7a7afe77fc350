/**
 * Limits on failed sign-ins, shared by the login form and the JSON login: so many per IP, and so
 * many per account (the email as typed, normalised, known or not), within a window. Successful
 * sign-ins and malformed bodies do not count, so an office behind one IP can still sign in.
 *
 * Counters live in this process. Several instances behind a load balancer each count their own:
 * keep such counters in the shared store (Redis INCR with PEXPIRE) instead.
 */
import { createHash } from 'node:crypto'
import { isIPv6 } from 'node:net'
import { normalizeEmail } from './users.js'

export interface LoginLimitOptions {
  /** Failed sign-ins allowed per IP within the window. Default 20. */
  perIp: number
  /** Failed sign-ins allowed per account within the window. Default 10. */
  perAccount: number
  /** The window in milliseconds, from the first failure it counts. Default 15 minutes. */
  windowMs: number
  /** Keys kept per kind at most; when full, expired windows go first, then the oldest. Default 100 000. */
  maxKeys: number
}

export const LOGIN_LIMIT_DEFAULTS: LoginLimitOptions = { perIp: 20, perAccount: 10, windowMs: 15 * 60_000, maxKeys: 100_000 }

interface Window {
  count: number
  resetAt: number
}

/** A sign-in under way, counted as a failure until it {@link LoginAttempt.succeeded}. */
export interface LoginAttempt {
  succeeded: () => void
}

/** Counts failures per key in fixed windows. */
class Counter {
  #windows = new Map<string, Window>()
  #max: number
  #windowMs: number
  #maxKeys: number

  constructor (max: number, { windowMs, maxKeys }: LoginLimitOptions) {
    this.#max = max
    this.#windowMs = windowMs
    this.#maxKeys = maxKeys
  }

  /** Milliseconds until `key` may try again, or 0 when it may now. */
  wait (key: string, now: number): number {
    const window = this.#windows.get(key)
    return window !== undefined && window.resetAt > now && window.count >= this.#max ? window.resetAt - now : 0
  }

  /** Counts one for `key`; returns the window counted in. */
  add (key: string, now: number): Window {
    let window = this.#windows.get(key)
    if (window === undefined || window.resetAt <= now) {
      this.#windows.delete(key)
      this.#makeRoom(now)
      window = { count: 0, resetAt: now + this.#windowMs }
      this.#windows.set(key, window)
    }
    window.count++
    return window
  }

  /** Takes back one that {@link add} counted in `window` (a window since replaced keeps its own count). */
  remove (key: string, window: Window): void {
    if (--window.count <= 0 && this.#windows.get(key) === window) this.#windows.delete(key)
  }

  #makeRoom (now: number): void {
    const windows = this.#windows
    if (windows.size < this.#maxKeys) return
    // Insertion order is opening order, and every window is as long: the expired ones are first.
    for (const [key, window] of windows) {
      if (window.resetAt > now && windows.size < this.#maxKeys) break
      windows.delete(key)
    }
  }
}

/**
 * The key an IP is counted under: an IPv4 address, or the /64 network of an IPv6 address (one
 * subscriber usually has a whole /64, and would otherwise get a fresh limit per address).
 */
export function ipKey (ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip)
  if (mapped !== null) return mapped[1]
  if (!isIPv6(ip)) return ip
  const [head, tail = ''] = ip.toLowerCase().split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === '' ? [] : tail.split(':')
  const groups = ip.includes('::') ? [...left, ...Array(8 - left.length - right.length).fill('0'), ...right] : left
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '')).join(':')}::/64`
}

/** The key an account is counted under: a hash of the normalised email, short whatever was typed. */
function accountKey (email: string): string {
  return createHash('sha256').update(normalizeEmail(email)).digest('base64url').slice(0, 22)
}

export class LoginLimiter {
  readonly options: LoginLimitOptions
  #byIp: Counter
  #byAccount: Counter

  constructor (options: Partial<LoginLimitOptions> = {}) {
    const merged = { ...LOGIN_LIMIT_DEFAULTS }
    for (const [name, value] of Object.entries(options) as Array<[keyof LoginLimitOptions, number | undefined]>) {
      if (value === undefined) continue
      if (!Number.isInteger(value) || value < 1) throw new TypeError(`login limit ${name} must be a positive integer (got ${String(value)})`)
      merged[name] = value
    }
    this.options = merged
    this.#byIp = new Counter(merged.perIp, merged)
    this.#byAccount = new Counter(merged.perAccount, merged)
  }

  /**
   * Starts a sign-in for `email` from `ip`: the seconds to wait (for `Retry-After`) when the IP or
   * the account is at its limit, else an attempt. The attempt counts as a failure from now on,
   * so a burst of parallel guesses cannot all pass before the first one fails; `succeeded()`
   * takes it back.
   */
  begin (ip: string, email: string): LoginAttempt | { retryAfter: number } {
    const now = Date.now()
    ip = ipKey(ip)
    const account = accountKey(email)
    const wait = Math.max(this.#byIp.wait(ip, now), this.#byAccount.wait(account, now))
    if (wait > 0) return { retryAfter: Math.ceil(wait / 1000) }
    const ipWindow = this.#byIp.add(ip, now)
    const accountWindow = this.#byAccount.add(account, now)
    let open = true
    return {
      succeeded: () => {
        if (!open) return
        open = false
        this.#byIp.remove(ip, ipWindow)
        this.#byAccount.remove(account, accountWindow)
      }
    }
  }
}

/**
 * Runs `verify` (the password check) as a sign-in of `email` from `ip`: its result, or a
 * {@link TooManySignInsError} without running it when the IP or the account is at its limit,
 * whether or not the account exists. A null result or a throw counts as a failure.
 */
export async function limitedSignIn<T> (limiter: LoginLimiter, ip: string, email: string, verify: () => Promise<T | null>): Promise<T | null> {
  const attempt = limiter.begin(ip, email)
  if ('retryAfter' in attempt) throw new TooManySignInsError(attempt.retryAfter)
  const result = await verify()
  if (result !== null) attempt.succeeded()
  return result
}

/** The error a limited sign-in throws: 429, with the seconds for `Retry-After`. */
export class TooManySignInsError extends Error {
  readonly statusCode = 429
  readonly code = 'TOO_MANY_SIGN_INS'
  readonly retryAfter: number

  constructor (retryAfter: number) {
    super('Too many failed sign-ins. Try again later.')
    this.name = 'TooManySignInsError'
    this.retryAfter = retryAfter
  }
}
