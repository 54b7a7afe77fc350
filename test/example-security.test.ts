/**
 * The example app as an attacker meets it: failed sign-in limits shared by both logins, a JSON
 * API that a cross-site page cannot post to, CSRF tokens bound to the device, and the headers of
 * production.
 */
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import { test, type Test } from 'tap'
import { buildApp, type BuildAppOptions } from '../examples/app.js'
import { ipKey, LoginLimiter } from '../examples/login-limits.js'
import { normalizeEmail, UserStore } from '../examples/users.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'

const SECRET = 'example-security-secret-0123456789-abcdefghij'
const JSON_HEADERS = { 'content-type': 'application/json' }
const FORM_HEADERS = { 'content-type': 'application/x-www-form-urlencoded' }
const MINUTE = 60_000

async function setup (t: Test, options: BuildAppOptions = {}): Promise<FastifyInstance> {
  const app = await buildApp({ secret: SECRET, ...options })
  t.teardown(() => app.close())
  return app
}

const usersOf = (app: FastifyInstance): UserStore => (app as unknown as { users: UserStore }).users

async function apiLogin (app: FastifyInstance, email: string, password: string, ip = '127.0.0.1', jar?: CookieJar): Promise<LightMyRequestResponse> {
  const options: InjectOptions = { method: 'POST', url: '/api/login', remoteAddress: ip, headers: JSON_HEADERS, payload: { email, password } }
  return jar === undefined ? await app.inject(options) : await jar.request(options)
}

function csrfOf (html: string): string {
  const match = /name="_csrf" value="([^"]+)"/.exec(html)
  if (match === null) throw new Error('no CSRF field on the page')
  return match[1]
}

async function formLogin (app: FastifyInstance, email: string, password: string, ip = '127.0.0.1', jar = new CookieJar(app)): Promise<LightMyRequestResponse> {
  const page = await jar.request({ url: '/login', remoteAddress: ip })
  return await jar.request({
    method: 'POST',
    url: '/login',
    remoteAddress: ip,
    headers: FORM_HEADERS,
    payload: new URLSearchParams({ email, password, _csrf: csrfOf(page.body) }).toString()
  })
}

/** A browser signed in as alice through the JSON login. */
async function alice (app: FastifyInstance, remember = false): Promise<CookieJar> {
  const jar = new CookieJar(app)
  const res = await jar.request({ method: 'POST', url: '/api/login', headers: JSON_HEADERS, payload: { email: 'alice@example.com', password: 'alice-password', remember } })
  if (res.statusCode !== 200) throw new Error(`alice did not sign in: ${res.statusCode}`)
  return jar
}

// --- 1. Failed sign-ins -----------------------------------------------------------------------

test('the JSON login is limited: after the failed sign-ins an account allows, 429 with Retry-After, and the right password does not get in either', async (t) => {
  const app = await setup(t)
  const statuses: number[] = []
  for (let i = 0; i < 30; i++) statuses.push((await apiLogin(app, 'alice@example.com', `guess-${i}`)).statusCode)
  t.same(statuses, [...Array(10).fill(401), ...Array(20).fill(429)], 'ten failures (the default per account), then 429')
  t.equal(usersOf(app).passwordChecks, 10, 'a limited attempt checks no password')
  const right = await apiLogin(app, 'alice@example.com', 'alice-password')
  t.equal(right.statusCode, 429, 'the right password through the JSON login is limited too')
  t.equal(right.headers['set-cookie'], undefined)
  const seconds = Number(right.headers['retry-after'])
  t.ok(Number.isInteger(seconds) && seconds > 14 * 60 && seconds <= 15 * 60, `Retry-After in seconds, up to the 15-minute window (${String(right.headers['retry-after'])})`)
  t.same(right.json(), { error: 'Too many failed sign-ins. Try again later.' })
  const form = await formLogin(app, 'alice@example.com', 'alice-password')
  t.equal(form.statusCode, 429, 'and through the form: both logins share the limit')
  t.ok(form.headers['retry-after'], 'the form answer has Retry-After')
  t.notMatch(String(form.headers['set-cookie'] ?? ''), /pow_session/, 'and sets no session cookie')
  t.equal((await apiLogin(app, 'bob@example.com', 'bob-password')).statusCode, 200, 'another account signs in from the same IP')
})

