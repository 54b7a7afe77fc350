import assert from 'node:assert/strict'
import { Signer } from '@fastify/cookie'
import { parseCookie } from 'cookie'
import fc from 'fast-check'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import tap, { test, type Test } from 'tap'
import { buildApp as buildExample } from '../examples/app.js'
import { escapeHtml } from '../examples/pages.js'
import type { UserStore } from '../examples/users.js'
import { buildApp, recordingStore, SECRET, signIn } from './helpers/app.js'
import {
  type Browser, buildHeader, buildRequest, type BuiltRequest, cookieHeader, cookiePairs, csrfPasses, expectation, hasPoison, jsonRequired, type HeaderSpec, headerSpec, rightCredentials,
  PERSISTENT, parsedBody, type RequestContext, type RequestSpec, requestSpec, runs, SESSION, setCookie, Tally,
  validLoginForm, validLoginJson, validNameJson, writesOf
} from './helpers/fuzz.js'
import { CookieJar } from './helpers/jar.js'

/*
 * Property and fuzz tests: generated cookie headers, mutated signed cookies and request
 * bodies against every route of the example app and the plugin's helpers (test/helpers/app.ts).
 * Every property checks: no 5xx; an anonymous request (no valid cookie) makes no store write and
 * reads only what a correctly signed cookie names; a valid cookie authenticates whatever garbage
 * comes with it and any change to it that the cookie parser does not undo makes it anonymous; a
 * bad body is a 4xx. FUZZ_SCALE multiplies the input counts: 0.05 in npm test (some 5,000 inputs),
 * 1 in the stress tier (test/stress/fuzz.test.ts runs this file: about 100,000 inputs, 40 s of
 * CPU on an idle machine); FUZZ_SEED replays a run.
 */

type Store = ReturnType<typeof recordingStore>

const unexpected: string[] = []
const onRejection = (reason: unknown): void => { unexpected.push(`unhandledRejection: ${String((reason as Error)?.stack ?? reason)}`) }
const onException = (err: Error): void => { unexpected.push(`uncaughtException: ${String(err?.stack ?? err)}`) }
process.on('unhandledRejection', onRejection)
process.on('uncaughtException', onException)

// At FUZZ_SCALE=1, about 40 s of CPU on an idle machine; beside the other test files on a busy CI
// runner the file may need more than tap's 120 s per file, so it asks for more.
tap.setTimeout(Math.max(300_000, runs(300_000)))

const seed = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED)
const counts: Array<[string, number]> = []
const started = Date.now()

/** Runs a property `numRuns` times and prints how many inputs it tried. */
async function check<T> (
  t: Test, name: string, numRuns: number, arb: fc.Arbitrary<T>, predicate: (input: T) => Promise<void>, tally?: Tally
): Promise<void> {
  const t0 = Date.now()
  let tried = 0
  await fc.assert(fc.asyncProperty(arb, async (input) => { tried++; await predicate(input) }), { numRuns, seed, maxSkipsPerRun: 1000 })
  counts.push([name, numRuns])
  const skipped = tried === numRuns ? '' : `, ${tried - numRuns} more generated and skipped`
  t.comment(`fuzz: ${name}: ${numRuns} inputs${skipped} in ${Date.now() - t0} ms${tally === undefined ? '' : `; ${tally.toString()}`}`)
  t.pass(`${name}: ${numRuns} inputs`)
}

const cookiesOf = (res: LightMyRequestResponse): Array<{ name: string, value: string }> =>
  res.cookies as Array<{ name: string, value: string }>

const describe = (header: string): string => JSON.stringify(header.length > 300 ? header.slice(0, 300) + `...(${header.length})` : header)

/**
 * Sends `header` to `url` and checks the outcome against the oracle: a browser's session cookie
 * authenticates with one store read; else a browser's remember-me cookie signs it in (and the
 * browser's cookies move on to the new ones); else anonymous: `anonymousStatus`, no store write,
 * and a lookup only for a correctly signed value.
 */
