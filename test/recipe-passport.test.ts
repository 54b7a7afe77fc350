// The "Passport strategies (@fastify/passport)" recipe of docs/recipes.md, built as the doc
// writes it, with a real passport-local strategy, and driven as browsers would. What differs:
// the app's findUser is a small in-memory user table, the user is cast from PassportUser and
// PowUser (merging them here would change them for every test file), and a few routes are
// added to look inside.
//
// @fastify/passport's default export is one Authenticator for the process: each app registers
// its 'local' strategy on it, so the apps of this file are built and driven one at a time.
import fastifyCookie from '@fastify/cookie'
import fastifyPassport from '@fastify/passport'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import { Strategy as LocalStrategy } from 'passport-local'
import { test, type Test } from 'tap'
import pow, { MemoryStore, type PowUser } from '../lib/index.js'
import { CookieJar } from './helpers/jar.js'

const SECRET = 'passport-recipe-secret-that-is-long-enough-0'
const SESSION = 'pow_session'
const TOKEN = 'pow_persistent_session'

interface User { id: number, email: string }

/** The app's user table: what the recipe's declared findUser stands for. */
class Users {
  #rows = [
    { id: 1, email: 'alice@example.com', password: 'alice-password' },
    { id: 2, email: 'bob@example.com', password: 'bob-password' }
  ]

  /** The emails it was asked about, in order. */
  asked: string[] = []
  /** When set, findUser fails as a database that cannot be reached would. */
  down = false

  async findUser (email: string, password: string): Promise<User | null> {
    this.asked.push(email)
    await new Promise((resolve) => setImmediate(resolve)) // a table on the other end of a socket
    if (this.down) throw new Error('users table unreachable')
    const row = this.#rows.find((r) => r.email === email && r.password === password)
    return row === undefined ? null : { id: row.id, email: row.email }
  }
}

type Registration = 'pow first' | 'passport first'
type CookiePlugin = 'none' | 'before' | 'after'

interface Built { app: FastifyInstance, users: Users, store: MemoryStore, seen: Array<Record<string, unknown>> }

/**
 * The recipe's app: fastify-pow, then the request.session decorator and initialize(), then the
 * strategy and the routes. `order: 'passport first'` registers @fastify/passport before
 * fastify-pow; `cookie` registers @fastify/cookie (with a route of its own) before or after both.
 * Added to look inside: GET /inside answers what passport and fastify-pow see on a request other
 * than the sign-in, and each /login records what its handler saw in `seen`.
 */
async function recipeApp (t: Test, { order = 'pow first', cookie = 'none' }: { order?: Registration, cookie?: CookiePlugin } = {}, extra?: (app: FastifyInstance) => void): Promise<Built> {
  const users = new Users()
  const store = new MemoryStore()
  const seen: Array<Record<string, unknown>> = []
  const app = Fastify()
  t.teardown(() => app.close())
  if (cookie === 'before') await app.register(fastifyCookie, { secret: 'the-app-own-cookie-secret' })
  const registerPow = async (): Promise<void> => { await app.register(pow, { secret: SECRET, store }) }
  const registerPassport = async (): Promise<void> => {
    // initialize() needs a request.session (for @fastify/flash); this one throws if read.
    app.decorateRequest('session', { getter () { throw new Error('Passport sessions are not used: use request.powSession') } })
    await app.register(fastifyPassport.initialize())
  }
  if (order === 'pow first') {
    await registerPow()
    await registerPassport()
  } else {
    await registerPassport()
    await registerPow()
  }
  if (cookie === 'after') await app.register(fastifyCookie, { secret: 'the-app-own-cookie-secret' })
  fastifyPassport.use('local', new LocalStrategy({ usernameField: 'email' }, (email, password, done) => {
    users.findUser(email, password).then((user) => done(null, user ?? false), done)
  }))

  app.post<{ Body: { email: string, password: string, remember?: boolean } }>('/login', {
    preValidation: fastifyPassport.authenticate('local', { session: false })
  }, async (request) => {
    const user = request.user as User
    seen.push({ user: request.user, authenticated: request.isAuthenticated(), powUserBefore: request.powSession.user })
    await request.powSession.create(user as PowUser, { persistent: request.body.remember === true })
    return { user }
  })

  app.get('/me', { onRequest: app.pow.requireUser }, async (request) => ({ user: request.powSession.requireUser() }))

  app.post('/logout', async (request, reply) => {
    await request.powSession.delete()
    return await reply.code(204).send()
  })

  // To look inside:
  app.get('/inside', async (request) => ({
    passportUser: request.user ?? null, authenticated: request.isAuthenticated(), powUser: request.powSession.user
  }))
  if (cookie !== 'none') {
    app.get('/theme', async (request, reply) => {
      const theme = request.unsignCookie(request.cookies.theme ?? '')
      return await reply.setCookie('theme', 'dark', { signed: true, path: '/' }).send({ theme: theme.valid ? theme.value : null })
    })
  }
  extra?.(app)
  await app.ready()
  return { app, users, store, seen }
}

