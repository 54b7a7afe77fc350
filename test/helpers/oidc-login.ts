/**
 * Signs a user in at the provider of test/helpers/oidc-provider.ts without a browser: follows
 * the authorization URL with fetch (redirects by hand, the provider's cookies in a jar of its
 * own), fills in oidc-provider's development login form, confirms its consent page, and stops at
 * the redirect back to the client's redirect_uri, which it returns without requesting it.
 */

interface JarCookie { name: string, value: string, path: string, expires: number | undefined }

/** Just enough of a browser's cookie jar for one origin: names, paths, expiry. */
class ProviderCookies {
  private readonly cookies: JarCookie[] = []

  header (url: URL): string {
    const now = Date.now()
    return this.cookies
      .filter((c) => (c.expires === undefined || c.expires > now) && pathMatches(url.pathname, c.path))
      .sort((a, b) => b.path.length - a.path.length)
      .map((c) => `${c.name}=${c.value}`)
      .join('; ')
  }

  store (url: URL, response: Response): void {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(';')
      const eq = pair.indexOf('=')
      if (eq <= 0) continue
      const cookie: JarCookie = { name: pair.slice(0, eq).trim(), value: pair.slice(eq + 1).trim(), path: defaultPath(url), expires: undefined }
      let maxAge: number | undefined
      for (const attribute of attributes) {
        const [key, ...rest] = attribute.split('=')
        const value = rest.join('=').trim()
        switch (key.trim().toLowerCase()) {
          case 'path': if (value.startsWith('/')) cookie.path = value; break
          case 'expires': cookie.expires = Date.parse(value); break
          case 'max-age': maxAge = Number(value); break
        }
      }
      if (maxAge !== undefined && Number.isFinite(maxAge)) cookie.expires = Date.now() + maxAge * 1000
      const i = this.cookies.findIndex((c) => c.name === cookie.name && c.path === cookie.path)
      if (i !== -1) this.cookies.splice(i, 1)
      if (cookie.expires === undefined || cookie.expires > Date.now()) this.cookies.push(cookie)
    }
  }
}

function pathMatches (requestPath: string, cookiePath: string): boolean {
  if (requestPath === cookiePath) return true
  if (!requestPath.startsWith(cookiePath)) return false
  return cookiePath.endsWith('/') || requestPath[cookiePath.length] === '/'
}

function defaultPath (url: URL): string {
  const slash = url.pathname.lastIndexOf('/')
  return slash <= 0 ? '/' : url.pathname.slice(0, slash)
}