async function checkCookies (
  app: FastifyInstance, store: Store, browsers: Browser[], secret: string, header: string,
  request: { method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: object, anonymousStatus: number },
  meUrl: string, userIdOf: (res: LightMyRequestResponse) => unknown, tally: Tally
): Promise<void> {
  const expected = expectation(parseCookie(header), browsers, secret)
  store.calls.length = 0
  const res = await app.inject({ method: request.method, url: request.url, payload: request.payload, headers: { cookie: header } })
  const what = `${request.method} ${request.url} with cookie ${describe(header)}: ${res.statusCode} ${res.body.slice(0, 200)}`
  assert.ok(res.statusCode < 500, `5xx: ${what}`)
  tally.add(expected.auth)
  if (expected.auth === 'anonymous') {
    assert.equal(res.statusCode, request.anonymousStatus, `anonymous expected: ${what}`)
    // A correctly signed value that points at nothing is looked up (one `read` of the device it
    // names), and nothing is written: not even a failed commit.
    assert.deepEqual(writesOf(store.calls), [], `no store write: ${what}`)
    assert.deepEqual(store.calls, expected.calls, `store calls (${store.calls.join(',')}): ${what}`)
    return
  }
  assert.equal(res.statusCode, 200, `signed in as ${expected.browser.userId} expected: ${what}`)
  assert.equal(userIdOf(res), expected.browser.userId, `user: ${what}`)
  if (expected.auth === 'session') {
    assert.deepEqual(store.calls, ['read'], `one read, no write (${store.calls.join(',')}): ${what}`)
    assert.equal(setCookie(cookiesOf(res), SESSION), undefined, `no new session cookie: ${what}`)
    return
  }
  // Remember-me: the token is used, a new session and a new token are issued in one write
  // (besides the reads of the cookies that name a device); the browser keeps them, and they work.
  assert.deepEqual(writesOf(store.calls), ['commit'], `a remember-me sign-in writes once (${store.calls.join(',')}): ${what}`)
  const sid = setCookie(cookiesOf(res), SESSION)
  const tok = setCookie(cookiesOf(res), PERSISTENT)
  assert.ok(sid !== undefined && sid !== '' && sid !== expected.browser.sid, `new session cookie: ${what}`)
  assert.ok(tok !== undefined && tok !== '' && tok !== expected.browser.tok, `new remember-me cookie: ${what}`)
  expected.browser.sid = sid
  expected.browser.tok = tok
  // The first request that shows the new session id claims the rotation (a read and a write);
  // from then on the browser's requests are one read each again, as the other runs expect.
  store.calls.length = 0
  const again = await app.inject({ method: 'GET', url: meUrl, headers: { cookie: `${SESSION}=${sid}` } })
  assert.equal(again.statusCode, 200, `the new session works: ${what}`)
  assert.equal(userIdOf(again), expected.browser.userId, `the new session signs the same user in: ${what}`)
  assert.deepEqual(store.calls, ['read', 'commit'], `the claim: a read and a write (${store.calls.join(',')}): ${what}`)
  assert.equal(setCookie(cookiesOf(again), SESSION), undefined, `the claim sets no cookie: ${what}`)
}

/** The helper app's routes, with what an anonymous request gets. */
const HELPER_ROUTES = [
  { method: 'GET', url: '/me', anonymousStatus: 401 },
  { method: 'GET', url: '/sessions', anonymousStatus: 401 },
  { method: 'DELETE', url: '/sessions/some-fingerprint', anonymousStatus: 401 },
  { method: 'DELETE', url: '/sessions', anonymousStatus: 401 },
  { method: 'PATCH', url: '/me', payload: { name: 'x' }, anonymousStatus: 401 },
  { method: 'POST', url: '/logout', anonymousStatus: 204 }
] as const

/** Counts the mutations that changed the text of the cookie but not the value the cookie parser yields. */
function tallyMutation (tally: Tally, app: FastifyInstance, spec: HeaderSpec, header: string, original: string, mutated: string): void {
  if (mutated === original) tally.add('mutation left the text equal')
  else if (spec.dup === 'none' && parseCookie(header)[spec.kind === 'session' ? SESSION : PERSISTENT] === original) tally.add('mutation undone by the cookie parser')
}

async function helperBrowsers (app: FastifyInstance): Promise<Browser[]> {
  const browsers: Browser[] = []
  for (const id of [1, 2, 3]) {
    const jar = await signIn(app, id, { persistent: true })
    const sid = jar.get(SESSION)
    const tok = jar.get(PERSISTENT)
    if (sid === undefined || tok === undefined) throw new Error('a sign-in with remember-me sets both cookies')
    browsers.push({ sid, tok, userId: id })
  }
  return browsers
}