test('failures through the form count against the JSON login, and the other way round', async (t) => {
  const app = await setup(t, { loginLimits: { perIp: 100, perAccount: 4 } })
  const statuses: number[] = []
  for (let i = 0; i < 3; i++) statuses.push((await formLogin(app, 'alice@example.com', 'wrong')).statusCode)
  statuses.push((await apiLogin(app, 'alice@example.com', 'wrong')).statusCode)
  statuses.push((await apiLogin(app, 'alice@example.com', 'alice-password')).statusCode)
  statuses.push((await formLogin(app, 'alice@example.com', 'alice-password')).statusCode)
  t.same(statuses, [303, 303, 303, 401, 429, 429])
})

test('a limited answer is the same for a known and an unknown email', async (t) => {
  const app = await setup(t, { loginLimits: { perIp: 100, perAccount: 3 } })
  const answers: Array<{ status: number, body: string, retryAfter: unknown }> = []
  for (const email of ['alice@example.com', 'nobody@example.com']) {
    for (let i = 0; i < 3; i++) await apiLogin(app, email, 'wrong')
    const res = await apiLogin(app, email, 'wrong')
    answers.push({ status: res.statusCode, body: res.body, retryAfter: res.headers['retry-after'] })
  }
  t.equal(answers[0].status, 429)
  t.same(answers[1], answers[0])
})

test('the account limit holds when the guesses come from many IPs; the email is normalised', async (t) => {
  const app = await setup(t, { loginLimits: { perIp: 100, perAccount: 5 } })
  const emails = ['alice@example.com', 'ALICE@example.com', ' alice@Example.COM ', 'alice@example.com', 'Alice@example.com']
  for (const [i, email] of emails.entries()) t.equal((await apiLogin(app, email, 'wrong', `10.0.0.${i + 1}`)).statusCode, 401)
  t.equal((await apiLogin(app, 'alice@example.com', 'alice-password', '10.0.1.1')).statusCode, 429, 'a sixth IP is limited for this account')
  t.equal((await formLogin(app, 'alice@example.com', 'alice-password', '10.0.1.2')).statusCode, 429)
  t.equal((await apiLogin(app, 'bob@example.com', 'bob-password', '10.0.0.1')).statusCode, 200, 'the IPs themselves are not limited')
})

test('the IP limit holds when the guesses spread over accounts', async (t) => {
  const app = await setup(t, { loginLimits: { perIp: 5, perAccount: 100 } })
  for (let i = 0; i < 5; i++) t.equal((await apiLogin(app, `user${i}@example.com`, 'wrong', '10.0.0.9')).statusCode, 401)
  t.equal((await apiLogin(app, 'bob@example.com', 'bob-password', '10.0.0.9')).statusCode, 429, 'this IP is limited, whatever the account')
  t.equal((await apiLogin(app, 'bob@example.com', 'bob-password', '10.0.0.10')).statusCode, 200, 'another IP is not')
})

test('successful sign-ins and malformed bodies do not count: an office behind one IP still signs in', async (t) => {
  const app = await setup(t, { loginLimits: { perIp: 3, perAccount: 3 } })
  for (let i = 0; i < 20; i++) t.equal((await apiLogin(app, i % 2 === 0 ? 'alice@example.com' : 'bob@example.com', i % 2 === 0 ? 'alice-password' : 'bob-password')).statusCode, 200)
  for (let i = 0; i < 20; i++) {
    const res = await app.inject({ method: 'POST', url: '/api/login', headers: JSON_HEADERS, payload: { email: 'alice@example.com' } })
    t.equal(res.statusCode, 400)
  }
  for (let i = 0; i < 10; i++) t.equal((await formLogin(app, 'alice@example.com', 'alice-password')).statusCode, 303)
  t.equal((await apiLogin(app, 'alice@example.com', 'wrong')).statusCode, 401)
  t.equal((await apiLogin(app, 'alice@example.com', 'wrong')).statusCode, 401)
  t.equal((await apiLogin(app, 'alice@example.com', 'alice-password')).statusCode, 200, 'two failures of three, then a success')
  t.equal((await apiLogin(app, 'alice@example.com', 'wrong')).statusCode, 401, 'the success did not count: this is the third failure')
  t.equal((await apiLogin(app, 'alice@example.com', 'alice-password')).statusCode, 429)
})

