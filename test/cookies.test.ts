import fastifyCookie, { Signer } from '@fastify/cookie'
import assert from 'node:assert/strict'
import { parseCookie } from 'cookie'
import fc from 'fast-check'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { test } from 'tap'
import pow, { MemoryStore } from '../lib/index.js'
import { cookieValue } from '../lib/cookies.js'
import { hashSecret, newSecret, randomFingerprint, secretDevice } from '../lib/crypto.js'
import { buildApp, me, recordingStore, SECRET, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'

const OLD_SECRET = 'an-older-secret-that-is-also-long-enough'
const MINUTE = 60_000

/** A well-formed secret of a device that does not exist. */
const straySecret = (): string => newSecret('AAAA', randomFingerprint()).secret

test('malformed and forged cookies are anonymous: never a 5xx, never a store write', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  const [sid, sig] = (jar.get('pow_session') as string).split('.')
  const foreign = new Signer('some-attacker-secret-of-enough-length-000')
  const values = [
    '', 'x', '.', 'a.b', sid, `${sid}.`, `.${sig}`, `${sid}.${sig.slice(0, -1)}`, `${sid}.${sig}x`,
    `${sid.slice(0, -1)}${sid.endsWith('A') ? 'B' : 'A'}.${sig}`, `${sid}.${sig.replace(/./, (c) => (c === 'A' ? 'B' : 'A'))}`,
    foreign.sign(sid), foreign.sign(straySecret()), new Signer(SECRET).sign('not-a-token'),
    new Signer(SECRET).sign('a'.repeat(67) + '=='), new Signer(SECRET).sign(sid.slice(0, -1)), new Signer(SECRET).sign(sid + 'a'), 'é'.repeat(300), '%E0%A4%A', '"quoted"', 'x'.repeat(4000),
    encodeURIComponent(`${sid}.${sig}`).replace(/\./g, '%2E') + '%', `${sid}.${sig}`.toLowerCase()
  ]
  store.calls.length = 0
  for (const value of values) {
    for (const name of ['pow_session', 'pow_persistent_session']) {
      const response = await app.inject({ url: '/me', headers: { cookie: `${name}=${value}` } })
      t.equal(response.statusCode, 401, `${name}=${value.slice(0, 40)} is anonymous`)
    }
  }
  const many = Array.from({ length: 200 }, (_, i) => `c${i}=${i}`).join('; ')
  t.equal((await app.inject({ url: '/me', headers: { cookie: `${many}; pow_session=garbage` } })).statusCode, 401)
  t.same(store.writes(), [], 'no store write')
  t.same(store.calls, [], 'an unverifiable cookie is not even looked up')
})

test('verification is cached by the exact cookie value: a cached cookie does not make its forgeries pass', async (t) => {
  const app = await buildApp(t)
  const jar = await signIn(app, 1)
  const valid = jar.get('pow_session') as string
  t.equal((await me(jar)).status, 200, 'verified once (and cached)')
  t.equal((await me(jar)).status, 200, 'and again from the cache')
  const [sid, sig] = valid.split('.')
  const flip = (c: string): string => (c === 'A' ? 'B' : 'A')
  for (const forged of [`${sid}.${sig.slice(0, -1)}${flip(sig.slice(-1))}`, `${sid.slice(0, -1)}${flip(sid.slice(-1))}.${sig}`, `${sid}.${sig}x`, `${valid}.`]) {
    const response = await app.inject({ url: '/me', headers: { cookie: `pow_session=${forged}` } })
    t.equal(response.statusCode, 401, `${forged.slice(-8)} is anonymous`)
  }
  const signer = new Signer(SECRET)
  const { mint, ...verified } = app.pow.verify(valid) ?? { mint: undefined }
  t.same(verified, { secret: sid, ...secretDevice(sid), hash: hashSecret(sid), renew: false }, 'the secret, its device, its store hash, signed with the current secret')
  const minted = mint?.()
  t.not(minted?.secret, sid, 'and a minter of new secrets')
  t.same(secretDevice(minted?.secret as string), secretDevice(sid), 'for the same device')
  let others = 0
  for (let i = 0; i < 5000; i++) if (app.pow.verify(signer.sign(straySecret())) !== null) others++
  t.equal(others, 5000, '5000 other valid cookies verify')
  const { mint: _again, ...again } = app.pow.verify(valid) ?? {}
  t.same(again, verified, 'pushed out of the cache by 5000 others, it verifies again')
  t.equal(app.pow.verify(`${sid}.${sig.slice(0, -1)}${flip(sig.slice(-1))}`), null)
})