test('arbitrary cookie headers on every helper route are anonymous: no 5xx, no store call', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const browsers = await helperBrowsers(app)
  const tally = new Tally()
  const input = fc.tuple(cookieHeader, fc.constantFrom(...HELPER_ROUTES))
  await check(t, 'cookie headers (helper routes)', runs(35_000), input, async ([header, route]) => {
    await checkCookies(app, store, browsers, SECRET, header, route, '/me', (res) => res.json().user?.id, tally)
  }, tally)
  for (const b of browsers) {
    t.equal((await app.inject({ url: '/me', headers: { cookie: `${SESSION}=${b.sid}` } })).json().user.id, b.userId, 'the real sessions still work')
  }
})

test('valid signed cookies, mutated, with and without the other cookie (helper app)', async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const browsers = await helperBrowsers(app)
  const tally = new Tally()
  await check(t, 'mutated cookies (helper app)', runs(30_000), headerSpec(browsers.length), async (spec) => {
    const { header, original, mutated } = buildHeader(spec, browsers, SECRET)
    tallyMutation(tally, app, spec, header, original, mutated)
    await checkCookies(app, store, browsers, SECRET, header, HELPER_ROUTES[0], '/me', (res) => res.json().user?.id, tally)
  }, tally)
})

const EXAMPLE_SECRET = 'fuzz-example-secret-0123456789-abcdefghijkl'
const ALICE = { id: 1, email: 'alice@example.com', name: 'Alice' }
const PASSWORDS = { 'alice@example.com': 'alice-password', 'bob@example.com': 'bob-password' } as const

async function example (t: Test): Promise<{ app: FastifyInstance, store: Store, users: UserStore }> {
  const store = recordingStore()
  const app = await buildExample({ secret: EXAMPLE_SECRET, store, loginLimits: { perIp: 1e9, perAccount: 1e9 } })
  t.teardown(() => app.close())
  return { app, store, users: (app as unknown as { users: UserStore }).users }
}

async function exampleLogin (app: FastifyInstance, email: keyof typeof PASSWORDS, remember: boolean): Promise<CookieJar> {
  const jar = new CookieJar(app)
  const res = await jar.request({ method: 'POST', url: '/api/login', payload: { email, password: PASSWORDS[email], remember } })
  if (res.statusCode !== 200) throw new Error(`login failed: ${res.statusCode} ${res.body}`)
  return jar
}

test('valid signed cookies, mutated, with and without the other cookie (example app)', async (t) => {
  const { app, store } = await example(t)
  const browsers: Browser[] = []
  for (const [email, userId] of [['alice@example.com', 1], ['bob@example.com', 2], ['alice@example.com', 1]] as const) {
    const jar = await exampleLogin(app, email, true)
    browsers.push({ sid: jar.get(SESSION) as string, tok: jar.get(PERSISTENT) as string, userId })
  }
  const tally = new Tally()
  const route = { method: 'GET', url: '/api/me', anonymousStatus: 401 } as const
  await check(t, 'mutated cookies (example app)', runs(10_000), headerSpec(browsers.length), async (spec) => {
    const { header, original, mutated } = buildHeader(spec, browsers, EXAMPLE_SECRET)
    tallyMutation(tally, app, spec, header, original, mutated)
    await checkCookies(app, store, browsers, EXAMPLE_SECRET, header, route, '/api/me', (res) => res.json().user?.id, tally)
  }, tally)
})

/**
 * A CSRF token and its secret cookie: from the login page, or with `device` (its session cookie
 * and fingerprint) from the account page, where the token is bound to that device.
 */
async function csrfOf (app: FastifyInstance, device?: { cookie: string, fp: string }): Promise<{ csrfToken: string, csrfSecret: string, csrfDevice: string }> {
  const res = device === undefined ? await app.inject('/login') : await app.inject({ url: '/', headers: { cookie: `${SESSION}=${device.cookie}` } })
  const match = /name="_csrf" value="([^"]+)"/.exec(res.body)
  const secret = setCookie(cookiesOf(res), '_csrf')
  if (match === null || secret === undefined) throw new Error('no CSRF token on the page')
  return { csrfToken: match[1], csrfSecret: secret, csrfDevice: device === undefined ? 'signed-out' : device.fp }
}

/** Password checks (scrypt, ~30 ms each) per property; requests beyond that which would reach one are skipped. */
const SCRYPT_BUDGET = 40

const PAGE_ROUTES = new Set(['login-get', 'login-post', 'logout-post', 'home', 'sessions-get', 'session-delete-post', 'sessions-delete-others-post', 'style'])
const BODY_ERRORS = [400, 413, 415]
const codePoints = (s: string): number => [...s].length