test('parallel guesses cannot all pass before the first one fails', async (t) => {
  const app = await setup(t, { loginLimits: { perIp: 100, perAccount: 10 } })
  const answers = await Promise.all(Array.from({ length: 40 }, async (_, i) => (await apiLogin(app, 'alice@example.com', `guess-${i}`, `10.1.0.${i}`)).statusCode))
  t.equal(answers.filter((s) => s === 401).length, 10, 'exactly ten reach the password check')
  t.equal(answers.filter((s) => s === 429).length, 30)
  t.equal(usersOf(app).passwordChecks, 10)
})

test('the window ends: Retry-After counts down, and then sign-in works again', async (t) => {
  const clock = fakeClock(t)
  const app = await setup(t, { loginLimits: { perIp: 100, perAccount: 2, windowMs: 10 * MINUTE } })
  await apiLogin(app, 'alice@example.com', 'wrong')
  clock.tick(MINUTE)
  await apiLogin(app, 'alice@example.com', 'wrong')
  t.equal((await apiLogin(app, 'alice@example.com', 'alice-password')).headers['retry-after'], '540', 'from the first failure: 9 minutes left')
  clock.tick(8 * MINUTE + 30_000)
  t.equal((await apiLogin(app, 'alice@example.com', 'alice-password')).headers['retry-after'], '30')
  clock.tick(30_000)
  t.equal((await apiLogin(app, 'alice@example.com', 'alice-password')).statusCode, 200)
})

test('LoginLimiter: bad limits are refused by name; the counters stay within maxKeys', async (t) => {
  t.throws(() => new LoginLimiter({ perIp: 0 }), /login limit perIp must be a positive integer/)
  t.throws(() => new LoginLimiter({ windowMs: 1.5 }), /windowMs/)
  t.throws(() => new LoginLimiter({ perAccount: Number.NaN }), /perAccount/)
  const limiter = new LoginLimiter({ perIp: 1000, perAccount: 1, maxKeys: 50 })
  t.notOk('retryAfter' in limiter.begin('10.0.0.1', 'victim@example.com'))
  t.ok('retryAfter' in limiter.begin('10.0.0.1', 'victim@example.com'), 'the account is limited')
  for (let i = 0; i < 49; i++) limiter.begin('10.0.0.1', `filler${i}@example.com`)
  t.ok('retryAfter' in limiter.begin('10.0.0.1', 'victim@example.com'), 'still limited with the table full')
  limiter.begin('10.0.0.1', 'one-more@example.com')
  t.notOk('retryAfter' in limiter.begin('10.0.0.1', 'victim@example.com'), 'a full table lets its oldest window go, so memory is bounded')
})

test('a success takes back only its own attempt, also when its window rolled over meanwhile', async (t) => {
  const clock = fakeClock(t)
  const limiter = new LoginLimiter({ perIp: 1000, perAccount: 3, windowMs: 10 * MINUTE })
  const attempt = (): ReturnType<LoginLimiter['begin']> => limiter.begin('10.0.0.1', 'victim@example.com')
  attempt()
  clock.tick(9 * MINUTE)
  const slow = attempt()
  clock.tick(2 * MINUTE)
  attempt()
  attempt()
  if ('retryAfter' in slow) throw new Error('the slow attempt was limited')
  slow.succeeded()
  attempt()
  t.ok('retryAfter' in attempt(), 'the new window holds its three failures: the old attempt did not take one of them back')
})

test('IPv6 addresses are counted by their /64: a subscriber cannot rotate addresses for fresh limits', async (t) => {
  const app = await setup(t, { loginLimits: { perIp: 2, perAccount: 100 } })
  const statuses: number[] = []
  for (const ip of ['2001:db8:1:2::1', '2001:db8:1:2::2', '2001:db8:1:2:ffff::3', '2001:0db8:0001:0002:0:0:0:4']) {
    statuses.push((await apiLogin(app, `${ip}@example.com`, 'wrong', ip)).statusCode)
  }
  t.same(statuses, [401, 401, 429, 429])
  t.equal((await apiLogin(app, 'bob@example.com', 'bob-password', '2001:db8:1:3::1')).statusCode, 200, 'another /64 is not limited')
  t.equal(ipKey('2001:db8::1'), '2001:db8:0:0::/64')
  t.equal(ipKey('::1'), '0:0:0:0::/64')
  t.equal(ipKey('::ffff:10.1.2.3'), '10.1.2.3', 'an IPv4-mapped address is its IPv4 address')
  t.equal(ipKey('10.1.2.3'), '10.1.2.3')
})

