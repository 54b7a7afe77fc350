/**
 * The example's "Sign in with OpenID Connect" against a real OpenID Provider (oidc-provider) on
 * a loopback port, without a browser: the provider's login and consent pages are walked over
 * HTTP, and the app is driven with inject. test/stress/oidc-browser.test.ts does it in Chromium.
 */
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { test, type Test } from 'tap'
import { buildApp } from '../examples/app.js'
import type { OidcOptions } from '../examples/oidc.js'
import { CookieJar } from './helpers/jar.js'
import { signInAtProvider } from './helpers/oidc-login.js'
import { type LogLine, logLines } from './helpers/outage.js'
import { startProvider } from './helpers/oidc-provider.js'

const SECRET = 'example-oidc-secret-0123456789-abcdefghijklm'
const APP_ORIGIN = 'http://app.test'
const REDIRECT_URI = `${APP_ORIGIN}/auth/oidc/callback`

interface Setup {
  app: FastifyInstance
  /** The app's log lines. */
  lines: LogLine[]
  issuer: string
  close: () => Promise<void>
}

async function setup (t: Test, oidc: Partial<OidcOptions> = {}): Promise<Setup> {
  const provider = await startProvider({
    redirectUris: [oidc.redirectUri ?? REDIRECT_URI],
    accounts: {
      taken: { email: 'alice@example.com', email_verified: true, name: 'Not Alice' },
      unverified: { email: 'dave@idp.test', email_verified: false, name: 'Dave' }
    }
  })
  t.teardown(() => provider.close())
  const { lines, stream } = logLines()
  const app = await buildApp({
    secret: SECRET,
    logger: { level: 'info', stream },
    oidc: { issuer: provider.issuer, clientId: provider.clientId, clientSecret: provider.clientSecret, redirectUri: REDIRECT_URI, ...oidc }
  })
  t.teardown(() => app.close())
  return { app, lines, issuer: provider.issuer, close: async () => { await provider.close() } }
}

/** `/auth/oidc` in this browser: the authorization URL it is sent to. */
async function start (jar: CookieJar, remember = false): Promise<URL> {
  const res = await jar.request(`/auth/oidc${remember ? '?remember=on' : ''}`)
  if (res.statusCode !== 303) throw new Error(`/auth/oidc answered ${res.statusCode}: ${res.body}`)
  return new URL(res.headers.location as string)
}

/** The callback URL, requested in this browser. */
async function callback (jar: CookieJar, url: string): Promise<LightMyRequestResponse> {
  const parsed = new URL(url)
  if (parsed.origin + parsed.pathname !== REDIRECT_URI) throw new Error(`the provider sent the browser to ${url}`)
  return await jar.request(parsed.pathname + parsed.search)
}

const sessionCookie = (res: LightMyRequestResponse): string | undefined => res.cookies.find((c) => c.name === 'pow_session' && c.value !== '')?.value

test('sign in at the provider: back on / signed in, remembered, the device listed, the same account next time', async (t) => {
  const { app, issuer } = await setup(t)
  const page = await app.inject('/login')
  t.match(page.body, /<form method="get" action="\/auth\/oidc"/)
  t.match(page.body, /Sign in with OpenID Connect/)
  // The button's form is answered with a redirect to the provider, which CSP's form-action covers.
  t.match(page.headers['content-security-policy'], new RegExp(`form-action 'self' ${issuer.replace(/\./g, '\\.')}(;|$)`))

  const jar = new CookieJar(app)
  const authorization = await start(jar, true)
  t.equal(authorization.origin, issuer, 'sent to the provider')
  t.equal(authorization.searchParams.get('response_type'), 'code')
  t.equal(authorization.searchParams.get('code_challenge_method'), 'S256')
  t.match(authorization.searchParams.get('code_challenge'), /^[\w-]{43}$/)
  t.match(authorization.searchParams.get('state'), /^[\w-]{20,}$/)
  t.match(authorization.searchParams.get('nonce'), /^[\w-]{20,}$/)
  t.equal(authorization.searchParams.get('redirect_uri'), REDIRECT_URI)
  t.ok(jar.get('pow_oidc'), 'the transaction cookie')

  const back = await callback(jar, await signInAtProvider(authorization.href, 'carol'))
  t.equal(back.statusCode, 303)
  t.equal(back.headers.location, '/')
  t.ok(sessionCookie(back), 'a session cookie')
  t.ok(jar.get('pow_persistent_session'), 'remember-me, as asked')
  t.equal(jar.get('pow_oidc'), undefined, 'the transaction cookie is cleared')
  for (const cookie of back.cookies) {
    t.ok(['pow_session', 'pow_persistent_session', 'pow_oidc', '_csrf'].includes(cookie.name), `only the app's own cookies: ${cookie.name}`)
    t.ok(cookie.value.length < 200, `no provider token in ${cookie.name}`)
  }

  const me = (await jar.request('/api/me')).json()
  t.match(me.user, { email: 'carol@idp.test', name: 'carol' })
  const home = await jar.request('/')
  t.equal(home.statusCode, 200)
  t.match(home.body, /carol@idp\.test/)
  const sessions = (await jar.request('/api/sessions')).json().sessions as Array<{ current: boolean, remembered: boolean }>
  t.equal(sessions.length, 1)
  t.match(sessions[0], { current: true, remembered: true })

  const second = new CookieJar(app)
  await callback(second, await signInAtProvider((await start(second)).href, 'carol'))
  t.equal((await second.request('/api/me')).json().user.id, me.user.id, 'the same identity signs in to the same account')
  t.equal(second.get('pow_persistent_session'), undefined, 'no remember-me unless asked')
  t.equal(((await jar.request('/api/sessions')).json().sessions as unknown[]).length, 2, 'both devices listed')
})

