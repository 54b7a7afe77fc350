// The four recipes of docs/recipes.md, each built as the doc writes it and driven as browsers
// would. The routes are the doc's; what differs: the app's own functions (checkPassword,
// setPassword, ...) are a small in-memory user table, the user is cast from PowUser (merging
// PowUser here would change it for every test file), and a few routes (/login, /me, /logout)
// are added to drive the app.
import { Writable } from 'node:stream'
import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance, type InjectOptions, type LightMyRequestResponse } from 'fastify'
import { test, type Test } from 'tap'
import pow, { MemoryStore, type PowEvent, type PowOptions, type PowStore } from '../lib/index.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { startRedis } from './helpers/redis.js'

const SECRET = 'recipes-test-secret-that-is-long-enough-012'
const MINUTE = 60_000
const SESSION = 'pow_session'
const TOKEN = 'pow_persistent_session'

interface User { id: number, email: string }

/** The app's user table: what the recipes' declared functions stand for. */
class Users {
  #rows = new Map<number, User & { password: string }>([
    [1, { id: 1, email: 'alice@example.com', password: 'alice-password' }],
    [2, { id: 2, email: 'bob@example.com', password: 'bob-password' }]
  ])

  async findUser (email: string, password: string): Promise<User | null> {
    const row = [...this.#rows.values()].find((r) => r.email === email && r.password === password)
    return row === undefined ? null : { id: row.id, email: row.email }
  }

  async checkPassword (email: string, password: string): Promise<boolean> {
    return await this.findUser(email, password) !== null
  }

  async setPassword (userId: number, password: string): Promise<void> {
    (this.#rows.get(userId) as User & { password: string }).password = password
  }

  async setEmail (userId: number, email: string): Promise<void> {
    (this.#rows.get(userId) as User & { password: string }).email = email
  }

  email (userId: number): string | undefined {
    return this.#rows.get(userId)?.email
  }
}

/**
 * An app as the recipes start it (fastify-pow registered with a secret), with the routes that
 * drive it: POST /login {email, password, remember?} (metadata: the IP), GET /me (requires a
 * user), POST /logout, DELETE /sessions (the other devices); then the recipe's own routes.
 */
async function recipeApp (t: Test, recipe: (app: FastifyInstance, users: Users) => void, options: Partial<PowOptions> = {}, app = Fastify()): Promise<{ app: FastifyInstance, users: Users }> {
  const users = new Users()
  t.teardown(() => app.close())
  await app.register(pow, { secret: SECRET, ...options })
  app.post<{ Body: { email: string, password: string, remember?: boolean } }>('/login', async (request, reply) => {
    const user = await users.findUser(request.body.email, request.body.password)
    if (user === null) return await reply.code(401).send({ error: 'Invalid email or password' })
    await request.powSession.create(user, { persistent: request.body.remember === true, metadata: { ip: request.ip } })
    return { user }
  })
  app.get('/me', { onRequest: app.pow.requireUser }, async (request) => ({ user: request.powSession.user, metadata: request.powSession.metadata }))
  app.post('/logout', async (request, reply) => {
    await request.powSession.delete()
    return await reply.code(204).send()
  })
  app.delete('/sessions', async (request) => ({ revoked: await request.powSession.deleteOtherSessions() }))
  recipe(app, users)
  await app.ready()
  return { app, users }
}

/** A browser signed in through POST /login; `remoteAddress` is its IP. */
async function login (app: FastifyInstance, email: string, password: string, { remember = false, ip = '127.0.0.1' } = {}): Promise<CookieJar> {
  const jar = new CookieJar(app)
  const response = await jar.request({ method: 'POST', url: '/login', payload: { email, password, remember }, remoteAddress: ip })
  if (response.statusCode !== 200) throw new Error(`login failed: ${response.statusCode} ${response.body}`)
  return jar
}

/** This browser's device, as GET /me shows it. */
async function fingerprintOf (jar: CookieJar): Promise<string> {
  return (await jar.request('/me')).json().metadata.fingerprint
}

test('recipe 1: a password change signs out every other browser of the user, not this one', async (t) => {
  const { app, users } = await recipeApp(t, (app, users) => {
    app.post<{ Body: { password: string, newPassword: string } }>('/password', { onRequest: app.pow.requireUser }, async (request, reply) => {
      const user = request.powSession.requireUser() as User
      if (!await users.checkPassword(user.email, request.body.password)) return await reply.code(403).send({ error: 'wrong password' })
      await users.setPassword(user.id, request.body.newPassword)
      await app.pow.credentials.deleteUserSessions(user, { except: request.powSession.metadata?.fingerprint, request })
      return await reply.code(204).send()
    })
  })
  const deleted: PowEvent[] = []
  app.pow.on('session:deleted', (event) => { deleted.push(event) })

  const here = await login(app, 'alice@example.com', 'alice-password')
  const laptop = await login(app, 'alice@example.com', 'alice-password')
  const phone = await login(app, 'alice@example.com', 'alice-password', { remember: true })
  const bob = await login(app, 'bob@example.com', 'bob-password')
  const others = [await fingerprintOf(laptop), await fingerprintOf(phone)].sort()
  const change = async (jar: CookieJar, password: string): Promise<LightMyRequestResponse> =>
    await jar.request({ method: 'POST', url: '/password', payload: { password, newPassword: 'alice-new-password' } })

  t.equal((await app.inject({ method: 'POST', url: '/password', payload: { password: 'x', newPassword: 'y' } })).statusCode, 401, 'anonymous: 401')
  const wrong = await change(here, 'not-her-password')
  t.equal(wrong.statusCode, 403, 'a wrong current password: 403')
  t.equal((await laptop.request('/me')).statusCode, 200, 'and nobody is signed out')
  t.same(deleted, [])

  const changed = await change(here, 'alice-password')
  t.equal(changed.statusCode, 204)
  t.equal((await here.request('/me')).statusCode, 200, 'the browser that changed it stays signed in')
  t.equal((await laptop.request('/me')).statusCode, 401, 'another browser is anonymous')
  phone.delete(SESSION) // the phone's browser restarted: only its remember-me cookie is left
  t.equal((await phone.request('/me')).statusCode, 401, 'a remembered browser is anonymous too: its token was ended')
  t.equal((await bob.request('/me')).statusCode, 200, 'another user is untouched')
  t.ok(await users.checkPassword('alice@example.com', 'alice-new-password'), 'the app stored the new password')

  t.same(deleted.map((e) => e.fingerprint).sort(), others, 'session:deleted for each other device, none for this one')
  for (const event of deleted) {
    t.equal(event.reason, 'revoked')
    t.equal(event.request?.method, 'POST')
    t.equal(event.request?.url, '/password', 'with the request that changed the password')
    t.same(event.user, { id: 1, email: 'alice@example.com' })
  }
})

test('recipe 2: step-up: fresh after a password sign-in, 403 "reauthenticate" after 5 minutes, fresh again after /reauthenticate', async (t) => {
  const clock = fakeClock(t)
  const { app, users } = await recipeApp(t, (app, users) => {
    app.put<{ Body: { email: string } }>('/account/email', { onRequest: app.pow.requireUser }, async (request, reply) => {
      if (!request.powSession.isFresh(5 * 60_000)) return await reply.code(403).send({ error: 'reauthenticate' })
      const user = { ...request.powSession.requireUser() as User, email: request.body.email }
      await users.setEmail(user.id, user.email)
      await request.powSession.update(user)
      return { user }
    })
    app.post<{ Body: { password: string } }>('/reauthenticate', { onRequest: app.pow.requireUser }, async (request, reply) => {
      const user = request.powSession.requireUser() as User
      if (!await users.checkPassword(user.email, request.body.password)) return await reply.code(403).send({ error: 'wrong password' })
      const current = (await request.powSession.sessions()).find((session) => session.current)
      await request.powSession.create(user, { persistent: current?.remembered === true, metadata: current?.metadata })
      return await reply.code(204).send()
    })
  })
  const deleted: PowEvent[] = []
  app.pow.on('session:deleted', (event) => { deleted.push(event) })
  const changeEmail = async (jar: CookieJar, email: string): Promise<LightMyRequestResponse> =>
    await jar.request({ method: 'PUT', url: '/account/email', payload: { email } })
  const reauthenticate = async (jar: CookieJar, password: string): Promise<LightMyRequestResponse> =>
    await jar.request({ method: 'POST', url: '/reauthenticate', payload: { password } })

  const jar = await login(app, 'alice@example.com', 'alice-password', { remember: true, ip: '192.0.2.10' })
  t.equal((await changeEmail(jar, 'alice1@example.com')).statusCode, 200, 'right after the sign-in: allowed')
  t.equal(users.email(1), 'alice1@example.com')

  clock.tick(6 * MINUTE)
  const stale = await changeEmail(jar, 'alice2@example.com')
  t.equal(stale.statusCode, 403, '6 minutes later: 403')
  t.same(stale.json(), { error: 'reauthenticate' })
  t.equal(users.email(1), 'alice1@example.com', 'and the email is unchanged')
  t.equal((await reauthenticate(jar, 'wrong-password')).statusCode, 403, 'a wrong password does not reauthenticate')
  t.equal((await changeEmail(jar, 'alice2@example.com')).statusCode, 403, 'still not fresh')

  const before = (await jar.request('/me')).json().metadata
  t.equal((await reauthenticate(jar, 'alice-password')).statusCode, 204)
  t.equal((await changeEmail(jar, 'alice2@example.com')).statusCode, 200, 'after /reauthenticate: allowed again')
  t.equal(users.email(1), 'alice2@example.com')
  const after = (await jar.request('/me')).json()
  t.equal(after.user.email, 'alice2@example.com', 'update() stored the new email with the session')
  t.not(after.metadata.fingerprint, before.fingerprint, 'create() made a new device')
  t.equal(after.metadata.ip, '192.0.2.10', 'with the metadata of the device it replaced')
  t.same(deleted.map((e) => [e.fingerprint, e.reason]), [[before.fingerprint, 'sign-in']], 'the old device ended with reason "sign-in"')
  const remembered = jar.clone()
  remembered.delete(SESSION)
  const viaToken = await remembered.request('/me')
  t.equal(viaToken.statusCode, 200, 'the browser is still remembered: its token signs it in')
  t.equal(viaToken.json().metadata.fingerprint, after.metadata.fingerprint)

  // A remember-me sign-in alone is not fresh.
  const phone = await login(app, 'alice2@example.com', 'alice-password', { remember: true })
  clock.tick(6 * MINUTE)
  phone.delete(SESSION) // the browser was closed: only its remember-me cookie is left
  const byToken = await changeEmail(phone, 'alice3@example.com')
  t.equal(byToken.statusCode, 403, 'signed in by its token (not 401), but not fresh: 403')
  t.same(byToken.json(), { error: 'reauthenticate' })
  t.ok(phone.get(SESSION), 'the token did sign the browser in: it has a new session cookie')
  t.equal(users.email(1), 'alice2@example.com')
})

interface AuditRow { event: string, userId: number, fingerprint: string, reason: string | null, ip: string | null, actor: string | null }

test('recipe 3: an audit log of sign-ins, sign-outs, revocations and a stolen remember-me token', async (t) => {
  const clock = fakeClock(t)
  const lines: Array<{ msg: string, audit?: AuditRow }> = []
  const stream = new Writable({
    write (chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)))
      cb()
    }
  })
  const rows: AuditRow[] = []
  let failNextInsert = false
  const insertAuditRow = async (row: AuditRow): Promise<void> => {
    await new Promise((resolve) => setImmediate(resolve)) // a table on the other end of a socket
    if (failNextInsert) {
      failNextInsert = false
      throw new Error('audit table unreachable')
    }
    rows.push(row)
  }
  const { app } = await recipeApp(t, (app) => {
    for (const event of ['session:created', 'session:deleted', 'persistent:reuse', 'session:reuse'] as const) {
      app.pow.on(event, ({ user, fingerprint, reason, request, actor }: PowEvent) => {
        const row: AuditRow = { event, userId: (user as User).id, fingerprint, reason: reason ?? null, ip: request?.ip ?? null, actor: actor ?? null }
        app.log.info({ audit: row }, 'session event')
        insertAuditRow(row).catch((err: unknown) => app.log.error({ err, audit: row }, 'audit row not written'))
      })
    }
  }, {}, Fastify({ logger: { stream } }))
  const flush = async (): Promise<void> => { await new Promise((resolve) => setImmediate(resolve)) }
  const row = (event: string, userId: number, fingerprint: string, reason: string | null, ip: string | null, actor: string | null = null): AuditRow =>
    ({ event, userId, fingerprint, reason, ip, actor })
  const request = async (jar: CookieJar, ip: string, options: InjectOptions): Promise<LightMyRequestResponse> =>
    await jar.request({ ...options, remoteAddress: ip })

  // A sign-in and a sign-out.
  const a = await login(app, 'alice@example.com', 'alice-password', { ip: '192.0.2.1' })
  const fpA = await fingerprintOf(a)
  t.equal((await request(a, '192.0.2.1', { method: 'POST', url: '/logout' })).statusCode, 204)
  await flush()
  t.same(rows, [
    row('session:created', 1, fpA, null, '192.0.2.1'),
    row('session:deleted', 1, fpA, 'sign-out', '192.0.2.1')
  ], 'login and logout, with the user id and the browser\'s IP')

  // One device signs the others out; then a script revokes the user's devices.
  rows.length = 0
  const b = await login(app, 'alice@example.com', 'alice-password', { ip: '192.0.2.2' })
  const c = await login(app, 'alice@example.com', 'alice-password', { ip: '192.0.2.3' })
  const [fpB, fpC] = [await fingerprintOf(b), await fingerprintOf(c)]
  t.same((await request(b, '192.0.2.2', { method: 'DELETE', url: '/sessions' })).json(), { revoked: [fpC] })
  t.equal((await c.request('/me')).statusCode, 401)
  t.same(await app.pow.credentials.deleteUserSessions(1, { actor: 'cli' }), [fpB])
  await flush()
  t.same(rows, [
    row('session:created', 1, fpB, null, '192.0.2.2'),
    row('session:created', 1, fpC, null, '192.0.2.3'),
    row('session:deleted', 1, fpC, 'revoked', '192.0.2.2'),
    row('session:deleted', 1, fpB, 'revoked', null, 'cli')
  ], 'a revocation carries the IP of the browser that revoked, or the script\'s actor')

  // Theft: a remember-me token that was used comes back after the grace.
  rows.length = 0
  const d = await login(app, 'bob@example.com', 'bob-password', { remember: true, ip: '192.0.2.4' })
  const fpD = await fingerprintOf(d)
  const stolen = d.get(TOKEN) as string
  d.delete(SESSION) // the browser restarts: its token signs it in and is replaced
  t.equal((await request(d, '192.0.2.4', { url: '/me' })).statusCode, 200)
  t.not(d.get(TOKEN), stolen, 'the token was rotated')
  t.equal((await request(d, '192.0.2.4', { url: '/me' })).statusCode, 200, 'the browser shows its new cookies')
  clock.tick(11_000) // past rotationGrace (10 s)
  const thief = new CookieJar(app)
  thief.set(TOKEN, stolen)
  t.equal((await request(thief, '198.51.100.66', { url: '/me' })).statusCode, 401, 'the old token signs nobody in')
  t.equal((await d.request('/me')).statusCode, 401, 'and the device is revoked')
  await flush()
  t.same(rows, [
    row('session:created', 2, fpD, null, '192.0.2.4'),
    row('session:created', 2, fpD, null, '192.0.2.4'),
    row('persistent:reuse', 2, fpD, null, '198.51.100.66'),
    row('session:deleted', 2, fpD, 'theft', '198.51.100.66')
  ], 'the password sign-in, the remember-me sign-in, then the reuse and the revocation, with the IP that replayed the token')

  // The log has every row; a failed insert is logged and the request goes on.
  t.equal(lines.filter((l) => l.msg === 'session event').length, 10, 'every event was logged')
  failNextInsert = true
  rows.length = 0
  const e = await login(app, 'alice@example.com', 'alice-password', { ip: '192.0.2.5' })
  t.equal((await e.request('/me')).statusCode, 200, 'the sign-in went on')
  await flush()
  t.same(rows, [], 'its row was not written')
  const lost = lines.find((l) => l.msg === 'audit row not written')
  t.equal(lost?.audit?.event, 'session:created', 'and the loss is logged with the row')
  t.equal(lost?.audit?.ip, '192.0.2.5')
})

