/**
 * "Sign in with OpenID Connect" in Chromium, against a real OpenID Provider (oidc-provider) on a
 * loopback port: click the button, sign in at the provider, land on / signed in and see the
 * device listed; and the same with a wrong state, a wrong nonce and a replayed code.
 */
import { createServer } from 'node:net'
import { type Browser, type BrowserContext, type Page } from 'playwright-core'
import t0, { test, type Test } from 'tap'
import { buildApp } from '../../examples/app.js'
import { startProvider } from '../helpers/oidc-provider.js'
import { launchChromium } from '../helpers/chromium.js'

/** A loopback port free right now: the app's callback URL must be registered before it listens. */
async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise<void>((resolve) => server.close(() => { resolve() }))
  return port
}

const launched = await launchChromium('OIDC browser tests')
if (launched !== null) {
  const browser: Browser = launched
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const provider = await startProvider({ redirectUris: [`${base}/auth/oidc/callback`] })
  t0.teardown(() => provider.close())
  const app = await buildApp({
    secret: 'oidc-browser-test-secret-0123456789-abcdefghij',
    oidc: { issuer: provider.issuer, clientId: provider.clientId, clientSecret: provider.clientSecret, redirectUri: `${base}/auth/oidc/callback`, name: 'Test IdP' }
  })
  await app.listen({ port, host: '127.0.0.1' })
  t0.teardown(() => app.close())

  async function newContext (t: Test): Promise<{ context: BrowserContext, page: Page }> {
    const context = await browser.newContext()
    // The provider's built-in pages load a web font; this machine has no internet.
    await context.route(/^https:\/\/fonts\./, async (route) => { await route.abort() })
    t.teardown(() => context.close())
    return { context, page: await context.newPage() }
  }

  /** From the login page, through the provider's login and consent pages, back to the app. */
  async function signInWithProvider (page: Page, login: string, remember: boolean): Promise<void> {
    await page.goto(`${base}/login`)
    if (remember) await page.check('#oidc-remember')
    await Promise.all([page.waitForURL(`${provider.issuer}/**`), page.click('#oidc')])
    await page.fill('input[name=login]', login)
    await page.fill('input[name=password]', 'any password')
    await page.click('button[type=submit]')
    await page.waitForSelector('button:has-text("Continue")')
    await Promise.all([page.waitForURL(`${base}/**`), page.click('button:has-text("Continue")')])
  }

  /**
   * Rewrites one parameter of the authorization request on its way to the provider, in the app's
   * redirect to it (Playwright does not intercept the hops of a redirect).
   */
  async function tamper (context: BrowserContext, name: string, value: string): Promise<void> {
    await context.route((url) => url.origin === base && url.pathname === '/auth/oidc', async (route) => {
      const response = await route.fetch({ maxRedirects: 0 })
      const location = new URL(response.headers().location)
      location.searchParams.set(name, value)
      await route.fulfill({ response, headers: { ...response.headers(), location: location.href } })
    })
  }

  const powCookies = async (context: BrowserContext): Promise<string[]> =>
    (await context.cookies(base)).map((c) => c.name).filter((n) => n.startsWith('pow_')).sort()

  test('sign in with the provider: on / signed in, remembered, and listed on Your devices', async (t) => {
    const { context, page } = await newContext(t)
    await signInWithProvider(page, 'erin', true)
    t.equal(new URL(page.url()).pathname, '/', 'back on the account page')
    t.equal(await page.textContent('#email'), 'erin@idp.test')
    t.equal(await page.textContent('#name'), 'erin')
    t.same(await powCookies(context), ['pow_persistent_session', 'pow_session'], "fastify-pow's cookies, the transaction cookie gone")
    await page.goto(`${base}/sessions`)
    t.equal(await page.locator('ul.devices li').count(), 1)
    t.match(await page.textContent('ul.devices li'), /This device[\s\S]*Remembered/)
    // Remember-me works as for a password sign-in.
    await context.clearCookies({ name: 'pow_session' })
    await page.goto(`${base}/`)
    t.equal(await page.textContent('#email'), 'erin@idp.test', 'signed back in by remember-me')
  })

  test('the rewrite itself breaks nothing: a harmless parameter changed, the sign-in works', async (t) => {
    const { context, page } = await newContext(t)
    await tamper(context, 'ui_locales', 'en')
    await signInWithProvider(page, 'erin', false)
    t.equal(new URL(page.url()).pathname, '/', page.url())
    t.same(await powCookies(context), ['pow_session'])
  })

  test('a wrong state: back on the login page with an error, signed out', async (t) => {
    const { context, page } = await newContext(t)
    await tamper(context, 'state', 'a-state-this-browser-never-made-0123456789')
    await signInWithProvider(page, 'erin', false)
    t.equal(new URL(page.url()).pathname + new URL(page.url()).search, '/login?error=oidc', page.url())
    t.match(await page.textContent('.error'), /did not work/)
    t.same(await powCookies(context), [])
  })

  test('a wrong nonce: refused', async (t) => {
    const { context, page } = await newContext(t)
    await tamper(context, 'nonce', 'a-nonce-this-browser-never-made-0123456789')
    await signInWithProvider(page, 'erin', false)
    t.equal(new URL(page.url()).search, '?error=oidc')
    t.same(await powCookies(context), [])
  })

  test('a replayed code: refused in the same browser after sign-out, and in another browser', async (t) => {
    const { context, page } = await newContext(t)
    let callback = ''
    page.on('request', (request) => { if (request.url().startsWith(`${base}/auth/oidc/callback?`)) callback = request.url() })
    await signInWithProvider(page, 'frank', false)
    t.equal(new URL(page.url()).pathname, '/')
    t.match(callback, /[?&]code=/)
    await Promise.all([page.waitForURL(`${base}/login?signedOut=1`), page.click('form[action="/logout"] button')])

    await page.goto(callback)
    t.equal(new URL(page.url()).search, '?error=oidc', 'the same browser')
    t.same(await powCookies(context), [])

    const other = await newContext(t)
    await other.page.goto(callback)
    t.equal(new URL(other.page.url()).search, '?error=oidc', 'another browser')
    t.same(await powCookies(other.context), [])
  })
}
