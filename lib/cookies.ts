import type { CookieSerializeOptions } from '@fastify/cookie'
import type { FastifyReply } from 'fastify'

/**
 * The cookies one request's session helpers want to set. They reach the reply only when the
 * outermost helper call finishes; if it throws (a store failure), none of them do, so a 503
 * leaves the browser's cookies as they were.
 */
export class PendingCookies {
  #reply: FastifyReply
  #pending: Array<[string, string | null, CookieSerializeOptions]> = []
  #depth = 0

  constructor (reply: FastifyReply) {
    this.#reply = reply
  }

  set (name: string, value: string, options: CookieSerializeOptions): void {
    this.#pending.push([name, value, options])
  }

  clear (name: string, options: CookieSerializeOptions): void {
    this.#pending.push([name, null, options])
  }

  async run<T> (work: () => Promise<T>): Promise<T> {
    this.#depth++
    try {
      const result = await work()
      if (this.#depth === 1) this.#flush()
      return result
    } catch (err) {
      this.#pending.length = 0
      throw err
    } finally {
      this.#depth--
    }
  }

  #flush (): void {
    for (const [name, value, options] of this.#pending) {
      if (value === null) this.#reply.clearCookie(name, options)
      else this.#reply.setCookie(name, value, options)
    }
    this.#pending.length = 0
  }
}
