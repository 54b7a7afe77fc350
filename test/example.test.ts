import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { MemoryStore, PostgresStore } from '../lib/index.js'
import type { UserStore } from '../examples/users.js'
import { buildApp, type BuildAppOptions } from '../examples/app.js'
import { deviceMetadata, USER_AGENT_MAX_LENGTH } from '../examples/user-agent.js'
import { fakeClock } from './helpers/clock.js'
import { createDatabase } from './helpers/postgres.js'
import { CookieJar } from './helpers/jar.js'

type Test = Parameters<Parameters<typeof test>[0] & {}>[0]

const SECRET = 'example-test-secret-example-test-secret'
const ALICE = { id: 1, email: 'alice@example.com', name: 'Alice' }
const BOB = { id: 2, email: 'bob@example.com', name: 'Bob' }
const PASSWORDS: Record<string, string> = { 'alice@example.com': 'alice-password', 'bob@example.com': 'bob-password' }
const PERSISTENT_MAX_AGE = 30 * 24 * 60 * 60
const MINUTE = 60_000
// The plugin's defaults, which the example keeps: an idle session ends after 30 minutes, and a
// request renews a session id older than 15.
const SESSION_TTL = 30 * MINUTE
const RENEW_AFTER = 15 * MINUTE
// A secret is <4-char user bucket><22-char fingerprint><43 random chars>; its cookie adds "." and
// a 43-character HMAC.
const SECRET_LENGTH = 69
const SIGNED_LENGTH = 113
const CHROME_LINUX = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36'
const SAFARI_IOS = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1'

// test/example-postgres.test.ts sets this and imports this file: every test that uses setup()
// then runs the example with DATABASE_URL, on a PostgreSQL database of its own.
const ON_POSTGRES = process.env.POW_EXAMPLE_TEST_STORE === 'postgres'

async function setup (t: Test, options: BuildAppOptions = {}): Promise<FastifyInstance> {
  const databaseUrl = ON_POSTGRES && options.store === undefined ? (await createDatabase(t)).url : undefined
  const app = await buildApp({ secret: SECRET, databaseUrl, ...options })
  t.teardown(() => app.close())
  if (databaseUrl !== undefined && !(app.pow.rawStore instanceof PostgresStore)) throw new Error('the example did not store sessions in PostgreSQL')
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

async function sessionsOf (jar: CookieJar): Promise<Array<Record<string, unknown>>> {
  const res = await jar.request({ method: 'GET', url: '/api/sessions' })
  if (res.statusCode !== 200) throw new Error(`GET /api/sessions answered ${res.statusCode}`)
  return res.json().sessions
}

/** A signed secret as the cookie holds it: `<69-character secret>.<43-character HMAC>`. */
function assertSigned (t: Test, value: string | undefined, name: string): void {
  t.equal(value?.length, SIGNED_LENGTH, `${name}: a signed cookie is ${SIGNED_LENGTH} characters`)
  t.equal(value?.indexOf('.'), SECRET_LENGTH, `${name}: the secret is ${SECRET_LENGTH} characters`)
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
  fakeClock(t)
  const app = await setup(t)
  const jar = new CookieJar(app)
  const res = await login(jar, 'bob@example.com', { remember: true })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), { user: BOB })
  const persistent = setCookie(res, 'pow_persistent_session')
  t.ok(persistent, 'sets pow_persistent_session')
  t.equal(persistent?.maxAge, PERSISTENT_MAX_AGE, 'Max-Age is exactly the remember-me lifetime (30 days)')
  t.equal(setCookie(res, 'pow_session')?.maxAge, undefined, 'the session cookie is a browser-session cookie')
  assertSigned(t, persistent?.value, 'pow_persistent_session')
  assertSigned(t, setCookie(res, 'pow_session')?.value, 'pow_session')
  t.not(persistent?.value.slice(0, SECRET_LENGTH), setCookie(res, 'pow_session')?.value.slice(0, SECRET_LENGTH))
  t.equal(persistent?.value.slice(4, 26), setCookie(res, 'pow_session')?.value.slice(4, 26), 'both name the same device')
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
    ['an empty JSON body', '', 'application/json']
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
  // Not JSON at all: 415 before any parsing (see "the JSON API refuses bodies that are not JSON").
  const noBody = await app.inject({ method: 'POST', url: '/api/login' })
  t.equal(noBody.statusCode, 415, 'no body at all')

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
  t.strictSame(Object.keys(body.session).sort(), ['fingerprint', 'insertedAt', 'signedInAt'])
  t.match(body.session.fingerprint, /^[A-Za-z0-9_-]{22}$/)
  t.ok(body.session.insertedAt >= before && body.session.insertedAt <= Date.now(), 'insertedAt is the login time')
  t.equal(body.session.signedInAt, body.session.insertedAt, 'so is signedInAt')

  const forged = new CookieJar(app)
  // A changed character inside the signature: the last one holds 2 padding bits, whose change
  // would decode to the same signature (and 'AA' at the end can be what was there).
  const cookie = jar.get('pow_session') as string
  const at = cookie.length - 5
  forged.set('pow_session', cookie.slice(0, at) + (cookie[at] === 'A' ? 'B' : 'A') + cookie.slice(at + 1))
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
  t.match(byFp.get(laptopFp), { current: true, remembered: false, userAgent: 'Laptop/1.0', browser: 'Unknown browser', os: 'unknown system', ip: '127.0.0.1' })
  t.match(byFp.get(phoneFp), { current: false, remembered: true, userAgent: 'Phone/2.0', ip: '127.0.0.1' })
  for (const s of sessions) {
    t.strictSame(Object.keys(s).sort(), ['browser', 'current', 'fingerprint', 'insertedAt', 'ip', 'os', 'remembered', 'signedInAt', 'userAgent'])
    t.type(s.insertedAt, 'number')
    t.equal(s.signedInAt, s.insertedAt, 'not renewed yet: the session id is the sign-in\'s')
  }
  t.ok((byFp.get(laptopFp)?.signedInAt as number) <= (byFp.get(phoneFp)?.signedInAt as number), 'listed in sign-in order')

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

  const res = await jar.request({ method: 'POST', url: '/api/logout', headers: { 'content-type': 'application/json' } })
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

  const anonymous = await app.inject({ method: 'POST', url: '/api/logout', headers: { 'content-type': 'application/json' }, payload: '{}' })
  t.equal(anonymous.statusCode, 204, 'logout works when anonymous')
  t.equal(anonymous.headers['set-cookie'], undefined, 'and clears no cookie it did not get')
})