interface Outcome {
  /** Allowed statuses. */
  statuses: number[]
  /** For the authenticated runs: this request signs the browser out / signs its other device out. */
  endsOwn?: boolean
  endsOther?: boolean
  /** It runs the password check (scrypt). */
  checksPassword?: boolean
  /** Right credentials: the request signs in (ending the browser's previous session). */
  signsIn?: boolean
  /** Where a 303 goes. */
  location?: string
}

/**
 * What the example must answer to a request, from the routes' schemas, hooks and handlers. Where
 * the request is outside what this oracle models (unusual content types, raw paths), only "no
 * 5xx" is required.
 */
function outcome (spec: RequestSpec, built: BuiltRequest, cookies: Record<string, string | undefined>, ctx: RequestContext, signedIn: boolean): Outcome {
  const ANY: Outcome = { statuses: [] }
  if (spec.route === 'random') return ANY
  const fp = built.fingerprint
  // A fingerprint in the URL that routes as one path segment and decodes back to itself.
  const preciseFp = spec.fp.which !== 'random' || (spec.fp.encode && fp !== '' && fp !== '.' && fp !== '..')
  if (!preciseFp && (spec.route === 'api-session-delete' || spec.route === 'session-delete-post')) return ANY
  if (jsonRequired(built)) return { statuses: [415] }
  const parsed = parsedBody(spec, built, PAGE_ROUTES.has(spec.route))
  if (parsed === undefined) return ANY
  if (!parsed.ok) return { statuses: BODY_ERRORS }
  const body = parsed.body
  const csrf = csrfPasses(body, built, cookies, ctx, signedIn)
  switch (spec.route) {
    case 'api-login':
      if (!validLoginJson(body)) return { statuses: [400] }
      return rightCredentials(body) ? { statuses: [200], checksPassword: true, signsIn: true, endsOwn: signedIn } : { statuses: [401], checksPassword: true }
    case 'api-logout': return { statuses: [204], endsOwn: signedIn }
    case 'api-me-get': return { statuses: [signedIn ? 200 : 401] }
    case 'api-me-patch': return validNameJson(body) ? { statuses: [signedIn ? 200 : 401] } : { statuses: [400] }
    case 'api-sessions-get': return { statuses: [signedIn ? 200 : 401] }
    case 'api-session-delete':
      if (codePoints(fp) > 64) return { statuses: [400] }
      if (!signedIn) return { statuses: [401] }
      if (spec.fp.which === 'own') return { statuses: [204], endsOwn: true }
      if (spec.fp.which === 'other') return { statuses: [204], endsOther: true }
      return { statuses: [404] }
    case 'api-sessions-delete': return signedIn ? { statuses: [204], endsOther: true } : { statuses: [401] }
    case 'login-get': return { statuses: signedIn ? [303, 400] : [200, 400], location: '/' }
    case 'login-post':
      if (!validLoginForm(body)) return { statuses: [400] }
      if (!csrf) return { statuses: [403] }
      return rightCredentials(body)
        ? { statuses: [303], checksPassword: true, signsIn: true, endsOwn: signedIn, location: '/' }
        : { statuses: [303], checksPassword: true, location: '/login?error=1' }
    case 'logout-post': return csrf ? { statuses: [303], endsOwn: signedIn, location: '/login?signedOut=1' } : { statuses: [403] }
    case 'home': return { statuses: [signedIn ? 200 : 303], location: '/login' }
    case 'sessions-get': return { statuses: [signedIn ? 200 : 303], location: '/login' }
    case 'session-delete-post':
      if (codePoints(fp) > 64) return { statuses: [400] }
      if (!signedIn) return { statuses: [303], location: '/login' }
      if (!csrf) return { statuses: [403] }
      return { statuses: [303], endsOwn: spec.fp.which === 'own', endsOther: spec.fp.which === 'other', location: '/sessions' }
    case 'sessions-delete-others-post':
      if (!signedIn) return { statuses: [303], location: '/login' }
      return csrf ? { statuses: [303], endsOther: true, location: '/sessions' } : { statuses: [403] }
    case 'style': return { statuses: [200] }
  }
}

function describeRequest (built: BuiltRequest, res: LightMyRequestResponse): string {
  const payload = built.payload === undefined ? '' : ` payload ${describe(built.payload)}`
  return `${built.method} ${describe(built.url)} headers ${describe(JSON.stringify(built.headers))}${payload}: ${res.statusCode} ${res.body.slice(0, 300)}`
}

