import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { UserStore } from '../examples/users.js'
import { buildApp, type BuildAppOptions } from '../examples/app.js'
import { CookieJar } from './helpers/jar.js'

type Test = Parameters<Parameters<typeof test>[0] & {}>[0]

const SECRET = 'example-test-secret-example-test-secret'
const ALICE = { id: 1, email: 'alice@example.com', name: 'Alice' }
const BOB = { id: 2, email: 'bob@example.com', name: 'Bob' }
const PASSWORDS: Record<string, string> = { 'alice@example.com': 'alice-password', 'bob@example.com': 'bob-password' }
const PERSISTENT_MAX_AGE = 30 * 24 * 60 * 60

async function setup (t: Test, options: BuildAppOptions = {}): Promise<FastifyInstance> {
  const app = await buildApp({ secret: SECRET, ...options })
  t.teardown(() => app.close())
  return app
}

async function login (
  jar: CookieJar, email: string, options: { remember?: boolean, userAgent?: string } = {}
): Promise<LightMyRequestResponse> {
  const payload: Record<string, unknown> = { email, password: PASSWORDS[email] }
  if (options.remember !== undefined) payload.remember = options.remember
  return await jar.request({
    method: 'POST',
    url: '/api/login',
    payload,
    headers: { 'user-agent': options.userAgent ?? 'test-browser' }
  })
}

/** A new browser signed in as `email`; fails the test when the login does. */
async function browser (
  t: Test, app: FastifyInstance, email: string, options: { remember?: boolean, userAgent?: string } = {}
): Promise<CookieJar> {
  const jar = new CookieJar(app)
  const res = await login(jar, email, options)
  t.equal(res.statusCode, 200, `${email} signs in`)
  return jar
}

async function me (jar: CookieJar): Promise<LightMyRequestResponse> {
  return await jar.request({ method: 'GET', url: '/api/me' })
}

async function fingerprintOf (jar: CookieJar): Promise<string> {
  const res = await me(jar)
  if (res.statusCode !== 200) throw new Error(`GET /api/me answered ${res.statusCode}`)
  return res.json().session.fingerprint
}

function setCookie (res: LightMyRequestResponse, name: string) {
  return (res.cookies as Array<{ name: string, value: string, maxAge?: number, expires?: Date }>)
    .find((c) => c.name === name)
}

test('login without remember: 200 with the user, a session cookie, no remember-me cookie', async (t) => {
  const app = await setup(t)
  const jar = new CookieJar(app)
  const res = await login(jar, 'alice@example.com')
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), { user: ALICE }, 'exactly { id, email, name }: no password hash')
  t.notMatch(res.body, /hash|salt|password/i)
  const session = setCookie(res, 'pow_session')
  t.ok(session, 'sets pow_session')
  t.ok(session !== undefined && session.value.length > 0)
  t.equal(setCookie(res, 'pow_persistent_session'), undefined, 'no remember-me cookie')
  t.equal(jar.get('pow_persistent_session'), undefined)
  t.ok(jar.get('pow_session'))
})

test('login with remember: true sets pow_persistent_session with Max-Age', async (t) => {
  const app = await setup(t)
  const jar = new CookieJar(app)
  const res = await login(jar, 'bob@example.com', { remember: true })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), { user: BOB })
  const persistent = setCookie(res, 'pow_persistent_session')
  t.ok(persistent, 'sets pow_persistent_session')
  t.equal(persistent?.maxAge, PERSISTENT_MAX_AGE, 'Max-Age is the remember-me lifetime (30 days)')
  t.ok(jar.get('pow_persistent_session'))
  t.ok(jar.get('pow_session'))
})

test('login with remember: false sets no remember-me cookie', async (t) => {
  const app = await setup(t)
  const jar = new CookieJar(app)
  const res = await login(jar, 'bob@example.com', { remember: false })
  t.equal(res.statusCode, 200)
  t.equal(setCookie(res, 'pow_persistent_session'), undefined)
  t.ok(setCookie(res, 'pow_session'))
})