function setCookieNames (response: LightMyRequestResponse): string[] {
  return response.cookies.map((c) => c.name).sort()
}

async function login (jar: CookieJar, payload: Record<string, unknown>): Promise<LightMyRequestResponse> {
  return await jar.request({ method: 'POST', url: '/login', payload })
}

test('the right password signs in with fastify-pow: only its cookie, one device, and /me shows the user', async (t) => {
  const { app, users, store, seen } = await recipeApp(t)
  const jar = new CookieJar(app)
  t.equal((await jar.request('/me')).statusCode, 401, 'anonymous before')

  const response = await login(jar, { email: 'alice@example.com', password: 'alice-password' })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { user: { id: 1, email: 'alice@example.com' } }, 'the handler answers the strategy\'s user')
  t.same(setCookieNames(response), [SESSION], 'the only cookie written is fastify-pow\'s session cookie: nothing from passport, no remember-me')
  t.same(users.asked, ['alice@example.com'], 'the strategy asked the user table, through the email field')
  t.same(seen, [{ user: { id: 1, email: 'alice@example.com' }, authenticated: true, powUserBefore: null }],
    'in the handler: request.user is the strategy\'s user and isAuthenticated() is true; fastify-pow has nobody yet')
  t.same(store.size, { devices: 1, users: 1, heap: 1 }, 'one device in the store')
  t.same((await app.pow.credentials.sessions(1)).length, 1, 'alice\'s')

  const me = await jar.request('/me')
  t.equal(me.statusCode, 200, 'the session cookie signs the browser in')
  t.same(me.json(), { user: { id: 1, email: 'alice@example.com' } })
  t.same((await jar.request('/inside')).json(), { passportUser: null, authenticated: false, powUser: { id: 1, email: 'alice@example.com' } },
    'on another request passport restores nobody (no session strategy): request.user is null, request.powSession.user is the user')
  t.same(users.asked, ['alice@example.com'], 'and the strategy is not run again')
})

test('remember me: create(user, { persistent: true }) gives a remember-me token that signs the browser in again', async (t) => {
  const { app } = await recipeApp(t)
  const jar = new CookieJar(app)
  const response = await login(jar, { email: 'bob@example.com', password: 'bob-password', remember: true })
  t.equal(response.statusCode, 200)
  t.same(setCookieNames(response), [TOKEN, SESSION].sort(), 'the session cookie and the remember-me cookie')
  jar.delete(SESSION) // the browser restarted: only its remember-me cookie is left
  const me = await jar.request('/me')
  t.equal(me.statusCode, 200, 'the token signs it in')
  t.same(me.json(), { user: { id: 2, email: 'bob@example.com' } })
  t.ok(jar.get(SESSION), 'with a new session cookie')
})