async function send (app: FastifyInstance, built: BuiltRequest): Promise<LightMyRequestResponse> {
  return await app.inject({ method: built.method as 'GET', url: built.url, headers: built.headers, payload: built.payload })
}

test('anonymous requests with arbitrary bodies, content types, CSRF tokens and cookies to every route of the example', async (t) => {
  const { app, store, users } = await example(t)
  const alice = await exampleLogin(app, 'alice@example.com', true)
  const aliceFp = (await alice.request('/api/me')).json().session.fingerprint as string
  const ctx: RequestContext = {
    ...await csrfOf(app),
    ownFingerprint: 'AAAAAAAAAAAAAAAAAAAAAA',
    otherFingerprint: aliceFp, // somebody else's device: an anonymous request cannot sign it out
    leadingCookies: []
  }
  const tally = new Tally()
  let passwordChecks = 0
  await check(t, 'request bodies, anonymous (example app)', runs(18_000), requestSpec(cookiePairs(4)), async (spec) => {
    const built = buildRequest(spec, ctx)
    const cookies = parseCookie(built.headers.cookie ?? '')
    const expected = outcome(spec, built, cookies, ctx, false)
    // The password check is a scrypt (~30 ms): a few dozen of them are enough.
    fc.pre(expected.checksPassword !== true || passwordChecks < SCRYPT_BUDGET)
    const anonymous = expectation(cookies, [], EXAMPLE_SECRET)
    assert.equal(anonymous.auth, 'anonymous')
    store.calls.length = 0
    const checks = users.passwordChecks
    const res = await send(app, built)
    const what = describeRequest(built, res)
    assert.ok(res.statusCode < 500, `5xx: ${what}`)
    const login = /^\/(api\/)?login$/.test(built.url.split('?')[0])
    if (expected.signsIn === true || (expected.statuses.length === 0 && login && (setCookie(cookiesOf(res), SESSION) ?? '') !== '')) {
      // The right password: a sign-in, the one anonymous request that writes.
      assert.ok(setCookie(cookiesOf(res), SESSION), `a session cookie: ${what}`)
      tally.add('signed in')
    } else {
      assert.deepEqual(writesOf(store.calls), [], `no store write (${store.calls.join(',')}): ${what}`)
      assert.deepEqual(store.calls, anonymous.auth === 'anonymous' ? anonymous.calls : [], `no store read but for a correctly signed cookie: ${what}`)
    }
    if (expected.statuses.length > 0) assert.ok(expected.statuses.includes(res.statusCode), `expected ${expected.statuses.join('/')}: ${what}`)
    if (expected.location !== undefined && res.statusCode === 303) assert.equal(res.headers.location, expected.location, what)
    if (BODY_ERRORS.includes(res.statusCode) || res.statusCode === 403) assert.equal(users.passwordChecks, checks, `rejected before the handler: ${what}`)
    if (expected.checksPassword === true) assert.equal(users.passwordChecks, checks + 1, `one password check: ${what}`)
    passwordChecks += users.passwordChecks - checks
    tally.add(expected.statuses.length === 0 ? 'unmodelled' : String(res.statusCode))
  }, tally)
  t.comment(`fuzz: password checks (scrypt) run: ${passwordChecks}`)
  t.equal((await alice.request('/api/me')).statusCode, 200, "the other browser's session survived")
  const listed = (await app.inject({ url: '/api/sessions', headers: { cookie: alice.header() } })).json().sessions as Array<{ fingerprint: string }>
  t.ok(listed.some((s) => s.fingerprint === aliceFp), 'and is listed')
})