test('remember is ignored when the persistentSession option is off', async (t) => {
  const app = await setup(t, { persistentSession: false })
  const jar = new CookieJar(app)
  const res = await login(jar, 'alice@example.com', { remember: true })
  t.equal(res.statusCode, 200)
  t.equal(setCookie(res, 'pow_persistent_session'), undefined)
  t.equal((await me(jar)).statusCode, 200)
})

test('the email is matched case-insensitively', async (t) => {
  const app = await setup(t)
  const res = await app.inject({
    method: 'POST', url: '/api/login', payload: { email: 'ALICE@Example.com', password: 'alice-password' }
  })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), { user: ALICE })
})

test('401 with the same body for an unknown email and a wrong password', async (t) => {
  const app = await setup(t)
  const unknown = await app.inject({
    method: 'POST', url: '/api/login', payload: { email: 'carol@example.com', password: 'alice-password' }
  })
  const wrong = await app.inject({
    method: 'POST', url: '/api/login', payload: { email: 'alice@example.com', password: 'bob-password' }
  })
  const empty = await app.inject({
    method: 'POST', url: '/api/login', payload: { email: 'alice@example.com', password: '' }
  })
  for (const res of [unknown, wrong, empty]) {
    t.equal(res.statusCode, 401)
    t.strictSame(res.json(), { error: 'Invalid email or password' })
    t.equal(res.cookies.length, 0, 'no cookie on a failed login')
  }
  t.equal(unknown.body, wrong.body, 'byte-identical bodies')
  t.equal(unknown.headers['content-length'], wrong.headers['content-length'])
})

test('an unknown email costs a password hash like a wrong password does', async (t) => {
  const app = await setup(t)
  const users = (app as unknown as { users: UserStore }).users
  for (const email of ['nobody@example.com', 'alice@example.com']) {
    const before = users.passwordChecks
    const res = await app.inject({ method: 'POST', url: '/api/login', payload: { email, password: 'guess' } })
    t.equal(res.statusCode, 401)
    t.equal(users.passwordChecks - before, 1, `${email}: one scrypt verification`)
  }
})

test('400 for invalid login bodies', async (t) => {
  const app = await setup(t)
  const cases: Array<[string, Record<string, unknown> | unknown[] | string, string?]> = [
    ['empty object', {}],
    ['missing password', { email: 'alice@example.com' }],
    ['missing email', { password: 'alice-password' }],
    ['email is a number', { email: 1, password: 'alice-password' }],
    ['password is a number', { email: 'alice@example.com', password: 12345 }],
    ['password is null', { email: 'alice@example.com', password: null }],
    ['remember is a string', { email: 'alice@example.com', password: 'alice-password', remember: 'true' }],
    ['remember is a number', { email: 'alice@example.com', password: 'alice-password', remember: 1 }],
    ['extra property', { email: 'alice@example.com', password: 'alice-password', admin: true }],
    ['email longer than 254', { email: 'a'.repeat(243) + '@example.com', password: 'alice-password' }],
    ['password longer than 1024', { email: 'alice@example.com', password: 'p'.repeat(1025) }],
    ['an array', [{ email: 'alice@example.com', password: 'alice-password' }]],
    ['malformed JSON', '{"email": "alice@example.com", "password": ', 'application/json'],
    ['a text/plain body', 'email=alice@example.com&password=alice-password', 'text/plain']
  ]
  t.equal(('a'.repeat(243) + '@example.com').length, 255)
  for (const [name, payload, contentType] of cases) {
    const res = await app.inject({
      method: 'POST',
      url: '/api/login',
      payload: payload as string,
      headers: contentType === undefined ? {} : { 'content-type': contentType }
    })
    t.equal(res.statusCode, 400, name)
    t.equal(setCookie(res, 'pow_session'), undefined, `${name}: no session cookie`)
  }
  const noBody = await app.inject({ method: 'POST', url: '/api/login' })
  t.equal(noBody.statusCode, 400, 'no body at all')

  // The limits are inclusive: the longest valid values still reach the password check.
  const longest = await app.inject({
    method: 'POST',
    url: '/api/login',
    payload: { email: 'a'.repeat(242) + '@example.com', password: 'p'.repeat(1024), remember: false }
  })
  t.equal(longest.statusCode, 401)
})