test('a validly signed id that points at nothing is anonymous after one read', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const signer = new Signer(SECRET)
  const response = await app.inject({ url: '/me', headers: { cookie: `pow_session=${signer.sign(straySecret())}` } })
  t.equal(response.statusCode, 401)
  t.same(store.calls, ['read'])
  t.equal(response.headers['set-cookie'], undefined, 'the cookie is left alone')
})

test('bad cookies are logged at debug level', async (t) => {
  const lines: Array<{ level: number, msg: string }> = []
  const stream = new Writable({ write (chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb() } })
  const app = Fastify({ logger: { level: 'debug', stream } })
  t.teardown(() => app.close())
  await app.register(pow, { secret: SECRET })
  app.get('/', async () => 'ok')
  await app.inject({ url: '/', headers: { cookie: 'pow_session=forged.value' } })
  await app.inject({ url: '/', headers: { cookie: `pow_session=${new Signer(SECRET).sign(straySecret())}` } })
  await app.inject({ url: '/', headers: { cookie: `pow_persistent_session=${new Signer(SECRET).sign(straySecret())}` } })
  const messages = lines.filter((l) => l.level === 20).map((l) => l.msg)
  t.ok(messages.includes('fastify-pow: a cookie failed verification'))
  t.ok(messages.includes('fastify-pow: the session cookie names no working session'))
  t.ok(messages.includes('fastify-pow: the remember-me cookie names no working token'))
  t.notOk(lines.some((l) => l.level >= 40), 'nothing louder than debug')
})

test('secret rotation: an older secret verifies and the cookies are re-issued with the first, same secrets', async (t) => {
  const clock = fakeClock(t)
  // One store behind all three apps, as after a deploy that rotates the secret.
  const store = recordingStore()
  const before = await buildApp(t, { secret: OLD_SECRET, store })
  const after = await buildApp(t, { secret: [SECRET, OLD_SECRET], store })
  const onlyNew = await buildApp(t, { secret: SECRET, store })
  const browser = await signIn(before, 1, { persistent: true })
  const oldCookies = browser.header()
  const sid = (browser.get('pow_session') as string).split('.')[0]
  const tokenSecret = (browser.get('pow_persistent_session') as string).split('.')[0]
  clock.tick(MINUTE)

  store.calls.length = 0
  const response = await after.inject({ url: '/me', headers: { cookie: oldCookies } })
  t.equal(response.statusCode, 200, 'accepted by the rotated app')
  t.same(store.calls, ['read'], 're-signing writes nothing')
  const reissued = response.cookies.find((c) => c.name === 'pow_session')
  t.ok(reissued, 'the session cookie is re-issued')
  const signer = new Signer(SECRET)
  t.same(signer.unsign(reissued?.value as string), { valid: true, renew: false, value: sid }, 'the same session id, signed with the first secret')
  const token = response.cookies.find((c) => c.name === 'pow_persistent_session') as { value: string, maxAge?: number } | undefined
  t.same(signer.unsign(token?.value as string), { valid: true, renew: false, value: tokenSecret }, 'the remember-me cookie too, same token')
  t.equal(token?.maxAge, 30 * 86400 - 60, 'with the time the token has left')

  t.equal((await onlyNew.inject({ url: '/me', headers: { cookie: oldCookies } })).statusCode, 401, 'a retired secret verifies nothing')
  const fresh = new CookieJar(after)
  fresh.store(response)
  const again = await after.inject({ url: '/me', headers: { cookie: fresh.header() } })
  t.same(again.cookies, [], 'cookies signed with the first secret are not re-issued')
  t.equal((await onlyNew.inject({ url: '/me', headers: { cookie: fresh.header() } })).statusCode, 200, 'the re-issued cookie needs only the new secret')
})