test('signed-in requests with arbitrary bodies, content types, CSRF tokens and stray cookies to every route of the example', async (t) => {
  const { app, users } = await example(t)
  const signer = new Signer(EXAMPLE_SECRET)
  // Sessions are minted through app.pow.credentials: a real login costs a scrypt.
  const mint = async (device: string): Promise<{ sid: string, cookie: string, fp: string }> => {
    const sid = app.pow.credentials.generateId(ALICE)
    await app.pow.credentials.put(sid, ALICE, { userAgent: device, ip: '127.0.0.1' })
    const stored = await app.pow.credentials.get(sid)
    return { sid, cookie: signer.sign(sid), fp: (stored as NonNullable<typeof stored>).metadata.fingerprint }
  }
  const alive = async (sid: string): Promise<boolean> => await app.pow.credentials.get(sid) !== null
  let own = await mint('fuzz')
  let other = await mint('other device')
  // CSRF tokens are bound to the device: a new one for each new own device.
  let csrf = await csrfOf(app, own)
  const tally = new Tally()
  let passwordChecks = 0
  // Stray cookies come after the session cookie (the parser keeps the first of a name); a garbage remember-me cookie among them.
  const noise = fc.tuple(cookiePairs(3), fc.option(fc.string({ maxLength: 100 }))).map(([pairs, tok]) => tok === null ? pairs : [...pairs, [PERSISTENT, tok] as [string, string]])
  await check(t, 'request bodies, signed in (example app)', runs(7_000), requestSpec(noise), async (spec) => {
    // Both devices signed in at the start of each run (a run that failed midway leaves them as they were).
    if (!await alive(own.sid)) {
      own = await mint('fuzz')
      csrf = await csrfOf(app, own)
    }
    if (!await alive(other.sid)) other = await mint('other device')
    const ctx: RequestContext = { ...csrf, ownFingerprint: own.fp, otherFingerprint: other.fp, leadingCookies: [[SESSION, own.cookie]] }
    const built = buildRequest(spec, ctx)
    const cookies = parseCookie(built.headers.cookie ?? '')
    assert.equal(cookies[SESSION], own.cookie)
    const expected = outcome(spec, built, cookies, ctx, true)
    fc.pre(expected.checksPassword !== true || passwordChecks < SCRYPT_BUDGET)
    const checks = users.passwordChecks
    const res = await send(app, built)
    const what = describeRequest(built, res)
    assert.ok(res.statusCode < 500, `5xx: ${what}`)
    if (expected.statuses.length > 0) assert.ok(expected.statuses.includes(res.statusCode), `expected ${expected.statuses.join('/')}: ${what}`)
    if (expected.location !== undefined && res.statusCode === 303) assert.equal(res.headers.location, expected.location, what)
    if (BODY_ERRORS.includes(res.statusCode) || res.statusCode === 403) assert.equal(users.passwordChecks, checks, `rejected before the handler: ${what}`)
    if (expected.checksPassword === true) assert.equal(users.passwordChecks, checks + 1, `one password check: ${what}`)
    passwordChecks += users.passwordChecks - checks
    if (spec.route === 'api-me-get' && res.statusCode === 200) assert.equal(res.json().user.id, ALICE.id)
    const ownAlive = await alive(own.sid)
    const otherAlive = await alive(other.sid)
    if (expected.statuses.length > 0) {
      assert.equal(ownAlive, expected.endsOwn !== true, `signed out ${expected.endsOwn === true ? 'expected' : 'unexpectedly'}: ${what}`)
      assert.equal(otherAlive, expected.endsOther !== true, `other device signed out ${expected.endsOther === true ? 'expected' : 'unexpectedly'}: ${what}`)
    } else {
      // Unmodelled requests (raw paths, odd content types) may still hit a sign-out route; nothing else signs anybody out.
      const signOut = /^\/(api\/logout|logout|api\/login|login|api\/sessions(\/.*)?|sessions\/.*)$/.test(built.url.split('?')[0])
      assert.ok(signOut || (ownAlive && otherAlive), `signed out by an unexpected request: ${what}`)
    }
    tally.add(expected.statuses.length === 0 ? 'unmodelled' : String(res.statusCode))
  }, tally)
  t.comment(`fuzz: password checks (scrypt) run: ${passwordChecks}`)
  // The last run may have signed either device out (a modelled sign-out): sign it back in first.
  if (!await alive(own.sid)) own = await mint('fuzz')
  if (!await alive(other.sid)) other = await mint('other device')
  const listing = await app.inject({ url: '/api/sessions', headers: { cookie: `${SESSION}=${own.cookie}` } })
  t.equal(listing.statusCode, 200, 'the session list answers')
  const listed = listing.json().sessions as Array<{ fingerprint: string }>
  t.same(listed.map((s) => s.fingerprint).filter((fp) => fp === own.fp || fp === other.fp).sort(), [own.fp, other.fp].sort(), 'both devices listed')
  t.ok(listed.length <= 2 + passwordChecks, 'ended sessions are not listed')
})

/** JSON round trip: what a value looks like after the request and the store. */
const roundTrip = <T>(value: T): T => JSON.parse(JSON.stringify(value))
/** Metadata without what `metadata` shows of the device itself, as create() stores it. */
const customOnly = ({ fingerprint: _f, insertedAt: _i, signedInAt: _s, ...custom }: Record<string, unknown>): Record<string, unknown> => custom