const PROXY = '10.0.0.2'
const CLIENT = '203.0.113.7'
const OLD_SECRET = 'recipes-old-secret-that-is-long-enough-0123'
const NEW_SECRET = 'recipes-new-secret-that-is-long-enough-4567'

/** An instance as recipe 4 builds it: on `store`, or on Redis through @fastify/redis when `redisUrl` is given. */
async function instance (t: Test, { store, redisUrl, secret = [OLD_SECRET] }: { store?: PowStore, redisUrl?: string, secret?: string[] }): Promise<FastifyInstance> {
  const app = Fastify({ trustProxy: PROXY }) // the proxy's address
  t.teardown(() => app.close())
  if (redisUrl !== undefined) await app.register(fastifyRedis, { url: redisUrl }) // first: fastify-pow uses app.redis
  const users = new Users()
  await app.register(pow, {
    secret,
    ...(store === undefined ? {} : { store }),
    session: { cookieName: '__Host-pow_session' },
    persistentSession: { cookieName: '__Host-pow_remember' }
  })
  app.post<{ Body: { email: string, password: string, remember?: boolean } }>('/login', async (request, reply) => {
    const user = await users.findUser(request.body.email, request.body.password)
    if (user === null) return await reply.code(401).send({ error: 'Invalid email or password' })
    await request.powSession.create(user, { persistent: request.body.remember === true, metadata: { ip: request.ip } })
    return { user }
  })
  // To drive it:
  app.get('/me', { onRequest: app.pow.requireUser }, async (request) => ({
    user: request.powSession.user, metadata: request.powSession.metadata, ip: request.ip, protocol: request.protocol
  }))
  app.post('/logout', async (request, reply) => {
    await request.powSession.delete()
    return await reply.code(204).send()
  })
  await app.ready()
  return app
}