test('a remembered browser without its session cookie is signed back in', async (t) => {
  const clock = fakeClock(t)
  const app = await setup(t)
  const signedInAt = Date.now()
  const jar = await browser(t, app, 'alice@example.com', { remember: true, userAgent: SAFARI_IOS })
  const fingerprint = await fingerprintOf(jar)
  const oldSession = jar.get('pow_session')
  const oldToken = jar.get('pow_persistent_session')
  t.ok(oldToken)

  clock.tick(2 * 24 * 60 * MINUTE)
  jar.delete('pow_session')
  const res = await me(jar)
  t.equal(res.statusCode, 200)
  t.strictSame(res.json().user, ALICE)
  t.strictSame(res.json().session, { fingerprint, insertedAt: Date.now(), signedInAt },
    'same browser, same fingerprint; a new session id, but the sign-in with a password is still the first one')
  const newSession = setCookie(res, 'pow_session')
  const newToken = setCookie(res, 'pow_persistent_session')
  t.ok(newSession, 'a new session cookie')
  t.ok(newToken, 'a new remember-me cookie')
  t.not(newSession?.value, oldSession)
  t.not(newToken?.value, oldToken, 'the token is single-use: replaced')
  t.equal(newToken?.maxAge, PERSISTENT_MAX_AGE, 'the new token lives 30 days from its use')
  assertSigned(t, newSession?.value, 'pow_session')
  assertSigned(t, newToken?.value, 'pow_persistent_session')

  const next = await me(jar)
  t.equal(next.statusCode, 200, 'the new cookies work')
  t.equal(next.cookies.length, 0, 'and are not set again')
  const sessions = await sessionsOf(jar)
  t.equal(sessions.length, 1, 'still one browser')
  t.match(sessions[0], { current: true, remembered: true, signedInAt, insertedAt: Date.now(), userAgent: SAFARI_IOS, browser: 'Safari 17', os: 'iOS' },
    'metadata carried over')

  const forgetful = await browser(t, app, 'bob@example.com')
  forgetful.delete('pow_session')
  t.equal((await me(forgetful)).statusCode, 401, 'without remember-me, dropping the session cookie signs out')
})