test('secret rotation: a parallel request with a retired session id gets no cookie that could overwrite the new one', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const before = await buildApp(t, { secret: OLD_SECRET, store })
  const after = await buildApp(t, { secret: [SECRET, OLD_SECRET], store })
  const browser = await signIn(before, 1)
  const oldCookies = browser.header()
  clock.tick(16 * MINUTE)
  // Two requests of one page, both with the cookie signed by the old secret: the first renews.
  const renewal = await after.inject({ url: '/me', headers: { cookie: oldCookies } })
  const parallel = await after.inject({ url: '/me', headers: { cookie: oldCookies } })
  t.equal(renewal.statusCode, 200)
  t.equal(parallel.statusCode, 200, 'the parallel request is signed in (the grace)')
  const renewed = renewal.cookies.find((c) => c.name === 'pow_session')?.value
  t.ok(renewed, 'the first carries the new id')
  t.same(parallel.cookies.map((c) => c.name), [], 'the parallel one sets no cookie: it would put the retired id back')

  // The first answer arrives, the browser's next request claims the new id, then the slow parallel answer arrives.
  const jar = new CookieJar(after)
  jar.store(renewal)
  t.equal((await me(jar)).status, 200, 'the new id is claimed')
  jar.store(parallel)
  clock.tick(11_000)
  t.equal((await me(jar)).status, 200, 'past the grace the browser is still signed in: it holds the new id')
})

test('secret rotation: a parallel remember-me request gets no cookie that could put the used token back', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const before = await buildApp(t, { secret: OLD_SECRET, store })
  const after = await buildApp(t, { secret: [SECRET, OLD_SECRET], store })
  const browser = await signIn(before, 1, { persistent: true })
  browser.delete('pow_session')
  const oldCookies = browser.header()
  const rotation = await after.inject({ url: '/me', headers: { cookie: oldCookies } })
  const parallel = await after.inject({ url: '/me', headers: { cookie: oldCookies } })
  t.equal(rotation.statusCode, 200)
  t.equal(parallel.statusCode, 200, 'the parallel request is signed in for this request only')
  t.same(parallel.cookies.map((c) => c.name), [], 'with no new cookies')

  // The answers arrive in either order; when the parallel one comes last, the browser must still be remembered.
  const jar = new CookieJar(after)
  jar.store(rotation)
  jar.store(parallel)
  t.equal((await me(jar)).status, 200, 'signed in: the rotation is claimed')
  clock.tick(31 * MINUTE)
  t.equal((await me(jar)).status, 200, 'after the session idled out, the token it holds signs it in again')
})

test('works when the app registered @fastify/cookie itself, with its own secret', async (t) => {
  const app = await buildApp(t, {}, async (instance) => {
    await instance.register(fastifyCookie, { secret: 'the-apps-own-cookie-secret-000000000000' })
  })
  const jar = await signIn(app, 1)
  t.equal((await me(jar)).status, 200)
  t.equal(app.unsignCookie(jar.get('pow_session') as string).valid, false, "the app's signer does not sign our cookies")
})

test("works when the app's @fastify/cookie parses in a later hook or not at all", async (t) => {
  for (const hook of ['preHandler', false] as const) {
    const app = await buildApp(t, {}, async (instance) => {
      await instance.register(fastifyCookie, { hook })
    })
    const jar = await signIn(app, 1)
    t.equal((await me(jar)).status, 200, `hook: ${String(hook)}`)
  }
})

test('the hook reads a cookie from the header exactly as the cookie package parses it', async (t) => {
  // The parts a Cookie header is made of, the awkward ones often: names that share a prefix, blanks
  // around names and values, pairs without `=`, empty names and values, percent escapes good and bad.
  const part = fc.constantFrom('a', 'ab', 'b', 'x', ' ', '\t', ';', '=', '%', '%41', '%E0%A4%A', '"', 'v')
  const header = fc.array(part, { maxLength: 24 }).map((parts) => parts.join(''))
  fc.assert(fc.property(header, (text) => {
    const parsed = parseCookie(text)
    for (const name of ['a', 'ab', 'b']) {
      assert.equal(cookieValue(text, name), parsed[name], `${name} in ${JSON.stringify(text)}`)
    }
  }), { numRuns: 20_000 })
  // Cases the generator might not make, by hand.
  for (const [text, value] of [
    ['a=1; a=2', '1'], [' a = 1 ;b=2', '1'], ['ab=1; a=2', '2'], ['x; a=1', '1'], ['a', undefined], ['b=1;a', undefined],
    ['a=%41', 'A'], ['a=%E0%A4%A', '%E0%A4%A'], ['a=', ''], ['=1; a=3', '3'], ['', undefined]
  ] as const) {
    t.equal(cookieValue(text, 'a'), value, JSON.stringify(text))
    t.equal(cookieValue(text, 'a'), parseCookie(text).a, `as parseCookie: ${JSON.stringify(text)}`)
  }
})