test("the plugin's helpers through the helper routes, with arbitrary users, names, metadata and fingerprints", async (t) => {
  const store = recordingStore()
  const app = await buildApp(t, { store })
  const tally = new Tally()
  const key = fc.string({ maxLength: 10 }).filter((k) => k !== '__proto__' && k !== 'constructor')
  const input = fc.record({
    id: fc.oneof(fc.integer(), fc.constantFrom(0, -1, Number.MAX_SAFE_INTEGER, 1e300, 0.5), fc.string({ minLength: 1, maxLength: 20 }), fc.string({ unit: 'binary', minLength: 1, maxLength: 20 })),
    name: fc.option(fc.string({ unit: 'binary', maxLength: 50 }), { nil: undefined }),
    persistent: fc.option(fc.boolean(), { nil: undefined }),
    metadata: fc.option(fc.dictionary(fc.oneof(key, fc.constantFrom('fingerprint', 'insertedAt', 'signedInAt', 'userAgent')), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4, noNullPrototype: true }), { nil: undefined }),
    newName: fc.string({ unit: 'binary', maxLength: 50 }),
    fingerprint: fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }),
    end: fc.constantFrom('logout', 'delete-own')
  })
  await check(t, 'helpers (helper app)', runs(1_500), input, async (input) => {
    // Users repeat across runs: each starts signed out everywhere, even after a failed run.
    await app.pow.credentials.deleteUserSessions({ id: input.id } as never)
    const jar = new CookieJar(app)
    const body = JSON.parse(JSON.stringify({ id: input.id, name: input.name, persistent: input.persistent, metadata: input.metadata }))
    const login = await jar.request({ method: 'POST', url: '/login', payload: body })
    const what = (res: LightMyRequestResponse): string => `${JSON.stringify(input)}: ${res.statusCode} ${res.body.slice(0, 300)}`
    if (hasPoison(body)) {
      // Fastify refuses prototype poisoning in JSON bodies before any handler.
      assert.equal(login.statusCode, 400, what(login))
      tally.add('poisoned JSON')
      return
    }
    assert.equal(login.statusCode, 200, what(login))
    const user = roundTrip({ id: input.id, name: input.name ?? `user${input.id}` })
    assert.deepEqual(login.json().user, user)
    assert.equal(jar.get(PERSISTENT) !== undefined, input.persistent === true, `remember-me cookie iff persistent: ${what(login)}`)
    const cookiesAtLogin = jar.header()

    const me = await jar.request('/me')
    assert.equal(me.statusCode, 200, what(me))
    assert.deepEqual(me.json().user, user)
    const metadata = me.json().metadata
    assert.equal(typeof metadata.fingerprint, 'string')
    assert.deepEqual(metadata, { ...roundTrip(input.metadata ?? {}), fingerprint: metadata.fingerprint, insertedAt: metadata.insertedAt, signedInAt: metadata.signedInAt }, what(me))
    const fp = metadata.fingerprint as string

    const patch = await jar.request({ method: 'PATCH', url: '/me', payload: { name: input.newName } })
    assert.equal(patch.statusCode, 200, what(patch))
    assert.deepEqual((await jar.request('/me')).json().user, roundTrip({ ...user, name: input.newName }))

    const sessions = await jar.request('/sessions')
    assert.equal(sessions.statusCode, 200, what(sessions))
    const list = sessions.json().sessions as Array<{ fingerprint: string, current: boolean, metadata: unknown }>
    assert.equal(list.length, 1, what(sessions))
    assert.equal(list[0].fingerprint, fp)
    assert.equal(list[0].current, true)
    assert.deepEqual(list[0].metadata, roundTrip(customOnly(input.metadata ?? {})), 'the store keeps the custom metadata only')

    if (input.fingerprint !== fp) {
      const other = await jar.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(input.fingerprint.replace(/[\ud800-\udfff]/g, '?'))}` })
      assert.equal(other.statusCode, 404, what(other))
    }
    assert.deepEqual((await jar.request({ method: 'DELETE', url: '/sessions' })).json(), { revoked: [] })

    const end = input.end === 'logout'
      ? await jar.request({ method: 'POST', url: '/logout' })
      : await jar.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent(fp)}` })
    assert.equal(end.statusCode, 204, what(end))
    assert.equal((await jar.request('/me')).statusCode, 401, 'signed out')
    store.calls.length = 0
    const replay = await app.inject({ url: '/me', headers: { cookie: cookiesAtLogin } })
    assert.equal(replay.statusCode, 401, `the cookies of the ended session are dead: ${what(replay)}`)
    assert.deepEqual(writesOf(store.calls), [], `dead cookies write nothing (${store.calls.join(',')})`)
    tally.add(input.persistent === true ? 'persistent' : 'session only')
  }, tally)
})