test('a wrong password answers 401 before the handler: no Set-Cookie, nothing in the store', async (t) => {
  const { app, users, store, seen } = await recipeApp(t)
  for (const payload of [
    { email: 'alice@example.com', password: 'bob-password' },
    { email: 'nobody@example.com', password: 'alice-password' }
  ]) {
    const jar = new CookieJar(app)
    const response = await login(jar, { ...payload, remember: true })
    t.equal(response.statusCode, 401, `${payload.email}: 401`)
    t.equal(response.body, 'Unauthorized', 'passport\'s answer')
    t.equal(response.headers['set-cookie'], undefined, 'no Set-Cookie')
    t.equal((await jar.request('/me')).statusCode, 401, 'the browser is anonymous')
  }
  t.same(users.asked, ['alice@example.com', 'nobody@example.com'], 'the strategy did check them')
  t.same(seen, [], 'the handler never ran')
  t.same(store.size, { devices: 0, users: 0, heap: 0 }, 'nothing in the store')
  t.same(await app.pow.credentials.users(), [])
})

test('a wrong password from a signed-in browser leaves its session alone', async (t) => {
  const { app, store } = await recipeApp(t)
  const jar = new CookieJar(app)
  t.equal((await login(jar, { email: 'bob@example.com', password: 'bob-password' })).statusCode, 200)
  const before = (await app.pow.credentials.sessions(2)).map((s) => s.fingerprint)
  const cookie = jar.get(SESSION)

  const wrong = await login(jar, { email: 'alice@example.com', password: 'wrong' })
  t.equal(wrong.statusCode, 401)
  t.equal(wrong.headers['set-cookie'], undefined, 'no Set-Cookie')
  t.equal(jar.get(SESSION), cookie, 'the browser keeps its cookie')
  t.same((await jar.request('/me')).json(), { user: { id: 2, email: 'bob@example.com' } }, 'and is still bob')
  t.same((await app.pow.credentials.sessions(2)).map((s) => s.fingerprint), before, 'bob\'s device is the same')
  t.same(await app.pow.credentials.sessions(1), [], 'and alice has none')
  t.equal(store.size.devices, 1)
})

test('missing fields answer 400 without asking the user table', async (t) => {
  const { app, users, store, seen } = await recipeApp(t)
  for (const payload of [{ email: 'alice@example.com' }, { password: 'alice-password' }, { email: '', password: 'alice-password' }, {}]) {
    const response = await login(new CookieJar(app), payload)
    t.equal(response.statusCode, 400, `${JSON.stringify(payload)}: 400`)
    t.equal(response.headers['set-cookie'], undefined, 'no Set-Cookie')
  }
  const empty = await app.inject({ method: 'POST', url: '/login' })
  t.equal(empty.statusCode, 400, 'no body at all: 400')
  t.same(users.asked, [], 'the user table was not asked')
  t.same(seen, [], 'the handler never ran')
  t.equal(store.size.devices, 0, 'nothing in the store')
})

test('a failing user table answers 500 and signs nobody in', async (t) => {
  const { app, users, store, seen } = await recipeApp(t)
  users.down = true
  const response = await login(new CookieJar(app), { email: 'alice@example.com', password: 'alice-password' })
  t.equal(response.statusCode, 500, 'the strategy\'s error is the answer')
  t.equal(response.headers['set-cookie'], undefined)
  t.same(seen, [])
  t.equal(store.size.devices, 0)
})

test('sign-out with request.powSession.delete() ends the device and clears the cookies', async (t) => {
  const { app, store } = await recipeApp(t)
  const jar = new CookieJar(app)
  t.equal((await login(jar, { email: 'alice@example.com', password: 'alice-password', remember: true })).statusCode, 200)
  const before = jar.clone()
  t.equal(store.size.devices, 1)

  const out = await jar.request({ method: 'POST', url: '/logout' })
  t.equal(out.statusCode, 204)
  t.same(setCookieNames(out), [TOKEN, SESSION].sort(), 'both cookies are cleared')
  t.equal(jar.cookies.size, 0, 'the browser has none left')
  t.equal((await jar.request('/me')).statusCode, 401, 'anonymous after')
  t.equal((await before.request('/me')).statusCode, 401, 'the cookies from before the sign-out sign nobody in')
  t.equal(store.size.devices, 0, 'the device is gone from the store')
})