const decodeHtml = (text: string): string => text.replace(/&(#x[0-9a-f]+|#\d+|amp|lt|gt|quot|apos);/gi, (_, entity: string) => {
  const e = entity.toLowerCase()
  if (e.startsWith('#x')) return String.fromCodePoint(parseInt(e.slice(2), 16))
  if (e.startsWith('#')) return String.fromCodePoint(parseInt(e.slice(1), 10))
  return ({ amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" } as Record<string, string>)[e]
})

/** The attributes of an HTML start tag, decoded; valueless attributes map to ''. */
function attributesOf (tag: string): Record<string, string> {
  const attributes: Record<string, string> = {}
  for (const m of tag.matchAll(/([^\s"'<>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g)) {
    attributes[m[1].toLowerCase()] = decodeHtml(m[2] ?? m[3] ?? m[4] ?? '')
  }
  return attributes
}

interface Form { action: string, method: string, inputs: Array<Record<string, string>> }

/** The first `<form>` of a page and its inputs. */
function parseForm (html: string): Form | undefined {
  const form = /<form\b([^>]*)>([\s\S]*?)<\/form>/i.exec(html)
  if (form === null) return undefined
  const attributes = attributesOf(form[1])
  const inputs = [...form[2].matchAll(/<input\b([^>]*)>/gi)].map((m) => attributesOf(m[1]))
  return { action: attributes.action ?? '', method: (attributes.method ?? 'get').toLowerCase(), inputs }
}

const snippet = (body: string): string => {
  const text = body.replace(/<style[\s\S]*?<\/style>/gi, '').replace(/\s+/g, ' ').trim()
  return text.length > 600 ? `${text.slice(0, 600)}…` : text
}

/** Where the browser is sent back to the client: origin and path of its redirect_uri. */
function sameEndpoint (a: URL, b: URL): boolean {
  return a.origin === b.origin && a.pathname === b.pathname
}

/**
 * Walks the provider's pages for `authorizationUrl` as the user `login` (any password) and
 * returns the URL the provider redirects to at the client's redirect_uri (with `code`, `state`,
 * `iss`, or an `error`), without requesting it.
 */
export async function signInAtProvider (authorizationUrl: string, login: string): Promise<string> {
  const start = new URL(authorizationUrl)
  const redirectUri = start.searchParams.get('redirect_uri')
  if (redirectUri === null) throw new Error(`the authorization URL has no redirect_uri: ${authorizationUrl}`)
  const callback = new URL(redirectUri)
  const jar = new ProviderCookies()
  const done = new Set<string>()

  let url = start
  let init: RequestInit = { method: 'GET' }
  let step = `GET ${url.pathname}`
  for (let hops = 0; hops < 20; hops++) {
    const headers = new Headers(init.headers)
    headers.set('accept', 'text/html')
    const cookie = jar.header(url)
    if (cookie !== '') headers.set('cookie', cookie)
    const response = await fetch(url, { ...init, headers, redirect: 'manual' })
    jar.store(url, response)

    if (response.status >= 300 && response.status < 400) {
      await response.body?.cancel()
      const location = response.headers.get('location')
      if (location === null) throw new Error(`${step}: ${response.status} without a Location`)
      const next = new URL(location, url)
      if (sameEndpoint(next, callback)) {
        if (!next.searchParams.has('error') && (!done.has('login') || !done.has('consent'))) {
          throw new Error(`${step}: sent back to the client before ${done.has('login') ? 'consent' : 'the login form'}: ${next.href}`)
        }
        return next.href
      }
      if (next.origin !== start.origin) throw new Error(`${step}: redirected away from the provider, to ${next.href}`)
      url = next
      init = { method: 'GET' }
      step = `GET ${url.pathname}`
      continue
    }

    const body = await response.text()
    const unexpected = (what: string): Error =>
      new Error(`${step}: expected ${what}, got ${response.status} ${response.headers.get('content-type') ?? ''}: ${snippet(body)}`)
    if (response.status !== 200) throw unexpected('a redirect or a page')
    const form = parseForm(body)
    if (form === undefined || form.method !== 'post') throw unexpected('a page with a POST form')
    const prompt = form.inputs.find((i) => i.name === 'prompt')?.value
    const fields = new URLSearchParams()
    for (const input of form.inputs) {
      if (input.name !== undefined && input.type === 'hidden') fields.set(input.name, input.value ?? '')
    }
    if (prompt === 'login' && !done.has('login')) {
      if (!form.inputs.some((i) => i.name === 'login')) throw unexpected('a login form with a "login" field')
      fields.set('login', login)
      if (form.inputs.some((i) => i.name === 'password')) fields.set('password', 'any-password')
    } else if (prompt === 'consent' && done.has('login') && !done.has('consent')) {
      // Confirming is submitting the form as it is.
    } else {
      throw unexpected(done.has('login') ? 'the consent page' : 'the login form')
    }
    done.add(prompt)
    url = new URL(form.action, url)
    if (url.origin !== start.origin) throw new Error(`${step}: the ${prompt} form posts away from the provider, to ${url.href}`)
    init = { method: 'POST', body: fields, headers: { 'content-type': 'application/x-www-form-urlencoded' } }
    step = `POST ${url.pathname} (${prompt})`
  }
  throw new Error(`${step}: still at the provider after 20 requests`)
}