test('behind a proxy (trustProxy), the limits count the client, not the proxy', async (t) => {
  const app = await setup(t, { trustProxy: '127.0.0.1', loginLimits: { perIp: 2, perAccount: 100 } })
  const via = async (client: string, email: string, password: string): Promise<number> => (await app.inject({
    method: 'POST', url: '/api/login', headers: { ...JSON_HEADERS, 'x-forwarded-for': client }, payload: { email, password }
  })).statusCode
  t.same([await via('203.0.113.1', 'a@example.com', 'x'), await via('203.0.113.1', 'b@example.com', 'x'), await via('203.0.113.1', 'c@example.com', 'x')], [401, 401, 429])
  t.equal(await via('203.0.113.2', 'bob@example.com', 'bob-password'), 200, 'another client behind the same proxy')
})

test('emails are keyed with ASCII case folding only: a Kelvin sign is not a k', async (t) => {
  t.equal(normalizeEmail('  ALICE@Example.COM '), 'alice@example.com')
  t.equal(normalizeEmail('\u212Aate@example.com'), '\u212Aate@example.com')
  const users = await UserStore.create()
  const squat = users.signInWithIdentity('https://idp.example', 'mallory', { email: '\u212Alice@example.com', emailVerified: true, name: 'Mallory' })
  t.not(typeof squat, 'string')
  t.equal((squat as { email: string }).email, '\u212Alice@example.com', 'a separate account, not klice@example.com')
  t.equal(users.signInWithIdentity('https://idp.example', 'klice', { email: 'klice@example.com', emailVerified: true }) === 'email-taken', false,
    'the real klice@example.com can still sign up')
})

// --- 2. Cross-site posts to the JSON API ------------------------------------------------------

test('the JSON API refuses state-changing requests that are not JSON (415), before they do anything', async (t) => {
  const app = await setup(t)
  const crossSite = await app.inject({ method: 'POST', url: '/api/logout', headers: { 'content-type': 'text/plain' }, payload: '' })
  t.equal(crossSite.statusCode, 415, 'a cross-site text/plain logout')
  t.equal(crossSite.headers['set-cookie'], undefined, 'clears no cookie')

  const jar = await alice(app, true)
  for (const [method, url, headers, payload] of [
    ['POST', '/api/logout', { 'content-type': 'text/plain' }, ''],
    ['POST', '/api/logout', {}, undefined],
    ['POST', '/api/logout', FORM_HEADERS, 'a=1'],
    ['POST', '/api/logout', { 'content-type': 'multipart/form-data; boundary=x' }, '--x--'],
    ['PATCH', '/api/me', { 'content-type': 'text/plain' }, '{"name":"Mallory"}'],
    ['POST', '/api/login', { 'content-type': 'text/plain' }, '{"email":"bob@example.com","password":"bob-password"}']
  ] as const) {
    const res = await jar.request({ method, url, headers, payload })
    t.equal(res.statusCode, 415, `${method} ${url} ${JSON.stringify(headers)}`)
    t.same(res.json(), { error: 'Send a JSON body with content-type: application/json' })
    t.equal(res.headers['set-cookie'], undefined)
  }
  const me = await jar.request('/api/me')
  t.equal(me.statusCode, 200, 'still signed in')
  t.equal(me.json().user.name, 'Alice', 'not renamed')

  t.equal((await jar.request({ method: 'POST', url: '/api/logout', headers: { 'content-type': 'application/json; charset=utf-8' } })).statusCode, 204, 'JSON with no body signs out')
  t.equal((await jar.request('/api/me')).statusCode, 401)
  const again = await alice(app)
  t.equal((await again.request({ method: 'POST', url: '/api/logout', headers: JSON_HEADERS, payload: '{}' })).statusCode, 204, 'and so does {}')
})

