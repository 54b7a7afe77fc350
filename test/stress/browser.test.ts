import { mkdir } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import { type Browser, type BrowserContext, type Page } from 'playwright-core'
import t0, { test } from 'tap'
import { buildApp } from '../../examples/app.js'
import { fakeClock } from '../helpers/clock.js'
import { launchChromium } from '../helpers/chromium.js'

const ARTIFACTS = path.resolve('artifacts')
const MINUTE = 60_000
// The plugin's default idle timeout, which the example keeps.
const SESSION_TTL = 30 * MINUTE
const SAFARI_IOS = 'Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1'

const launched = await launchChromium('browser tests')
if (launched !== null) {
  const browser: Browser = launched
  let base = ''

  // A fresh example server for each test, on a real socket for the browser.
  t0.beforeEach(async (t) => {
    const app = await buildApp({ secret: 'browser-test-secret-0123456789-abcdefghij', loginLimits: { perIp: 1000, perAccount: 1000 } })
    base = await app.listen({ port: 0, host: '127.0.0.1' })
    t.teardown(() => app.close())
  })

  async function newPage (viewport = { width: 1000, height: 720 }, userAgent?: string): Promise<{ context: BrowserContext, page: Page }> {
    const context = await browser.newContext({ viewport, userAgent })
    const page = await context.newPage()
    return { context, page }
  }

  async function signIn (page: Page, email: string, password: string, remember: boolean): Promise<void> {
    await page.goto(`${base}/login`)
    await page.fill('#email', email)
    await page.fill('#password', password)
    if (remember) await page.check('#remember')
    await Promise.all([page.waitForURL(`${base}/`), page.click('button[type=submit].primary')])
  }

  async function cookieNames (context: BrowserContext): Promise<string[]> {
    return (await context.cookies()).map((c) => c.name).filter((n) => n.startsWith('pow_')).sort()
  }

  test('sign in without remember-me: dropping the session cookie signs the browser out', async (t) => {
    const { context, page } = await newPage()
    t.teardown(() => context.close())
    await signIn(page, 'alice@example.com', 'alice-password', false)
    t.equal(await page.textContent('#name'), 'Alice')
    t.same(await cookieNames(context), ['pow_session'])
    await context.clearCookies({ name: 'pow_session' })
    await page.reload()
    t.equal(new URL(page.url()).pathname, '/login', 'back on the login page')
  })

  test('sign in with remember-me: dropping the session cookie and reloading brings the user back', async (t) => {
    const { context, page } = await newPage()
    t.teardown(() => context.close())
    await signIn(page, 'bob@example.com', 'bob-password', true)
    t.same(await cookieNames(context), ['pow_persistent_session', 'pow_session'])
    const token = (await context.cookies()).find((c) => c.name === 'pow_persistent_session')?.value
    await context.clearCookies({ name: 'pow_session' })
    await page.reload()
    t.equal(new URL(page.url()).pathname, '/', 'still on the account page')
    t.equal(await page.textContent('#name'), 'Bob')
    const cookies = await context.cookies()
    t.ok(cookies.some((c) => c.name === 'pow_session'), 'a new session cookie')
    t.not(cookies.find((c) => c.name === 'pow_persistent_session')?.value, token, 'and a new remember-me token')
  })

  test('a failed sign-in says so', async (t) => {
    const { context, page } = await newPage()
    t.teardown(() => context.close())
    await page.goto(`${base}/login`)
    await page.fill('#email', 'nobody@example.com')
    await page.fill('#password', 'whatever')
    await Promise.all([page.waitForURL(/\/login\?error=1$/), page.click('button[type=submit].primary')])
    t.equal((await page.textContent('[role=alert]'))?.trim(), 'Invalid email or password.')
  })

  test('revoking a second browser from the devices page sends it to the login page', async (t) => {
    await mkdir(ARTIFACTS, { recursive: true })
    const first = await newPage()
    const second = await newPage(undefined, 'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0')
    const phone = await newPage({ width: 390, height: 844 }, SAFARI_IOS)
    t.teardown(async () => { await first.context.close(); await second.context.close(); await phone.context.close() })
    await signIn(first.page, 'alice@example.com', 'alice-password', true)
    await signIn(second.page, 'alice@example.com', 'alice-password', true)
    await signIn(phone.page, 'alice@example.com', 'alice-password', false)

    await first.page.goto(`${base}/sessions`)
    t.equal(await first.page.locator('ul.devices li').count(), 3)
    t.equal(await first.page.locator('li[data-current=true] .badge:not(.remembered)').textContent(), 'This device')
    t.match(await first.page.locator('li[data-current=true] .device-name').textContent(), /^Headless Chrome \d+ on Linux/)
    t.equal(await first.page.locator('.device-name', { hasText: 'Firefox 128 on Windows' }).count(), 1)
    t.equal(await first.page.locator('.device-name', { hasText: 'Safari 18 on iOS' }).count(), 1)
    t.equal(await first.page.locator('li[data-remembered=true]').count(), 2, 'the two browsers that chose remember-me are marked')
    await first.page.screenshot({ path: path.join(ARTIFACTS, 'devices.png'), fullPage: true })

    await phone.page.goto(`${base}/sessions`)
    const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
    t.ok(overflow <= 0, `no horizontal scrolling on a phone-sized screen (${overflow}px)`)
    await phone.page.screenshot({ path: path.join(ARTIFACTS, 'devices-phone.png'), fullPage: true })

    const secondFingerprint = await second.page.evaluate(async () => {
      const html = await (await fetch('/sessions')).text()
      return /<li data-fingerprint="([^"]+)" data-current="true"/.exec(html)?.[1]
    })
    t.ok(secondFingerprint)
    await Promise.all([
      first.page.waitForURL(`${base}/sessions`),
      first.page.click(`li[data-fingerprint="${secondFingerprint as string}"] button`)
    ])
    t.equal(await first.page.locator('ul.devices li').count(), 2, 'two devices left')

    await second.page.goto(`${base}/`)
    t.equal(new URL(second.page.url()).pathname, '/login', 'the revoked browser lands on the login page')
    await second.context.clearCookies({ name: 'pow_session' })
    await second.page.goto(`${base}/`)
    t.equal(new URL(second.page.url()).pathname, '/login', 'and its remember-me cookie does not bring it back')

    await Promise.all([first.page.waitForURL(`${base}/sessions`), first.page.click('text=Sign out all other devices')])
    t.equal(await first.page.locator('ul.devices li').count(), 1)
    await phone.page.reload()
    t.equal(new URL(phone.page.url()).pathname, '/login')
  })

  test('a remembered phone whose session idled out stays on the devices page until it is signed out', async (t) => {
    await mkdir(ARTIFACTS, { recursive: true })
    const laptop = await newPage()
    const phone = await newPage({ width: 390, height: 844 }, SAFARI_IOS)
    t.teardown(async () => { await laptop.context.close(); await phone.context.close() })
    // Only the server's Date is faked (it runs in this process); Chromium keeps its own clock,
    // so its cookies do not expire: the phone still holds both of its cookies afterwards.
    const clock = fakeClock(t, Date.now())
    await signIn(laptop.page, 'alice@example.com', 'alice-password', false)
    await signIn(phone.page, 'alice@example.com', 'alice-password', true)

    // The laptop is used (its session renews); the phone is put away past the idle timeout.
    clock.tick(SESSION_TTL / 2 + MINUTE)
    await laptop.page.goto(`${base}/`)
    clock.tick(SESSION_TTL / 2 + MINUTE)
    const phoneCookies = await phone.context.cookies()
    const sessionOnly = phoneCookies.filter((c) => c.name === 'pow_session').map((c) => `${c.name}=${c.value}`).join('; ')
    const probe = await fetch(`${base}/api/me`, { headers: { cookie: sessionOnly } })
    t.equal(probe.status, 401, 'the phone\'s session idled out (its remember-me cookie was not shown)')

    await laptop.page.goto(`${base}/sessions`)
    t.equal(await laptop.page.locator('ul.devices li').count(), 2, 'the phone is still listed')
    const item = laptop.page.locator('li[data-remembered=true]')
    t.equal(await item.count(), 1)
    t.match(await item.locator('.device-name').textContent(), /^Safari 18 on iOS Remembered$/)
    t.match(await item.textContent(), /Stays signed in with “Remember me”/)
    t.ok(await item.locator('button', { hasText: 'Sign out' }).isVisible(), 'with its Sign out button')
    t.ok(await laptop.page.locator('button', { hasText: 'Sign out all other devices' }).isVisible())
    await laptop.page.screenshot({ path: path.join(ARTIFACTS, 'devices-remembered.png'), fullPage: true })

    await Promise.all([laptop.page.waitForURL(`${base}/sessions`), item.locator('button').click()])
    t.equal(await laptop.page.locator('ul.devices li').count(), 1, 'signed out')
    t.match(await laptop.page.textContent('main'), /No other device is signed in/)
    await phone.page.goto(`${base}/`)
    t.equal(new URL(phone.page.url()).pathname, '/login', 'the phone\'s remember-me cookie no longer signs it in')
    t.notOk((await phone.context.cookies()).some((c) => c.name === 'pow_persistent_session'), 'and was cleared')
  })

  test('sign out', async (t) => {
    const { context, page } = await newPage()
    t.teardown(() => context.close())
    await signIn(page, 'alice@example.com', 'alice-password', true)
    await Promise.all([page.waitForURL(/\/login\?signedOut=1$/), page.click('header button')])
    t.match(await page.textContent('[role=status]'), /You are signed out/)
    t.same(await cookieNames(context), [], 'both cookies are gone')
    await page.goto(`${base}/`)
    t.equal(new URL(page.url()).pathname, '/login')
  })

  test('a form on a sibling site that posts to the app is refused, and signs nobody out', async (t) => {
    const { context, page } = await newPage()
    t.teardown(() => context.close())
    await signIn(page, 'alice@example.com', 'alice-password', false)
    // Another port of the same host: same-site, so the SameSite=Lax session cookie goes along.
    const attacker = createServer((_req, res) => {
      res.setHeader('content-type', 'text/html')
      res.end(`<form method="post" action="${base}/sessions/delete-others"><input name="_csrf" value="guess"></form><script>document.forms[0].submit()</script>`)
    })
    await new Promise<void>((resolve) => attacker.listen(0, '127.0.0.1', resolve))
    t.teardown(() => { attacker.close() })
    const response = page.waitForResponse(`${base}/sessions/delete-others`)
    await page.goto(`http://127.0.0.1:${(attacker.address() as AddressInfo).port}/`)
    t.equal((await response).status(), 403)
    t.match(await page.textContent('.error'), /sent from another site/, 'refused for its origin (Sec-Fetch-Site), before the token check')
    await page.goto(`${base}/`)
    t.equal(await page.textContent('#name'), 'Alice', 'still signed in')
  })
}
