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
    for (const [name, value, options] of pending) {
      if (value === null) this.#reply.clearCookie(name, options)
      else this.#reply.setCookie(name, value, options)
    }
  }
}
