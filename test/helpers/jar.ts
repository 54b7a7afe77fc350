import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'

interface StoredCookie { value: string, expires: number | undefined }

/**
 * A browser-like cookie jar over `app.inject`: it sends the cookies it holds, stores the
 * Set-Cookie answers (deleting expired or emptied ones) and honours Max-Age against Date.now().
 */
export class CookieJar {
  readonly app: FastifyInstance
  cookies = new Map<string, StoredCookie>()

  constructor (app: FastifyInstance) {
    this.app = app
  }

  /** The cookie header this jar would send now. */
  header (): string {
    const now = Date.now()
    const parts: string[] = []
    for (const [name, cookie] of this.cookies) {
      if (cookie.expires !== undefined && cookie.expires <= now) {
        this.cookies.delete(name)
        continue
      }
      parts.push(`${name}=${cookie.value}`)
    }
    return parts.join('; ')
  }

  get (name: string): string | undefined {
    this.header()
    return this.cookies.get(name)?.value
  }

  set (name: string, value: string): void {
    this.cookies.set(name, { value, expires: undefined })
  }

  delete (name: string): void {
    this.cookies.delete(name)
  }

  /** A second jar with the same cookies, as a copied cookie file would be. */
  clone (): CookieJar {
    const jar = new CookieJar(this.app)
    for (const [name, cookie] of this.cookies) jar.cookies.set(name, { ...cookie })
    return jar
  }

  /** Sends a request with the jar's cookies; stores what comes back. */
  async request (options: InjectOptions | string): Promise<LightMyRequestResponse> {
    const opts: InjectOptions = typeof options === 'string' ? { url: options } : { ...options }
    const cookie = this.header()
    opts.headers = { ...opts.headers }
    if (cookie !== '') opts.headers.cookie = cookie
    const response = await this.app.inject(opts)
    this.store(response)
    return response
  }

  store (response: LightMyRequestResponse): void {
    const now = Date.now()
    for (const c of response.cookies as Array<{ name: string, value: string, maxAge?: number, expires?: Date }>) {
      let expires: number | undefined
      if (c.maxAge !== undefined) expires = now + c.maxAge * 1000
      else if (c.expires !== undefined) expires = c.expires.getTime()
      if (c.value === '' || (expires !== undefined && expires <= now)) this.cookies.delete(c.name)
      else this.cookies.set(c.name, { value: c.value, expires })
    }
  }
}