test('the devices pages render any stored user agent and IP', async (t) => {
  const { app } = await example(t)
  const signer = new Signer(EXAMPLE_SECRET)
  const mint = async (metadata: Record<string, unknown>): Promise<string> => {
    const sid = app.pow.credentials.generateId(ALICE)
    await app.pow.credentials.put(sid, ALICE, metadata)
    return signer.sign(sid)
  }
  const own = await mint({ userAgent: 'fuzz', ip: '127.0.0.1' })
  const ownFingerprint = (await app.inject({ url: '/api/me', headers: { cookie: `${SESSION}=${own}` } })).json().session.fingerprint as string
  const tally = new Tally()
  const text = fc.oneof(
    fc.string({ maxLength: 60 }), fc.string({ unit: 'binary', maxLength: 60 }), fc.string({ unit: 'grapheme', maxLength: 30 }),
    fc.constantFrom(
      'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1',
      'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36 Edg/156.0.0.0',
      '<script>alert(1)</script>', '"><img src=x onerror=alert(1)>', "'; DROP TABLE sessions; --", '&amp;&lt;', '\u0000'
    ),
    // Long agents, up to the header limit (the Safari pattern backtracks on these).
    fc.tuple(fc.constantFrom('Version/1', 'Version/1.1', 'Chrome/1 ', 'Safari/', '.1', 'Version/1' + '.1'.repeat(20)), fc.integer({ min: 100, max: 1600 }))
      .map(([unit, n]) => unit.repeat(n).slice(0, 16_000))
  )
  const input = fc.record({
    userAgent: fc.oneof(text, fc.constant(null), fc.integer()),
    ip: fc.oneof(text, fc.constant(null), fc.constant(undefined)),
    extra: fc.dictionary(fc.string({ maxLength: 8 }).filter((k) => k !== '__proto__'), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 })
  })
  const headers = { cookie: `${SESSION}=${own}` }
  await check(t, 'devices pages (example app)', runs(1_500), input, async ({ userAgent, ip, extra }) => {
    // Each run starts with the one own device, even after a failed run (fast-check then replays smaller inputs).
    await app.pow.credentials.deleteUserSessions(ALICE, { except: ownFingerprint })
    await mint({ ...extra, userAgent, ip })
    const page = await app.inject({ url: '/sessions', headers })
    const what = `${JSON.stringify({ userAgent, ip, extra }).slice(0, 400)}: ${page.statusCode}`
    assert.equal(page.statusCode, 200, what)
    assert.equal((page.body.match(/<li data-fingerprint=/g) ?? []).length, 2, `two devices listed: ${what}`)
    if (typeof ip === 'string') {
      assert.ok(page.body.includes(`IP ${escapeHtml(ip)}<`), `the IP, escaped: ${what}`)
      if (escapeHtml(ip) !== ip) assert.ok(!page.body.includes(`IP ${ip}<`), `no unescaped IP: ${what}`)
    }
    const api = await app.inject({ url: '/api/sessions', headers })
    assert.equal(api.statusCode, 200, what)
    const other = (api.json().sessions as Array<{ current: boolean, userAgent: unknown, ip: unknown }>).find((s) => !s.current)
    assert.deepEqual(other, { ...other, userAgent: typeof userAgent === 'string' ? userAgent : null, ip: typeof ip === 'string' ? ip : null }, what)
    assert.equal((await app.inject({ method: 'DELETE', url: '/api/sessions', headers })).statusCode, 204, what)
    tally.add(typeof userAgent === 'string' && userAgent.length > 1000 ? 'long agent' : 'agent')
  }, tally)
})

test('no unhandled rejection or uncaught exception during the run', async (t) => {
  await new Promise((resolve) => setImmediate(resolve))
  process.off('unhandledRejection', onRejection)
  process.off('uncaughtException', onException)
  t.same(unexpected, [])
  const total = counts.reduce((sum, [, n]) => sum + n, 0)
  for (const [name, n] of counts) t.comment(`fuzz: ${name}: ${n} inputs`)
  t.comment(`fuzz: ${total} inputs in total, ${Math.round((Date.now() - started) / 1000)} s`)
  t.ok(total >= runs(100_000) - 2, `at least ${runs(100_000)} inputs`)
})