// --- 3. CSRF tokens bound to the device ------------------------------------------------------

/** Posts a page form with this token, the jar's cookies, and optionally cookies placed first. */
async function postForm (jar: CookieJar, url: string, token: string, first = ''): Promise<LightMyRequestResponse> {
  const cookie = [first, jar.header()].filter((c) => c !== '').join('; ')
  return await jar.app.inject({ method: 'POST', url, headers: { ...FORM_HEADERS, cookie }, payload: `_csrf=${encodeURIComponent(token)}` })
}

test('a CSRF secret planted by another subdomain, with its own valid token, does not pass', async (t) => {
  const app = await setup(t)
  // The attacker's own secret and a token for it, fetched from the site.
  const attacker = new CookieJar(app)
  const attackerToken = csrfOf((await attacker.request('/login')).body)
  const attackerSecret = attacker.get('_csrf') as string
  t.ok(attackerSecret)
  // The victim, with a second device to lose.
  const victim = await alice(app)
  await alice(app)
  csrfOf((await victim.request('/sessions')).body)
  // `_csrf=<attacker's>; Domain=example.test; Path=/sessions` comes first in the victim's header.
  const res = await postForm(victim, '/sessions/delete-others', attackerToken, `_csrf=${attackerSecret}`)
  t.equal(res.statusCode, 403)
  t.equal(((await victim.request('/api/sessions')).json().sessions as unknown[]).length, 2, 'no device was signed out')
  // The attacker signed in as itself gets a token for its own device: no use on the victim's.
  const mallory = new CookieJar(app)
  await mallory.request({ method: 'POST', url: '/api/login', headers: JSON_HEADERS, payload: { email: 'bob@example.com', password: 'bob-password' } })
  const malloryToken = csrfOf((await mallory.request('/sessions')).body)
  t.equal((await postForm(victim, '/sessions/delete-others', malloryToken, `_csrf=${mallory.get('_csrf') as string}`)).statusCode, 403)
  // The victim's own token works.
  const own = csrfOf((await victim.request('/sessions')).body)
  t.equal((await postForm(victim, '/sessions/delete-others', own)).statusCode, 303)
  t.equal(((await victim.request('/api/sessions')).json().sessions as unknown[]).length, 1)
})

test('a CSRF token made before sign-in does not work after it, with the same secret', async (t) => {
  const app = await setup(t)
  const jar = new CookieJar(app)
  const before = csrfOf((await jar.request('/login')).body)
  const secret = jar.get('_csrf')
  // Signed in through the JSON login, which leaves the CSRF cookie alone.
  await jar.request({ method: 'POST', url: '/api/login', headers: JSON_HEADERS, payload: { email: 'alice@example.com', password: 'alice-password' } })
  await alice(app)
  t.equal(jar.get('_csrf'), secret, 'the same secret')
  t.equal((await postForm(jar, '/sessions/delete-others', before)).statusCode, 403)
  t.equal((await postForm(jar, '/logout', before)).statusCode, 403)
  t.equal((await jar.request('/api/me')).statusCode, 200, 'still signed in')
})

test('form sign-in and sign-out replace the CSRF secret', async (t) => {
  const app = await setup(t)
  const jar = new CookieJar(app)
  const login = await formLogin(app, 'alice@example.com', 'alice-password', '127.0.0.1', jar)
  t.equal(login.statusCode, 303)
  t.match(login.cookies.find((c) => c.name === '_csrf'), { value: '' }, 'the sign-in clears the old secret')
  t.equal(jar.get('_csrf'), undefined)
  const home = await jar.request('/')
  const secret = jar.get('_csrf')
  t.ok(secret, 'the next page makes a new one')
  const logout = await postForm(jar, '/logout', csrfOf(home.body))
  t.equal(logout.statusCode, 303)
  t.match(logout.cookies.find((c) => c.name === '_csrf'), { value: '' }, 'the sign-out clears it too')
})