test('an invalid duration option fails start-up naming the option', async (t) => {
  await t.rejects(buildApp({ secret: SECRET, session: { ttl: Number('abc') } }), /session\.ttl/)
  await t.rejects(buildApp({ secret: SECRET, session: { ttl: 1000, renewAfter: 5000 } }), /session\.renewAfter/)
  await t.rejects(buildApp({ secret: 'too-short' }), /secret/)
})

test('a 15 kB User-Agent signs in, and what is stored and listed for it is short', async (t) => {
  const app = await setup(t)
  // A real agent padded to 15 kB: before the example parsed and cut it, the whole header went
  // into the session metadata, and the plugin refused the sign-in (metadata over 4096 bytes: 400).
  const huge = CHROME_LINUX + ' ' + 'x'.repeat(15 * 1024)
  const jar = new CookieJar(app)
  const res = await login(jar, 'alice@example.com', { remember: true, userAgent: huge })
  t.equal(res.statusCode, 200, 'signed in')
  t.strictSame(res.json(), { user: ALICE })

  const [device] = await sessionsOf(jar)
  t.match(device, { current: true, remembered: true, browser: 'Chrome 120', os: 'Linux', ip: '127.0.0.1' }, 'parsed at sign-in')
  const userAgent = device.userAgent as string
  t.equal(userAgent.length, USER_AGENT_MAX_LENGTH, `the user agent is cut to ${USER_AGENT_MAX_LENGTH} characters`)
  t.ok(userAgent.startsWith(CHROME_LINUX) && userAgent.endsWith('…'), 'its start, marked as cut')
  t.ok(JSON.stringify(device).length < 600, 'the whole entry is short')

  const agentOnly = new CookieJar(app)
  t.equal((await login(agentOnly, 'bob@example.com', { userAgent: 'x'.repeat(16 * 1024) })).statusCode, 200, 'junk signs in too')
  t.match((await sessionsOf(agentOnly))[0], { browser: 'Unknown browser', os: 'unknown system', userAgent: 'x'.repeat(USER_AGENT_MAX_LENGTH - 1) + '…' })

  const none = await app.inject({ method: 'POST', url: '/api/login', payload: { email: 'bob@example.com', password: 'bob-password' } })
  t.equal(none.statusCode, 200, 'no User-Agent at all')
})

test('deviceMetadata stays far below maxMetadataBytes whatever the header holds', async (t) => {
  const worst = [
    '\u0001'.repeat(20_000), // each a 6-byte JSON escape
    '\u00ff'.repeat(20_000), // latin-1, as Node decodes headers: 2 bytes of UTF-8 each
    '\ud83d\ude00'.repeat(10_000), // astral characters: 4 bytes per pair
    'Chrome/' + '9'.repeat(20_000)
  ]
  for (const agent of worst) {
    const metadata = deviceMetadata(agent, agent)
    const bytes = Buffer.byteLength(JSON.stringify(metadata))
    t.ok(bytes < 2048, `${JSON.stringify(agent.slice(0, 12))}…: ${bytes} bytes of JSON`)
    t.ok((metadata.userAgent as string).length <= USER_AGENT_MAX_LENGTH)
    t.notMatch(metadata.userAgent as string, /[\ud800-\udbff](?![\udc00-\udfff])/, 'never half a surrogate pair')
  }
  t.strictSame(deviceMetadata(undefined, undefined), { browser: 'Unknown browser', os: 'unknown system', userAgent: null, ip: null })
  t.strictSame(deviceMetadata(SAFARI_IOS, '::1'), { browser: 'Safari 17', os: 'iOS', userAgent: SAFARI_IOS, ip: '::1' }, 'a real agent is kept whole')
})

