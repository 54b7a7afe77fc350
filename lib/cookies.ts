import { stringifySetCookie } from 'cookie'
import type { FastifyReply } from 'fastify'
import type { CookieAttributes } from './options.js'

/** Space or tab: what the cookie package trims around a cookie's name and value. */
function isBlank (code: number): boolean {
  return code === 32 || code === 9
}

/**
 * The value of the cookie `name` in a Cookie header, exactly as `parseCookie(header)[name]` of
 * the cookie package gives it: the first pair of that name, its name and value trimmed of spaces
 * and tabs, the value percent-decoded when it holds a `%` and decodes. Pairs are walked the same
 * way; only the one asked for is taken, so no object of every cookie (whose names V8 would look
 * up in its string table) is built on each request.
 */
export function cookieValue (header: string, name: string): string | undefined {
  const length = header.length
  if (length < 2) return undefined
  let index = 0
  do {
    const eq = header.indexOf('=', index)
    if (eq === -1) return undefined
    let end = header.indexOf(';', index)
    if (end === -1) end = length
    if (eq > end) {
      // A pair without `=`: start again after the last `;` before this `=`.
      index = header.lastIndexOf(';', eq - 1) + 1
      continue
    }
    let start = index
    let stop = eq
    while (start < stop && isBlank(header.charCodeAt(start))) start++
    while (stop > start && isBlank(header.charCodeAt(stop - 1))) stop--
    if (stop - start === name.length && header.startsWith(name, start)) {
      start = eq + 1
      stop = end
      while (start < stop && isBlank(header.charCodeAt(start))) start++
      while (stop > start && isBlank(header.charCodeAt(stop - 1))) stop--
      return decode(header.slice(start, stop))
    }
    index = end + 1
  } while (index < length)
  return undefined
}

/** A cookie value percent-decoded, as the cookie package's default `decode`: as it is when it does not decode. */
function decode (value: string): string {
  if (!value.includes('%')) return value
  try {
    return decodeURIComponent(value)
  } catch {
    return value
  }
}

// What a cleared cookie is sent with, over its own attributes: the browser drops it at once.
const CLEARED = { expires: new Date(0), maxAge: 0 }

/**
 * The cookies one request's session helpers want to set. They reach the reply only when the
 * outermost helper call finishes; if it throws (a store failure), none of them do, so a 503
 * leaves the browser's cookies as they were.
 */
export class PendingCookies {
  #reply: FastifyReply
  #pending: Array<[string, string | null, CookieAttributes]> = []
  #depth = 0
  /** Cookie name -> the header this request's calls wrote for it; made on the first write. */
  #written: Map<string, string> | undefined

  constructor (reply: FastifyReply) {
    this.#reply = reply
  }

  set (name: string, value: string, options: CookieAttributes): void {
    this.#pending.push([name, value, options])
  }

  clear (name: string, options: CookieAttributes): void {
    this.#pending.push([name, null, options])
  }

  async run<T> (work: () => Promise<T>): Promise<T> {
    this.begin()
    let result: T
    try {
      result = await work()
    } catch (err) {
      this.abort()
      throw err
    }
    this.commit()
    return result
  }

  /** Starts a helper call; it ends with {@link commit} or, when it throws, {@link abort}. */
  begin (): void {
    this.#depth++
  }

  /** A helper call succeeded: when it is the outermost, its cookies go to the reply. */
  commit (): void {
    if (--this.#depth === 0) this.#flush()
  }

  /** A helper call threw: no cookie of this request's calls so far reaches the reply. */
  abort (): void {
    this.#depth--
    this.#pending.length = 0
  }

  #flush (): void {
    if (this.#pending.length === 0) return
    // Taken first: a cookie the reply refuses (it throws) is not written again by a later call.
    const pending = this.#pending
    this.#pending = []
    const reply = this.#reply
    // Written as headers, not through @fastify/cookie's reply.setCookie: fastify-pow needs no
    // cookie plugin, and an app's own @fastify/cookie (registered before or after fastify-pow,
    // with options of its own) adds its cookies to these. One header per cookie name: a later
    // call of the same request (a sign-in after the hook renewed) replaces what an earlier wrote.
    const earlier = this.#written
    if (earlier !== undefined) {
      const mine = new Set(earlier.values())
      const others = ([] as Array<string | number>).concat(reply.getHeader('set-cookie') ?? []).filter((h) => !mine.has(String(h)))
      reply.removeHeader('set-cookie')
      if (others.length > 0) reply.header('set-cookie', others)
    }
    const written = this.#written = earlier ?? new Map()
    for (const [name, value, options] of pending) {
      written.set(name, value === null ? stringifySetCookie({ ...options, ...CLEARED, name, value: '' }) : stringifySetCookie({ ...options, name, value }))
    }
    const sent = [...written.values()]
    reply.header('set-cookie', sent.length === 1 ? sent[0] : sent)
  }
}