test('the request.session decorator: why it is there, and that it fails loudly where passport would use its session', async (t) => {
  await t.test('without it, initialize() fails the app\'s start', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(pow, { secret: SECRET })
    await t.rejects(async () => { await app.register(fastifyPassport.initialize()) }, { message: /The decorator 'session' required by '@fastify\/flash' is not present in Request/ })
  })

  const { app, store } = await recipeApp(t, {}, (app) => {
    app.post('/passport-login', { preValidation: fastifyPassport.authenticate('local') }, async () => ({ reached: true }))
    app.post('/passport-flash', { preValidation: fastifyPassport.authenticate('local', { session: false, failureFlash: 'Invalid email or password' }) }, async () => ({ reached: true }))
    app.post('/passport-logout', async (request) => {
      await request.logOut()
      return { reached: true }
    })
  })
  const right = { email: 'alice@example.com', password: 'alice-password' }
  const withoutSessionFalse = await app.inject({ method: 'POST', url: '/passport-login', payload: right })
  t.equal(withoutSessionFalse.statusCode, 500, 'authenticate() without session: false fails (passport has no serializer, and no session)')
  t.equal(withoutSessionFalse.headers['set-cookie'], undefined)
  const flash = await app.inject({ method: 'POST', url: '/passport-flash', payload: { ...right, password: 'wrong' } })
  t.equal(flash.statusCode, 500, 'a failure flash fails')
  t.match(flash.json().message, 'Passport sessions are not used: use request.powSession', 'with the decorator\'s message')
  const logOut = await app.inject({ method: 'POST', url: '/passport-logout' })
  t.equal(logOut.statusCode, 500, 'request.logOut() fails')
  t.match(logOut.json().message, 'Passport sessions are not used: use request.powSession')
  t.equal(store.size.devices, 0, 'and none of them signed anyone in')

  const jar = new CookieJar(app)
  t.equal((await login(jar, right)).statusCode, 200, 'while the recipe\'s route works')
  t.equal((await jar.request('/me')).statusCode, 200, 'and no request reads request.session: its getter never threw')
})

for (const order of ['pow first', 'passport first'] as const) {
  for (const cookie of ['none', 'before', 'after'] as const) {
    test(`registration: ${order}, @fastify/cookie ${cookie === 'none' ? 'not registered' : `registered ${cookie}`}`, async (t) => {
      const { app, store } = await recipeApp(t, { order, cookie })
      const jar = new CookieJar(app)
      t.equal((await login(jar, { email: 'alice@example.com', password: 'wrong' })).statusCode, 401, 'a wrong password: 401')
      t.equal(store.size.devices, 0)
      const response = await login(jar, { email: 'alice@example.com', password: 'alice-password', remember: true })
      t.equal(response.statusCode, 200, 'the right one signs in')
      t.same(setCookieNames(response), [TOKEN, SESSION].sort())
      t.same((await jar.request('/me')).json(), { user: { id: 1, email: 'alice@example.com' } }, '/me shows the user')
      if (cookie !== 'none') {
        t.same((await jar.request('/theme')).json(), { theme: null }, 'the app\'s own signed cookie: none yet')
        t.same((await jar.request('/theme')).json(), { theme: 'dark' }, 'then read back with @fastify/cookie\'s secret')
        t.equal((await jar.request('/me')).statusCode, 200, 'fastify-pow\'s cookies still work next to it')
      }
      t.equal((await jar.request({ method: 'POST', url: '/logout' })).statusCode, 204)
      t.equal((await jar.request('/me')).statusCode, 401, 'signed out')
      t.equal(store.size.devices, 0)
    })
  }
}