// What an attacker who injects a code from another flow, or rewrites the request, would change.
// The reason logged says which check refused it.
const TAMPERED: Array<[string, string, string, RegExp]> = [
  ['a wrong state', 'state', 'a-state-this-browser-never-made-0123456789', /unexpected "state" response parameter value/],
  ['a wrong nonce', 'nonce', 'a-nonce-this-browser-never-made-0123456789', /unexpected ID Token "nonce" claim value/],
  ['a code challenge the browser did not make (PKCE)', 'code_challenge', 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM', /invalid_grant|PKCE/]
]

for (const [what, name, value, reason] of TAMPERED) {
  test(`${what} is refused: signed out, back on the login page`, async (t) => {
    const { app, lines } = await setup(t)
    const jar = new CookieJar(app)
    const authorization = await start(jar)
    authorization.searchParams.set(name, value)
    const back = await callback(jar, await signInAtProvider(authorization.href, 'carol'))
    t.equal(back.statusCode, 303)
    t.equal(back.headers.location, '/login?error=oidc')
    t.equal(sessionCookie(back), undefined)
    t.equal((await jar.request('/api/me')).statusCode, 401)
    t.match((await jar.request('/login?error=oidc')).body, /Signing in with your identity provider did not work/)
    const refused = lines.filter((line) => line.msg === 'OpenID Connect sign-in refused') as Array<LogLine & { reason: string }>
    t.equal(refused.length, 1)
    t.match(refused[0]?.reason, reason)
  })
}

test('a replayed code signs nobody in: not in this browser, not with a copy of its cookies, not in another', async (t) => {
  const { app, lines } = await setup(t)
  const reasons = (): string[] => lines.filter((line) => line.msg === 'OpenID Connect sign-in refused').map((line) => (line as LogLine & { reason: string }).reason)
  const jar = new CookieJar(app)
  const authorization = await start(jar)
  const url = await signInAtProvider(authorization.href, 'carol')
  const copy = jar.clone()
  const other = new CookieJar(app)
  t.equal((await callback(jar, url)).headers.location, '/', 'the first use signs in')

  const again = await callback(jar, url)
  t.equal(again.headers.location, '/login?error=oidc', 'this browser: its transaction is over')
  t.match(reasons().at(-1), /no transaction cookie/)
  const replayed = await callback(copy, url)
  t.equal(replayed.headers.location, '/login?error=oidc', 'a copy of the transaction cookie: the provider refuses the used code')
  t.match(reasons().at(-1), /invalid_grant/)
  t.equal(sessionCookie(replayed), undefined)
  t.equal((await copy.request('/api/me')).statusCode, 401)
  const elsewhere = await callback(other, url)
  t.equal(elsewhere.headers.location, '/login?error=oidc', 'another browser has no transaction')
  t.equal((await other.request('/api/me')).statusCode, 401)
  t.equal(((await jar.request('/api/sessions')).json().sessions as unknown[]).length, 1, 'one device only')
})

test('a forged transaction cookie is refused', async (t) => {
  const { app, lines } = await setup(t)
  const jar = new CookieJar(app)
  const authorization = await start(jar)
  const sealed = jar.get('pow_oidc') as string
  const [body, mac] = sealed.split('.')
  const transaction = JSON.parse(Buffer.from(body, 'base64url').toString())
  transaction.remember = true
  jar.set('pow_oidc', `${Buffer.from(JSON.stringify(transaction)).toString('base64url')}.${mac}`)
  const back = await callback(jar, await signInAtProvider(authorization.href, 'carol'))
  t.equal(back.headers.location, '/login?error=oidc')
  t.equal(sessionCookie(back), undefined)
  const refused = lines.filter((line) => line.msg === 'OpenID Connect sign-in refused') as Array<LogLine & { reason: string }>
  t.match(refused.at(-1)?.reason, /forged or expired/, 'refused for its signature, before the provider is asked')
})

test('an existing account is not taken over by email; an unverified email makes no account', async (t) => {
  const { app } = await setup(t)
  const taken = new CookieJar(app)
  const back = await callback(taken, await signInAtProvider((await start(taken)).href, 'taken'))
  t.equal(back.headers.location, '/login?error=oidc-email-taken')
  t.equal(sessionCookie(back), undefined)
  t.match((await taken.request('/login?error=oidc-email-taken')).body, /An account with this email already exists/)
  const alice = await app.inject({ method: 'POST', url: '/api/login', headers: { 'content-type': 'application/json' }, payload: { email: 'alice@example.com', password: 'alice-password' } })
  t.equal(alice.json().user.name, 'Alice', 'alice is still alice')

  const unverified = new CookieJar(app)
  const refused = await callback(unverified, await signInAtProvider((await start(unverified)).href, 'unverified'))
  t.equal(refused.headers.location, '/login?error=oidc-email-unverified')
  t.equal(sessionCookie(refused), undefined)
})

test('a denied consent or a provider error is a failed sign-in, not a 5xx', async (t) => {
  const { app } = await setup(t)
  const jar = new CookieJar(app)
  const authorization = await start(jar)
  const state = authorization.searchParams.get('state') as string
  const res = await jar.request(`/auth/oidc/callback?error=access_denied&state=${state}&iss=${encodeURIComponent(new URL(authorization).origin)}`)
  t.equal(res.statusCode, 303)
  t.equal(res.headers.location, '/login?error=oidc')
})

test('a provider that cannot be reached is a 503, and the password sign-in still works', async (t) => {
  const { app, close } = await setup(t)
  await close()
  const res = await app.inject('/auth/oidc')
  t.equal(res.statusCode, 503)
  t.match(res.body, /Sign-in is unavailable right now/)
  t.equal((await app.inject('/login')).statusCode, 200, 'the password sign-in still works')
})

test('behind a proxy that serves the app under a prefix, the registered redirect URI is the one sent', async (t) => {
  const registered = `${APP_ORIGIN}/accounts/auth/oidc/callback`
  const { app } = await setup(t, { redirectUri: registered })
  const jar = new CookieJar(app)
  const authorization = await start(jar)
  t.equal(authorization.searchParams.get('redirect_uri'), registered)
  const url = new URL(await signInAtProvider(authorization.href, 'carol'))
  t.equal(url.pathname, '/accounts/auth/oidc/callback')
  // The proxy strips the prefix.
  const back = await jar.request(url.pathname.replace('/accounts', '') + url.search)
  t.equal(back.headers.location, '/')
  t.equal((await jar.request('/api/me')).json().user.email, 'carol@idp.test')
})

test('a provider that goes down during the sign-in: the callback is a 503, not a sign-in', async (t) => {
  const { app, close } = await setup(t)
  const jar = new CookieJar(app)
  const url = await signInAtProvider((await start(jar)).href, 'carol')
  await close()
  const back = await callback(jar, url)
  t.equal(back.statusCode, 503)
  t.equal(sessionCookie(back), undefined)
  t.equal((await jar.request('/api/me')).statusCode, 401)
})

test('without OIDC_* settings there is no button and no route', async (t) => {
  const app = await buildApp({ secret: SECRET })
  t.teardown(() => app.close())
  const page = await app.inject('/login')
  t.notMatch(page.body, /auth\/oidc/)
  t.match(page.headers['content-security-policy'], /form-action 'self'(;|$)/)
  t.equal((await app.inject('/auth/oidc')).statusCode, 404)
})