test('GET /api/me: signedInAt stays through renewals and remember-me sign-ins; insertedAt moves', async (t) => {
  const clock = fakeClock(t)
  const app = await setup(t)
  const signedInAt = Date.now()
  const jar = await browser(t, app, 'alice@example.com', { remember: true })
  const fingerprint = await fingerprintOf(jar)

  clock.tick(RENEW_AFTER + MINUTE)
  t.strictSame((await me(jar)).json().session, { fingerprint, insertedAt: Date.now(), signedInAt }, 'a renewal: a new session id')
  const renewedAt = Date.now()
  clock.tick(MINUTE)
  t.strictSame((await me(jar)).json().session, { fingerprint, insertedAt: renewedAt, signedInAt }, 'no renewal within 15 minutes')

  clock.tick(SESSION_TTL + MINUTE)
  t.strictSame((await me(jar)).json().session, { fingerprint, insertedAt: Date.now(), signedInAt },
    'the session idled out: the remember-me token signed the browser in again, which is no sign-in with a password')

  clock.tick(MINUTE)
  await login(jar, 'alice@example.com', { remember: true })
  const again = (await me(jar)).json().session
  t.not(again.fingerprint, fingerprint, 'a sign-in with the password is a new device')
  t.equal(again.signedInAt, Date.now(), 'and moves signedInAt')
})

test('the remember-me cookie is set only at sign-in, rotation, renewal and a new signing secret', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const app = await setup(t, { store })
  const jar = await browser(t, app, 'alice@example.com', { remember: true })
  const token = jar.get('pow_persistent_session') as string

  clock.tick(MINUTE)
  const plain = await me(jar)
  t.equal(plain.statusCode, 200)
  t.strictSame(plain.cookies, [], 'an ordinary request sets no cookie')

  clock.tick(RENEW_AFTER)
  const renewal = await me(jar)
  t.ok(setCookie(renewal, 'pow_session'), 'a renewal sets a new session id')
  const extended = setCookie(renewal, 'pow_persistent_session')
  t.equal(extended?.value, token, 'and the same remember-me token again')
  t.equal(extended?.maxAge, PERSISTENT_MAX_AGE, 'which now lives 30 days from this renewal')
  t.strictSame((await me(jar)).cookies, [], 'the request after the renewal sets nothing')

  // The operator puts a new secret first. Cookies signed with the old one still verify, and are
  // signed again with the new one: same secrets, the token's expiry unchanged.
  clock.tick(MINUTE)
  const NEW_SECRET = 'a-newer-example-secret-a-newer-example-secret'
  const rotated = await buildApp({ secret: [NEW_SECRET, SECRET], store })
  t.teardown(() => rotated.close())
  const moved = new CookieJar(rotated)
  moved.cookies = jar.clone().cookies
  const before = { session: jar.get('pow_session') as string, token: jar.get('pow_persistent_session') as string }
  const resigned = await me(moved)
  t.equal(resigned.statusCode, 200, 'still signed in')
  const session = setCookie(resigned, 'pow_session')
  const persistent = setCookie(resigned, 'pow_persistent_session')
  t.equal(session?.value.slice(0, SECRET_LENGTH), before.session.slice(0, SECRET_LENGTH), 'the same session id')
  t.not(session?.value, before.session, 're-signed')
  t.equal(persistent?.value.slice(0, SECRET_LENGTH), before.token.slice(0, SECRET_LENGTH), 'the same token')
  t.not(persistent?.value, before.token, 're-signed')
  assertSigned(t, session?.value, 'pow_session')
  assertSigned(t, persistent?.value, 'pow_persistent_session')
  t.equal(persistent?.maxAge, PERSISTENT_MAX_AGE - 60, 'until the token expires: 30 days from the renewal, a minute ago')
  t.strictSame((await me(moved)).cookies, [], 'once signed with the new secret, nothing is set again')
})

/**
 * Alice's laptop stays active; her phone signs in with remember-me and is put away until its
 * session idles out. The phone is still signed in (its next visit is, by its token) so it must
 * stay on the laptop's list of devices. The defect reported as "a remembered browser disappears
 * from Your devices": it was listed only while its session worked.
 */