test('GET /api/me: 401 when anonymous, 200 with the user and session when signed in', async (t) => {
  const app = await setup(t)
  const jar = new CookieJar(app)
  const anonymous = await me(jar)
  t.equal(anonymous.statusCode, 401)
  t.strictSame(anonymous.json(), { error: 'Not signed in' })

  const before = Date.now()
  await login(jar, 'alice@example.com')
  const res = await me(jar)
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.strictSame(body.user, ALICE)
  t.strictSame(Object.keys(body.session).sort(), ['fingerprint', 'insertedAt'])
  t.match(body.session.fingerprint, /^[A-Za-z0-9_-]{22}$/)
  t.ok(body.session.insertedAt >= before && body.session.insertedAt <= Date.now(), 'insertedAt is the login time')

  const forged = new CookieJar(app)
  forged.set('pow_session', (jar.get('pow_session') as string).slice(0, -2) + 'AA')
  t.equal((await me(forged)).statusCode, 401, 'a tampered cookie is anonymous')
})

test('PATCH /api/me renames the user in every session', async (t) => {
  const app = await setup(t)
  const first = await browser(t, app, 'alice@example.com')
  const second = await browser(t, app, 'alice@example.com')
  const bob = await browser(t, app, 'bob@example.com')

  const res = await first.request({ method: 'PATCH', url: '/api/me', payload: { name: 'Alice Liddell' } })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), { user: { ...ALICE, name: 'Alice Liddell' } })

  t.equal((await me(first)).json().user.name, 'Alice Liddell')
  t.equal((await me(second)).json().user.name, 'Alice Liddell', 'the other browser sees the new name')
  t.equal((await me(bob)).json().user.name, 'Bob', 'another user is untouched')

  const third = new CookieJar(app)
  const again = await login(third, 'alice@example.com')
  t.equal(again.json().user.name, 'Alice Liddell', 'the user record was updated too')

  for (const [name, payload] of [
    ['empty name', { name: '' }],
    ['name longer than 100', { name: 'n'.repeat(101) }],
    ['name is a number', { name: 42 }],
    ['extra property', { name: 'Eve', email: 'eve@example.com' }],
    ['missing name', {}]
  ] as const) {
    const bad = await first.request({ method: 'PATCH', url: '/api/me', payload })
    t.equal(bad.statusCode, 400, name)
  }
  t.equal((await me(second)).json().user.name, 'Alice Liddell', 'rejected bodies change nothing')

  const anonymous = await app.inject({ method: 'PATCH', url: '/api/me', payload: { name: 'Mallory' } })
  t.equal(anonymous.statusCode, 401)
  t.strictSame(anonymous.json(), { error: 'Not signed in' })
})