/** One browser behind the proxy: its cookies go to whichever instance the proxy picks. */
class Browser {
  cookies: CookieJar['cookies'] = new Map()

  /** Through the proxy: from its address, with the headers it adds (the client may have sent an X-Forwarded-For of its own). */
  async request (app: FastifyInstance, options: InjectOptions, forwardedFor = CLIENT): Promise<LightMyRequestResponse> {
    const jar = new CookieJar(app)
    jar.cookies = this.cookies
    return await jar.request({ ...options, remoteAddress: PROXY, headers: { ...options.headers, 'x-forwarded-for': forwardedFor, 'x-forwarded-proto': 'https' } })
  }
}

async function severalInstances (t: Test, a: FastifyInstance, b: FastifyInstance): Promise<void> {
  const browser = new Browser()
  // The client sent an X-Forwarded-For of its own; the proxy appended the address it saw.
  const login = await browser.request(a, { method: 'POST', url: '/login', payload: { email: 'alice@example.com', password: 'alice-password', remember: true } }, `198.51.100.9, ${CLIENT}`)
  t.equal(login.statusCode, 200)
  const setCookie = ([] as string[]).concat(login.headers['set-cookie'] as string | string[])
  t.same(setCookie.map((h) => h.slice(0, h.indexOf('='))).sort(), ['__Host-pow_remember', '__Host-pow_session'], '__Host- cookie names')
  for (const header of setCookie) {
    const attributes = header.split(/;\s*/).slice(1).map((a) => a.toLowerCase())
    t.ok(attributes.includes('secure'), `${header.slice(0, 20)}: Secure`)
    t.ok(attributes.includes('path=/'), 'Path=/')
    t.notOk(attributes.some((a) => a.startsWith('domain=')), 'no Domain')
    t.ok(attributes.includes('httponly'), 'HttpOnly')
  }

  const onB = await browser.request(b, { url: '/me' })
  t.equal(onB.statusCode, 200, 'the session signed in on A works on B')
  t.same(onB.json().user, { id: 1, email: 'alice@example.com' })
  t.equal(onB.json().metadata.ip, CLIENT, 'the IP stored at sign-in is the client\'s, as the proxy saw it (not what the client claimed)')
  t.equal(onB.json().ip, CLIENT)
  t.equal(onB.json().protocol, 'https', 'the protocol is the proxy\'s X-Forwarded-Proto')
  const direct = new CookieJar(b)
  direct.cookies = new Map(browser.cookies)
  const bypass = await direct.request({ url: '/me', remoteAddress: '192.0.2.50', headers: { 'x-forwarded-for': CLIENT, 'x-forwarded-proto': 'https' } })
  t.equal(bypass.statusCode, 200)
  t.equal(bypass.json().ip, '192.0.2.50', 'a request that did not come through the proxy: its forwarded headers are ignored')
  t.equal(bypass.json().protocol, 'http')

  const before = new Map(browser.cookies)
  t.equal((await browser.request(b, { method: 'POST', url: '/logout' })).statusCode, 204, 'signed out on B')
  t.equal(browser.cookies.size, 0, 'both cookies cleared')
  t.equal((await browser.request(a, { url: '/me' })).statusCode, 401, 'anonymous on A')
  browser.cookies = before
  t.equal((await browser.request(a, { url: '/me' })).statusCode, 401, 'the cookies from before the sign-out sign nobody in on A')
}

