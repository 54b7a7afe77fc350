import { stringifySetCookie } from 'cookie'
import type { FastifyReply } from 'fastify'
import type { CookieAttributes } from './options.js'

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