test('GET /api/sessions lists the browsers of the user, exactly one current', async (t) => {
  const app = await setup(t)
  const laptop = await browser(t, app, 'alice@example.com', { userAgent: 'Laptop/1.0' })
  const phone = await browser(t, app, 'alice@example.com', { userAgent: 'Phone/2.0', remember: true })
  await browser(t, app, 'bob@example.com', { userAgent: 'Bob/3.0' })
  const laptopFp = await fingerprintOf(laptop)
  const phoneFp = await fingerprintOf(phone)
  t.not(laptopFp, phoneFp)

  const res = await laptop.request({ method: 'GET', url: '/api/sessions' })
  t.equal(res.statusCode, 200)
  const { sessions } = res.json() as { sessions: Array<Record<string, unknown>> }
  t.equal(sessions.length, 2, 'bob\'s session is not listed')
  t.equal(sessions.filter((s) => s.current === true).length, 1, 'exactly one current')
  const byFp = new Map(sessions.map((s) => [s.fingerprint, s]))
  t.match(byFp.get(laptopFp), { current: true, userAgent: 'Laptop/1.0', ip: '127.0.0.1' })
  t.match(byFp.get(phoneFp), { current: false, userAgent: 'Phone/2.0', ip: '127.0.0.1' })
  for (const s of sessions) {
    t.strictSame(Object.keys(s).sort(), ['current', 'fingerprint', 'insertedAt', 'ip', 'userAgent'])
    t.type(s.insertedAt, 'number')
  }

  const fromPhone = (await phone.request({ method: 'GET', url: '/api/sessions' })).json().sessions as Array<Record<string, unknown>>
  t.equal(fromPhone.find((s) => s.current === true)?.fingerprint, phoneFp, 'current is the asking browser')

  const anonymous = await app.inject({ method: 'GET', url: '/api/sessions' })
  t.equal(anonymous.statusCode, 401)
  t.strictSame(anonymous.json(), { error: 'Not signed in' })
})

test('DELETE /api/sessions/:fingerprint signs the other browser out', async (t) => {
  const app = await setup(t)
  const laptop = await browser(t, app, 'alice@example.com')
  const phone = await browser(t, app, 'alice@example.com', { remember: true })
  const phoneFp = await fingerprintOf(phone)

  const res = await laptop.request({ method: 'DELETE', url: `/api/sessions/${phoneFp}` })
  t.equal(res.statusCode, 204)
  t.equal(res.body, '')

  const phoneMe = await me(phone)
  t.equal(phoneMe.statusCode, 401, 'the phone is signed out, its remember-me token too')
  t.equal((await me(laptop)).statusCode, 200, 'the laptop stays signed in')
  const list = (await laptop.request({ method: 'GET', url: '/api/sessions' })).json().sessions
  t.equal(list.length, 1)

  const again = await laptop.request({ method: 'DELETE', url: `/api/sessions/${phoneFp}` })
  t.equal(again.statusCode, 404, 'a second delete finds nothing')
  t.strictSame(again.json(), { error: 'Session not found' })
})

test('DELETE /api/sessions/:fingerprint of another user\'s session is a 404', async (t) => {
  const app = await setup(t)
  const alice = await browser(t, app, 'alice@example.com')
  const bob = await browser(t, app, 'bob@example.com', { remember: true })
  const bobFp = await fingerprintOf(bob)

  const res = await alice.request({ method: 'DELETE', url: `/api/sessions/${bobFp}` })
  t.equal(res.statusCode, 404)
  t.strictSame(res.json(), { error: 'Session not found' })
  const bobMe = await me(bob)
  t.equal(bobMe.statusCode, 200, 'bob is still signed in')
  t.equal(bobMe.json().session.fingerprint, bobFp)

  const unknown = await alice.request({ method: 'DELETE', url: '/api/sessions/no-such-fingerprint' })
  t.equal(unknown.statusCode, 404)

  const anonymous = await app.inject({ method: 'DELETE', url: `/api/sessions/${bobFp}` })
  t.equal(anonymous.statusCode, 401)
  t.equal((await me(bob)).statusCode, 200)
})