test('a form post that the browser says came from another origin is refused (Sec-Fetch-Site), login included', async (t) => {
  const app = await setup(t)
  // The attacker's own secret and token, planted in the victim's browser by a sibling subdomain.
  const attacker = new CookieJar(app)
  const token = csrfOf((await attacker.request('/login')).body)
  const planted = `_csrf=${attacker.get('_csrf') as string}`
  const post = async (site: string | undefined): Promise<LightMyRequestResponse> => await app.inject({
    method: 'POST',
    url: '/login',
    headers: { ...FORM_HEADERS, cookie: planted, ...(site === undefined ? {} : { 'sec-fetch-site': site }) },
    payload: new URLSearchParams({ email: 'bob@example.com', password: 'bob-password', _csrf: token }).toString()
  })
  for (const site of ['same-site', 'cross-site', 'none']) {
    const res = await post(site)
    t.equal(res.statusCode, 403, site)
    t.match(res.body, /sent from another site/)
    t.equal(res.cookies.some((c) => c.name === 'pow_session'), false, `${site}: nobody signed in`)
  }
  t.equal((await post('same-origin')).statusCode, 303, 'the same origin signs in')
  t.equal((await post(undefined)).statusCode, 303, 'a client that sends no fetch metadata relies on the token')
})

// --- 4. Production headers --------------------------------------------------------------------

test('answers with user data or a CSRF token send Cache-Control: no-store; the stylesheet may be cached', async (t) => {
  const app = await setup(t)
  const jar = await alice(app)
  const login = await app.inject({ method: 'POST', url: '/api/login', headers: JSON_HEADERS, payload: { email: 'bob@example.com', password: 'bob-password' } })
  t.equal(login.headers['cache-control'], 'no-store', 'POST /api/login')
  for (const url of ['/api/me', '/api/sessions', '/', '/sessions']) {
    const res = await jar.request(url)
    t.equal(res.statusCode, 200, url)
    t.equal(res.headers['cache-control'], 'no-store', url)
  }
  t.equal((await app.inject('/login')).headers['cache-control'], 'no-store', '/login (a CSRF token)')
  t.equal((await app.inject('/api/me')).headers['cache-control'], 'no-store', 'a 401 too')
  t.equal((await app.inject('/style.css')).headers['cache-control'], 'public, max-age=300')
})

test('in production: __Host- cookies, all Secure, the CSRF cookie included', async (t) => {
  const app = await setup(t, { production: true })
  const page = await app.inject('/login')
  const csrf = page.cookies.find((c) => c.name === '__Host-csrf')
  t.match(csrf, { path: '/', secure: true, httpOnly: true, sameSite: 'Strict' })
  t.equal(csrf?.domain, undefined)
  t.equal(page.cookies.some((c) => c.name === '_csrf'), false)
  const login = await app.inject({ method: 'POST', url: '/api/login', headers: JSON_HEADERS, payload: { email: 'alice@example.com', password: 'alice-password', remember: true } })
  t.same(login.cookies.map((c) => c.name).sort(), ['__Host-pow_persistent_session', '__Host-pow_session'])
  for (const cookie of login.cookies) t.match(cookie, { path: '/', secure: true, httpOnly: true }, cookie.name)
  // The form flow works with the production names.
  const jar = new CookieJar(app)
  const form = await jar.request('/login')
  const signedIn = await jar.request({ method: 'POST', url: '/login', headers: FORM_HEADERS, payload: `email=alice%40example.com&password=alice-password&_csrf=${encodeURIComponent(csrfOf(form.body))}` })
  t.equal(signedIn.statusCode, 303)
  t.equal((await jar.request('/')).statusCode, 200)
  t.match((await jar.request('/')).headers['content-security-policy'], /upgrade-insecure-requests/)
})

test('production is the default under NODE_ENV=production', async (t) => {
  const before = process.env.NODE_ENV
  process.env.NODE_ENV = 'production'
  t.teardown(() => {
    if (before === undefined) delete process.env.NODE_ENV
    else process.env.NODE_ENV = before
  })
  const app = await setup(t)
  const page = await app.inject('/login')
  t.ok(page.cookies.some((c) => c.name === '__Host-csrf' && c.secure === true))
  process.env.NODE_ENV = 'test'
  const dev = await setup(t)
  const devPage = await dev.inject('/login')
  t.match(devPage.cookies.find((c) => c.name === '_csrf'), { secure: undefined }, 'plain http during development')
})