test('recipe 4: two instances behind a proxy, sharing one store', async (t) => {
  // A single MemoryStore given to both instances stands for the Redis (or PostgreSQL) they share.
  const store = new MemoryStore()
  await severalInstances(t, await instance(t, { store }), await instance(t, { store }))
})

test('recipe 4: two instances behind a proxy, on one real Redis through @fastify/redis', async (t) => {
  const server = await startRedis(t)
  await severalInstances(t, await instance(t, { redisUrl: server.url }), await instance(t, { redisUrl: server.url }))
})

test('recipe 4: the secrets: the same on every instance, and a new one rolled in three deploys', async (t) => {
  const store = new MemoryStore()
  const browser = new Browser()
  const old = await instance(t, { store, secret: [OLD_SECRET] })
  await browser.request(old, { method: 'POST', url: '/login', payload: { email: 'alice@example.com', password: 'alice-password', remember: true } })
  const other = await instance(t, { store, secret: [NEW_SECRET] })
  t.equal((await browser.request(other, { url: '/me' })).statusCode, 401, 'an instance with another secret cannot read the cookies')
  t.equal(browser.cookies.size, 2, 'an anonymous answer leaves the browser its cookies')

  const step1 = await instance(t, { store, secret: [OLD_SECRET, NEW_SECRET] })
  const onStep1 = await browser.request(step1, { url: '/me' })
  t.equal(onStep1.statusCode, 200, 'step 1, [old, new]: the cookies work')
  t.equal(onStep1.headers['set-cookie'], undefined, 'and are not signed again: old instances still read them')
  const step2 = await instance(t, { store, secret: [NEW_SECRET, OLD_SECRET] })
  const onStep2 = await browser.request(step2, { url: '/me' })
  t.equal(onStep2.statusCode, 200, 'step 2, [new, old]: the cookies work')
  t.equal(([] as string[]).concat(onStep2.headers['set-cookie'] as string[]).length, 2, 'and both are signed again with the new secret')
  t.equal((await browser.request(step1, { url: '/me' })).statusCode, 200, 'mid-rollout, step-1 instances still read them (and sign them back with the old secret)')
  t.equal((await browser.request(step2, { url: '/me' })).statusCode, 200)
  t.equal((await browser.request(old, { url: '/me' })).statusCode, 401, 'an instance that skipped step 1 would not read what step 2 signs')
  const step3 = await instance(t, { store, secret: [NEW_SECRET] })
  t.equal((await browser.request(step3, { url: '/me' })).statusCode, 200, 'step 3, [new]: the re-signed cookies work')
})