test('DELETE /api/sessions ends every other session of the user', async (t) => {
  const app = await setup(t)
  const laptop = await browser(t, app, 'alice@example.com')
  const phone = await browser(t, app, 'alice@example.com')
  const tablet = await browser(t, app, 'alice@example.com', { remember: true })
  const bob = await browser(t, app, 'bob@example.com')
  const laptopFp = await fingerprintOf(laptop)

  const res = await laptop.request({ method: 'DELETE', url: '/api/sessions' })
  t.equal(res.statusCode, 204)
  t.equal((await me(phone)).statusCode, 401)
  t.equal((await me(tablet)).statusCode, 401, 'the remember-me token was revoked too')
  const laptopMe = await me(laptop)
  t.equal(laptopMe.statusCode, 200)
  t.equal(laptopMe.json().session.fingerprint, laptopFp)
  t.equal((await me(bob)).statusCode, 200, 'other users are untouched')
  const list = (await laptop.request({ method: 'GET', url: '/api/sessions' })).json().sessions
  t.strictSame(list.map((s: { fingerprint: string }) => s.fingerprint), [laptopFp])

  t.equal((await app.inject({ method: 'DELETE', url: '/api/sessions' })).statusCode, 401)
})

test('logout: 204, both cookies cleared, the old cookies no longer work', async (t) => {
  const app = await setup(t)
  const jar = await browser(t, app, 'alice@example.com', { remember: true })
  t.ok(jar.get('pow_persistent_session'))
  const copy = jar.clone()

  const res = await jar.request({ method: 'POST', url: '/api/logout' })
  t.equal(res.statusCode, 204)
  for (const name of ['pow_session', 'pow_persistent_session']) {
    const cleared = setCookie(res, name)
    t.ok(cleared, `${name} is cleared`)
    t.equal(cleared?.value, '')
    t.ok(cleared?.maxAge === 0 || (cleared?.expires !== undefined && cleared.expires.getTime() <= Date.now()), `${name} expires`)
    t.equal(jar.get(name), undefined)
  }
  t.equal((await me(jar)).statusCode, 401)
  t.equal((await me(copy)).statusCode, 401, 'replayed cookies are dead server-side')

  const anonymous = await app.inject({ method: 'POST', url: '/api/logout' })
  t.equal(anonymous.statusCode, 204, 'logout works when anonymous')
})

test('a remembered browser without its session cookie is signed back in', async (t) => {
  const app = await setup(t)
  const jar = await browser(t, app, 'alice@example.com', { remember: true, userAgent: 'Remembered/1.0' })
  const fingerprint = await fingerprintOf(jar)
  const oldSession = jar.get('pow_session')
  const oldToken = jar.get('pow_persistent_session')
  t.ok(oldToken)

  jar.delete('pow_session')
  const res = await me(jar)
  t.equal(res.statusCode, 200)
  t.strictSame(res.json().user, ALICE)
  t.equal(res.json().session.fingerprint, fingerprint, 'same browser, same fingerprint')
  const newSession = setCookie(res, 'pow_session')
  const newToken = setCookie(res, 'pow_persistent_session')
  t.ok(newSession, 'a new session cookie')
  t.ok(newToken, 'a new remember-me cookie')
  t.not(newSession?.value, oldSession)
  t.not(newToken?.value, oldToken, 'the token is single-use: replaced')
  t.equal(newToken?.maxAge, PERSISTENT_MAX_AGE)

  t.equal((await me(jar)).statusCode, 200, 'the new cookies work')
  const sessions = (await jar.request({ method: 'GET', url: '/api/sessions' })).json().sessions
  t.equal(sessions.length, 1, 'still one browser')
  t.match(sessions[0], { current: true, userAgent: 'Remembered/1.0' }, 'metadata carried over')

  const forgetful = await browser(t, app, 'bob@example.com')
  forgetful.delete('pow_session')
  t.equal((await me(forgetful)).statusCode, 401, 'without remember-me, dropping the session cookie signs out')
})

test('an invalid duration option fails start-up naming the option', async (t) => {
  await t.rejects(buildApp({ secret: SECRET, session: { ttl: Number('abc') } }), /session\.ttl/)
  await t.rejects(buildApp({ secret: SECRET, session: { ttl: 1000, renewAfter: 5000 } }), /session\.renewAfter/)
  await t.rejects(buildApp({ secret: 'too-short' }), /secret/)
})