async function idleRememberedPhone (t: Test) {
  const clock = fakeClock(t)
  const app = await setup(t)
  const laptop = await browser(t, app, 'alice@example.com', { userAgent: CHROME_LINUX })
  const signedInAt = Date.now()
  const phone = await browser(t, app, 'alice@example.com', { remember: true, userAgent: SAFARI_IOS })
  const phoneFp = await fingerprintOf(phone)
  const laptopFp = await fingerprintOf(laptop)

  // The laptop is used (and renewed) halfway; the phone makes no request from here on.
  clock.tick(SESSION_TTL / 2 + MINUTE)
  t.equal((await me(laptop)).statusCode, 200)
  clock.tick(SESSION_TTL / 2 + MINUTE)
  t.equal((await me(laptop)).statusCode, 200, 'the laptop is still signed in')
  // The phone's session id alone signs nobody in now. (This copy shows no token, so it changes
  // nothing: the phone itself is not used.)
  const sessionOnly = phone.clone()
  sessionOnly.delete('pow_persistent_session')
  t.equal((await me(sessionOnly)).statusCode, 401, 'the phone\'s session idled out')
  return { app, clock, laptop, phone, laptopFp, phoneFp, signedInAt }
}

test('GET /api/sessions lists a remembered browser whose session idled out, and it can be signed out', async (t) => {
  const { laptop, phone, laptopFp, phoneFp, signedInAt } = await idleRememberedPhone(t)
  const tokenCopy = phone.clone()

  const sessions = await sessionsOf(laptop)
  t.strictSame(sessions.map((s) => s.fingerprint).sort(), [laptopFp, phoneFp].sort(), 'the remembered phone is still listed')
  t.match(sessions.find((s) => s.fingerprint === phoneFp), {
    current: false, remembered: true, signedInAt, insertedAt: signedInAt, browser: 'Safari 17', os: 'iOS', userAgent: SAFARI_IOS
  })
  t.match(sessions.find((s) => s.fingerprint === laptopFp), { current: true, remembered: false, browser: 'Chrome 120', os: 'Linux' })

  const res = await laptop.request({ method: 'DELETE', url: `/api/sessions/${phoneFp}` })
  t.equal(res.statusCode, 204, 'signing the phone out finds it')
  const phoneMe = await me(phone)
  t.equal(phoneMe.statusCode, 401, 'the phone\'s token no longer signs in')
  t.equal(setCookie(phoneMe, 'pow_persistent_session')?.value, '', 'and its cookie is cleared')
  t.equal((await me(tokenCopy)).statusCode, 401, 'nor does a copy of it')
  t.strictSame((await sessionsOf(laptop)).map((s) => s.fingerprint), [laptopFp])
  t.equal((await laptop.request({ method: 'DELETE', url: `/api/sessions/${phoneFp}` })).statusCode, 404)
})

test('DELETE /api/sessions ends a remembered browser whose session idled out', async (t) => {
  const { laptop, phone, laptopFp } = await idleRememberedPhone(t)
  t.equal((await laptop.request({ method: 'DELETE', url: '/api/sessions' })).statusCode, 204)
  t.equal((await me(phone)).statusCode, 401, 'the phone\'s token no longer signs in')
  t.strictSame((await sessionsOf(laptop)).map((s) => s.fingerprint), [laptopFp])
})

test('a remembered browser whose session idled out comes back as the same device', async (t) => {
  const { laptop, phone, phoneFp, signedInAt } = await idleRememberedPhone(t)
  const back = await me(phone)
  t.equal(back.statusCode, 200, 'its token signs it in')
  t.strictSame(back.json().session, { fingerprint: phoneFp, insertedAt: Date.now(), signedInAt })
  t.match((await sessionsOf(laptop)).find((s) => s.fingerprint === phoneFp), { remembered: true, insertedAt: Date.now(), signedInAt })
})

test('a browser without remember-me leaves the list once its session idled out', async (t) => {
  const clock = fakeClock(t)
  const app = await setup(t)
  const laptop = await browser(t, app, 'alice@example.com')
  const other = await browser(t, app, 'alice@example.com')
  const laptopFp = await fingerprintOf(laptop)
  const otherFp = await fingerprintOf(other)
  clock.tick(SESSION_TTL / 2 + MINUTE)
  t.equal((await sessionsOf(laptop)).length, 2)
  clock.tick(SESSION_TTL / 2 + MINUTE)
  t.strictSame((await sessionsOf(laptop)).map((s) => s.fingerprint), [laptopFp], 'nothing can sign it in any more')
  t.equal((await laptop.request({ method: 'DELETE', url: `/api/sessions/${otherFp}` })).statusCode, 404)
})
