import fastifyCookie, { Signer } from '@fastify/cookie'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { test } from 'tap'
import pow from '../lib/index.js'
import { hashToken, randomToken } from '../lib/crypto.js'
import { buildApp, me, recordingStore, SECRET, signIn } from './helpers/app.js'
import { CookieJar } from './helpers/jar.js'

const OLD_SECRET = 'an-older-secret-that-is-also-long-enough'

test('malformed and forged cookies are anonymous: never a 5xx, never a store write', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  const [sid, sig] = (jar.get('pow_session') as string).split('.')
  const foreign = new Signer('some-attacker-secret-of-enough-length-000')
  const values = [
    '', 'x', '.', 'a.b', sid, `${sid}.`, `.${sig}`, `${sid}.${sig.slice(0, -1)}`, `${sid}.${sig}x`,
    `${sid.slice(0, -1)}${sid.endsWith('A') ? 'B' : 'A'}.${sig}`, `${sid}.${sig.replace(/./, (c) => (c === 'A' ? 'B' : 'A'))}`,
    foreign.sign(sid), foreign.sign(randomToken('AAAA')), new Signer(SECRET).sign('not-a-token'),
    new Signer(SECRET).sign('a'.repeat(47) + '=='), 'é'.repeat(300), '%E0%A4%A', '"quoted"', 'x'.repeat(4000),
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
  const verified = app.pow.verify(valid)
  t.same(verified, { token: sid, hash: hashToken(sid), renew: false }, 'the token, its store hash, signed with the current secret')
  let others = 0
  for (let i = 0; i < 5000; i++) if (app.pow.verify(signer.sign(randomToken('AAAA'))) !== null) others++
  t.equal(others, 5000, '5000 other valid cookies verify')
  t.same(app.pow.verify(valid), verified, 'pushed out of the cache by 5000 others, it verifies again')
  t.equal(app.pow.verify(`${sid}.${sig.slice(0, -1)}${flip(sig.slice(-1))}`), null)
})

test('a validly signed id that points at nothing is anonymous after one read', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const signer = new Signer(SECRET)
  const response = await app.inject({ url: '/me', headers: { cookie: `pow_session=${signer.sign(randomToken('AAAA'))}` } })
  t.equal(response.statusCode, 401)
  t.same(store.calls, ['getSession'])
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
  await app.inject({ url: '/', headers: { cookie: `pow_session=${new Signer(SECRET).sign(randomToken('AAAA'))}` } })
  const messages = lines.filter((l) => l.level === 20).map((l) => l.msg)
  t.ok(messages.includes('fastify-pow: session cookie failed verification'))
  t.ok(messages.includes('fastify-pow: session cookie points at no session'))
  t.notOk(lines.some((l) => l.level >= 40), 'nothing louder than debug')
})

test('secret rotation: an older secret verifies and the cookie is re-issued with the first', async (t) => {
  // One store behind all three apps, as after a deploy that rotates the secret.
  const store = recordingStore()
  const before = await buildApp(t, { secret: OLD_SECRET, store })
  const after = await buildApp(t, { secret: [SECRET, OLD_SECRET], store })
  const onlyNew = await buildApp(t, { secret: SECRET, store })
  const browser = await signIn(before, 1, { persistent: true })
  const oldCookies = browser.header()

  const response = await after.inject({ url: '/me', headers: { cookie: oldCookies } })
  t.equal(response.statusCode, 200, 'accepted by the rotated app')
  const reissued = response.cookies.find((c) => c.name === 'pow_session')
  t.ok(reissued, 'the session cookie is re-issued')
  const signer = new Signer(SECRET)
  t.equal(signer.unsign(reissued?.value as string).renew, false, 'signed with the first secret')
  t.equal(signer.unsign(reissued?.value as string).valid, true)
  const token = response.cookies.find((c) => c.name === 'pow_persistent_session')
  t.equal(signer.unsign(token?.value as string).valid, true, 'the remember-me cookie too')

  t.equal((await onlyNew.inject({ url: '/me', headers: { cookie: oldCookies } })).statusCode, 401, 'a retired secret verifies nothing')
  const fresh = new CookieJar(after)
  fresh.store(response)
  t.equal((await onlyNew.inject({ url: '/me', headers: { cookie: fresh.header() } })).statusCode, 200, 'the re-issued cookie needs only the new secret')
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
