import fastifyCookie from '@fastify/cookie'
import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance } from 'fastify'
import { type Test, test } from 'tap'
import pow, {
  MemoryStore, PowMetadataTooLargeError, PowNotSignedInError, PowOptionError, PowReloadUserError, PowSignInRevokedError,
  PowStoreError, type PowOptions, type PowUser
} from '../lib/index.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { startRedis } from './helpers/redis.js'
import { type LogLine, logLines } from './helpers/outage.js'

const SECRET = 'guard-test-secret-that-is-long-enough-0123'
const MINUTE = 60_000

/** An app whose log lines are kept, with a login, a guarded route of each kind and a public one. */
async function guardedApp (t: Test, options: Partial<PowOptions> = {}, setup?: (app: FastifyInstance) => void): Promise<{ app: FastifyInstance, lines: LogLine[], handled: string[] }> {
  const { lines, stream } = logLines()
  const handled: string[] = []
  const app = Fastify({ logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  await app.register(pow, { secret: SECRET, ...options })
  app.post<{ Body: { id: number } }>('/login', async (request) => {
    await request.powSession.create({ id: request.body.id, name: `user${request.body.id}` } as PowUser, { persistent: true })
    return {}
  })
  app.get('/account', async (request) => {
    handled.push('account')
    return { user: request.powSession.requireUser() }
  })
  app.get('/hooked', { onRequest: app.pow.requireUser }, async (request) => {
    handled.push('hooked')
    return { user: request.powSession.user }
  })
  app.get('/prehandled', { preHandler: app.pow.requireUser }, async (request) => {
    handled.push('prehandled')
    return { user: request.powSession.user }
  })
  app.get('/sessions', async (request) => await request.powSession.sessions())
  app.get('/public', async () => ({ ok: true }))
  setup?.(app)
  await app.ready()
  return { app, lines, handled }
}

test('requireUser(): the user when signed in, else 401 "Not signed in" with the helper in the log only', async (t) => {
  const { app, lines, handled } = await guardedApp(t)
  const anonymous = await app.inject('/account')
  t.equal(anonymous.statusCode, 401)
  t.same(anonymous.json(), { statusCode: 401, code: 'POW_ERR_NOT_SIGNED_IN', error: 'Unauthorized', message: 'Not signed in' }, 'a plain message for the client')
  const logged = lines.find((l) => (l as { err?: { helper?: string } }).err?.helper !== undefined) as { err: { helper: string } } | undefined
  t.equal(logged?.err.helper, 'request.powSession.requireUser()', 'the log says which call needed a user')

  const sessions = await app.inject('/sessions')
  t.equal(sessions.json().message, 'Not signed in', 'the other helpers answer the same')
  t.ok(lines.some((l) => (l as { err?: { helper?: string } }).err?.helper === 'request.powSession.sessions()'))

  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login', payload: { id: 7 } })
  const signedIn = await jar.request('/account')
  t.equal(signedIn.statusCode, 200)
  t.same(signedIn.json().user, { id: 7, name: 'user7' })
  t.same(handled, ['account', 'account'], 'the handler ran both times: requireUser() threw inside it')
})

test('app.pow.requireUser as onRequest or preHandler: anonymous requests are answered 401 before the handler', async (t) => {
  const { app, handled } = await guardedApp(t)
  for (const url of ['/hooked', '/prehandled']) {
    const anonymous = await app.inject(url)
    t.equal(anonymous.statusCode, 401, `${url}: 401`)
    t.equal(anonymous.json().code, 'POW_ERR_NOT_SIGNED_IN')
    t.equal(anonymous.json().message, 'Not signed in')
  }
  t.same(handled, [], 'no handler ran')
  const forged = await app.inject({ url: '/hooked', headers: { cookie: `pow_session=${'a'.repeat(69)}.${'b'.repeat(43)}` } })
  t.equal(forged.statusCode, 401, 'a forged cookie is anonymous too')

  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login', payload: { id: 3 } })
  for (const url of ['/hooked', '/prehandled']) {
    const response = await jar.request(url)
    t.equal(response.statusCode, 200, `${url}: signed in, 200`)
    t.same(response.json().user, { id: 3, name: 'user3' })
  }
  t.same(handled, ['hooked', 'prehandled'])
})

test('every error class can be constructed with no arguments, and is not a plain Error', async (t) => {
  const cases: Array<[Error & { code: string, statusCode: number }, string, number, string]> = [
    [new PowOptionError(), 'POW_ERR_OPTION', 500, 'Invalid fastify-pow option'],
    [new PowStoreError(), 'POW_ERR_STORE_UNAVAILABLE', 503, 'Session store unavailable'],
    [new PowReloadUserError(), 'POW_ERR_RELOAD_USER', 503, 'User unavailable'],
    [new PowNotSignedInError(), 'POW_ERR_NOT_SIGNED_IN', 401, 'Not signed in'],
    [new PowSignInRevokedError(), 'POW_ERR_SIGN_IN_REVOKED', 401, 'The new session was revoked while it was being created'],
    [new PowMetadataTooLargeError(), 'POW_ERR_METADATA_TOO_LARGE', 400, 'Session metadata is too large']
  ]
  for (const [err, code, statusCode, message] of cases) {
    t.ok(err instanceof Error, `${err.name} is an Error`)
    t.equal(err.code, code)
    t.equal(err.statusCode, statusCode)
    t.equal(err.message, message)
    t.equal(err.name, err.constructor.name, 'its name is its class')
  }
  t.ok(new PowOptionError() instanceof TypeError, 'an option error is a TypeError')
  t.equal(new PowOptionError('session.ttl', 'must be positive').message, 'fastify-pow option "session.ttl" must be positive')
  t.equal(new PowOptionError('session.ttl', 'must be positive').option, 'session.ttl')
  t.equal(new PowMetadataTooLargeError(10).message, 'Session metadata is larger than maxMetadataBytes (10 bytes of JSON)')
  t.notOk(new PowStoreError() instanceof PowNotSignedInError, 'the classes are distinct')
})

test('reloadUser that throws: 503 POW_ERR_RELOAD_USER, no cookie change, logged once until it answers again', async (t) => {
  const clock = fakeClock(t)
  let failing = false
  let calls = 0
  const { app, lines } = await guardedApp(t, {
    reloadUser: async (user) => {
      calls++
      if (failing) throw new Error('users table unreachable')
      return { ...(user as { id: number }), name: 'reloaded' } as PowUser
    }
  })
  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login', payload: { id: 5 } })
  const before = jar.header()
  t.same((await jar.request('/account')).json().user, { id: 5, name: 'reloaded' }, 'the reloaded user is this request\'s user')

  failing = true
  clock.tick(16 * MINUTE) // a renewal is due: it must not reach the browser while the reload fails
  for (const url of ['/account', '/public', '/account']) {
    const response = await jar.request(url)
    t.equal(response.statusCode, 503, `${url}: 503 (a signed-in request needs its user)`)
    t.equal(response.json().code, 'POW_ERR_RELOAD_USER')
    t.equal(response.json().message, 'User unavailable')
    t.equal(response.headers['set-cookie'], undefined, `${url}: no cookie change`)
  }
  t.equal(jar.header(), before, 'the browser holds the cookies it had')
  const anonymous = await app.inject('/public')
  t.equal(anonymous.statusCode, 200, 'an anonymous request does not reload anybody')
  const errors = lines.filter((l) => l.msg === 'fastify-pow: reloadUser failed; answering 503 to the requests it fails for')
  t.equal(errors.length, 1, 'the outage is logged once')
  t.equal(errors[0]?.err?.message, 'users table unreachable', 'with the error reloadUser threw')

  failing = false
  clock.tick(11_000) // past the grace of the renewal whose answer never reached the browser
  const back = await jar.request('/account')
  t.equal(back.statusCode, 200, 'signed in again once reloadUser answers')
  t.ok(lines.some((l) => l.msg === 'fastify-pow: reloadUser answers again'), 'the end of the outage is logged')
  t.ok((back.cookies as Array<{ name: string }>).some((c) => c.name === 'pow_session'), 'the renewal whose answer was withheld is issued again')
  t.ok(calls >= 5)

  failing = true
  await jar.request('/account')
  t.equal(lines.filter((l) => l.msg.startsWith('fastify-pow: reloadUser failed;')).length, 1, 'a failure within a minute of the last line logged is not logged')
  clock.tick(60_000)
  await jar.request('/account')
  const logged = lines.filter((l) => l.msg.startsWith('fastify-pow: reloadUser failed;'))
  t.equal(logged.length, 2, 'a minute later, it is')
  t.equal((logged[1] as { failuresNotLogged?: number }).failuresNotLogged, 3, 'with the count of the failures not logged since the last line')
})

test('a MemoryStore under NODE_ENV=production is a warning at registration; not in development', async (t) => {
  const saved = process.env.NODE_ENV
  t.teardown(() => { process.env.NODE_ENV = saved })
  const warning = /sessions are kept in memory \(MemoryStore\) under NODE_ENV=production: they are lost on restart and not shared with other instances/
  for (const [env, store, expected] of [['production', undefined, true], ['production', new MemoryStore(), true], ['development', undefined, false]] as const) {
    process.env.NODE_ENV = env
    const { lines } = await guardedApp(t, store === undefined ? {} : { store })
    t.equal(lines.some((l) => l.level === 40 && warning.test(l.msg)), expected, `${env}, ${store === undefined ? 'default store' : 'a MemoryStore given'}: ${expected ? 'warned' : 'no warning'}`)
  }
})

test('@fastify/cookie registered after fastify-pow works, and both write their cookies to one answer', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pow, { secret: SECRET })
  await app.register(fastifyCookie, { parseOptions: { domain: 'example.com' } })
  app.post('/login', async (request, reply) => {
    await request.powSession.create({ id: 1 } as PowUser, { persistent: true })
    reply.setCookie('theme', 'dark')
    return { cookies: Object.keys(request.cookies).sort() }
  })
  app.get('/me', async (request) => ({ user: request.powSession.user, theme: request.cookies.theme }))
  await app.ready()
  const jar = new CookieJar(app)
  const login = await jar.request({ method: 'POST', url: '/login', headers: { cookie: 'other=1' } })
  t.equal(login.statusCode, 200)
  t.same(login.json().cookies, ['other'], 'the app\'s @fastify/cookie parses requests')
  const setCookie = ([] as string[]).concat(login.headers['set-cookie'] as string | string[])
  t.same(setCookie.map((h) => h.split('=')[0]).sort(), ['pow_persistent_session', 'pow_session', 'theme'], 'one answer carries both plugins\' cookies')
  t.notOk(setCookie.some((h) => h.startsWith('pow_') && h.includes('Domain=')), 'the app\'s cookie options do not reach fastify-pow\'s cookies')
  const me = await jar.request('/me')
  t.same(me.json(), { user: { id: 1 }, theme: 'dark' })
})

test('a sign-in after the hook renewed in the same request sends one header per cookie name', async (t) => {
  const clock = fakeClock(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pow, { secret: SECRET })
  app.post<{ Body: { id: number } }>('/login', async (request) => {
    await request.powSession.create({ id: request.body.id } as PowUser)
    return {}
  })
  await app.ready()
  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  clock.tick(16 * MINUTE)
  const again = await jar.request({ method: 'POST', url: '/login', payload: { id: 2 } })
  const names = ([] as string[]).concat(again.headers['set-cookie'] as string | string[]).map((h) => h.split('=')[0])
  t.same(names, ['pow_session'], 'the renewal\'s cookie was replaced by the sign-in\'s, not sent twice')
})

test('events carry the user as stored and who acted: a theft, an admin revocation by request, a script by actor', async (t) => {
  const clock = fakeClock(t)
  const { app } = await guardedApp(t)
  const events: Array<{ kind: string, user: unknown, reason?: string | undefined, actor?: string | undefined, url?: string | undefined }> = []
  for (const kind of ['session:deleted', 'persistent:reuse'] as const) {
    app.pow.on(kind, (e) => { events.push({ kind, user: e.user, reason: e.reason, actor: e.actor, url: e.request?.url }) })
  }
  const victim = new CookieJar(app)
  await victim.request({ method: 'POST', url: '/login', payload: { id: 9 } })
  const oldToken = victim.get('pow_persistent_session') as string
  victim.delete('pow_session')
  t.equal((await victim.request('/account')).statusCode, 200, 'the remember-me token signs in (and rotates)')
  t.equal((await victim.request('/account')).statusCode, 200, 'the browser shows its new cookies: the rotation is claimed')
  clock.tick(11_000)
  const thief = new CookieJar(app)
  thief.set('pow_persistent_session', oldToken)
  t.equal((await thief.request('/account')).statusCode, 401, 'the used token, replayed after the grace, is refused')
  t.same(events, [
    { kind: 'persistent:reuse', user: { id: 9, name: 'user9' }, reason: undefined, actor: undefined, url: '/account' },
    { kind: 'session:deleted', user: { id: 9, name: 'user9' }, reason: 'theft', actor: undefined, url: '/account' }
  ], 'a theft names the user whose device it was')

  events.length = 0
  const id = app.pow.credentials.generateId({ id: 4 } as PowUser)
  await app.pow.credentials.put(id, { id: 4, name: 'user4' } as PowUser)
  t.equal(await app.pow.credentials.delete(id, { actor: 'support-script' }), true)
  t.same(events, [{ kind: 'session:deleted', user: { id: 4, name: 'user4' }, reason: 'revoked', actor: 'support-script', url: undefined }],
    'credentials.delete() fires session:deleted with the actor named, and no request')
})

test('an admin revoking by user id: the events carry the admin\'s request and the user as stored', async (t) => {
  const { app } = await guardedApp(t, {}, (app) => {
    app.post<{ Params: { id: string } }>('/admin/users/:id/sign-out', { onRequest: app.pow.requireUser }, async (request) => ({
      revoked: await app.pow.credentials.deleteUserSessions(Number(request.params.id), { request })
    }))
  })
  const deleted: Array<{ user: unknown, reason?: string | undefined, by?: unknown }> = []
  app.pow.on('session:deleted', (e) => { deleted.push({ user: e.user, reason: e.reason, by: e.request?.powSession.user }) })
  const phone = new CookieJar(app)
  await phone.request({ method: 'POST', url: '/login', payload: { id: 4 } })
  const laptop = new CookieJar(app)
  await laptop.request({ method: 'POST', url: '/login', payload: { id: 4 } })
  const admin = new CookieJar(app)
  await admin.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  t.equal((await app.inject({ method: 'POST', url: '/admin/users/4/sign-out' })).statusCode, 401, 'the guard keeps anonymous requests out')
  const revoked = await admin.request({ method: 'POST', url: '/admin/users/4/sign-out' })
  t.equal(revoked.json().revoked.length, 2)
  t.same(deleted, [0, 1].map(() => ({ user: { id: 4, name: 'user4' }, reason: 'revoked', by: { id: 1, name: 'user1' } })),
    'each event: the user whose device ended, and the admin who acted, through their request')
  t.equal((await phone.request('/account')).statusCode, 401)
  t.equal((await laptop.request('/account')).statusCode, 401)
  t.equal((await admin.request('/account')).statusCode, 200, 'the admin stays signed in')
})

test('create(user, { metadata: request.powSession.metadata }) keeps the custom metadata only, not the old device\'s fields', async (t) => {
  const clock = fakeClock(t)
  const { app } = await guardedApp(t, {}, (app) => {
    app.post('/again', { onRequest: app.pow.requireUser }, async (request) => {
      await request.powSession.create(request.powSession.requireUser(), { metadata: request.powSession.metadata ?? undefined })
      return request.powSession.metadata
    })
    app.post('/tagged', async (request) => {
      await request.powSession.create({ id: 2 } as PowUser, { metadata: { browser: 'Firefox' } })
      return request.powSession.metadata
    })
  })
  const jar = new CookieJar(app)
  const first = (await jar.request({ method: 'POST', url: '/tagged' })).json()
  clock.tick(60_000)
  const again = (await jar.request({ method: 'POST', url: '/again' })).json()
  t.equal(again.browser, 'Firefox', 'the custom metadata is carried over')
  t.not(again.fingerprint, first.fingerprint, 'a new device')
  t.equal(again.signedInAt, first.signedInAt + 60_000, 'signed in now, not when the old device did')
  const [listed] = await app.pow.credentials.sessions(2)
  t.same(listed?.metadata, { browser: 'Firefox' }, 'the store keeps only the custom part')
})

test('reloadUser failing for one user while it answers for others: one error line a minute, not one per request', async (t) => {
  fakeClock(t)
  const { app, lines } = await guardedApp(t, {
    reloadUser: async (user) => {
      if ((user as { id: number }).id === 1) throw new Error('row 1 is corrupt')
      return user
    }
  })
  const broken = new CookieJar(app)
  await broken.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  const fine = new CookieJar(app)
  await fine.request({ method: 'POST', url: '/login', payload: { id: 2 } })
  for (let round = 0; round < 5; round++) {
    t.equal((await broken.request('/account')).statusCode, 503)
    t.equal((await fine.request('/account')).statusCode, 200)
  }
  t.equal(lines.filter((l) => l.msg.startsWith('fastify-pow: reloadUser failed;')).length, 1, 'one error line')
  t.equal(lines.filter((l) => l.msg === 'fastify-pow: reloadUser answers again').length, 1, 'one line when it answered after it')
})

test('reloadUser: a 4xx it throws is the answer; undefined signs out as null does', async (t) => {
  const { app } = await guardedApp(t, {
    reloadUser: async (user) => {
      const { id } = user as { id: number }
      if (id === 1) throw Object.assign(new Error('This account is suspended'), { statusCode: 403, code: 'APP_SUSPENDED' })
      return id === 2 ? undefined as unknown as null : user
    }
  })
  const suspended = new CookieJar(app)
  await suspended.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  const response = await suspended.request('/public')
  t.equal(response.statusCode, 403)
  t.equal(response.json().code, 'APP_SUSPENDED', 'the error as thrown')
  t.equal(response.headers['set-cookie'], undefined, 'no cookie change')
  const gone = new CookieJar(app)
  await gone.request({ method: 'POST', url: '/login', payload: { id: 2 } })
  const out = await gone.request('/account')
  t.equal(out.statusCode, 401, 'undefined: signed out')
  t.equal(gone.get('pow_session'), undefined, 'and the cookie cleared')
})

test('app.pow.requireUser on a route outside fastify-pow\'s context is a 500 that says so, not a 401', async (t) => {
  const { lines, stream } = logLines()
  const app = Fastify({ logger: { level: 'error', stream } })
  t.teardown(() => app.close())
  let hook: FastifyInstance['pow']['requireUser'] | undefined
  await app.register(async (child) => {
    await child.register(pow, { secret: SECRET })
    hook = child.pow.requireUser
  })
  await app.register(async (sibling) => {
    sibling.get('/x', { onRequest: hook }, async () => ({ ok: true }))
  })
  const response = await app.inject('/x')
  t.equal(response.statusCode, 500)
  t.match(lines.find((l) => l.level === 50)?.err?.message, /app\.pow\.requireUser ran on a route outside the context fastify-pow is registered in/)
})

test('cookie attributes given as undefined keep their defaults', async (t) => {
  const saved = process.env.NODE_ENV
  process.env.NODE_ENV = 'production'
  t.teardown(() => { process.env.NODE_ENV = saved })
  const { app } = await guardedApp(t, { session: { cookie: { secure: undefined, httpOnly: undefined, sameSite: undefined, path: undefined } } })
  const login = await app.inject({ method: 'POST', url: '/login', payload: { id: 1 } })
  const header = ([] as string[]).concat(login.headers['set-cookie'] as string | string[]).find((h) => h.startsWith('pow_session='))
  t.match(header, /; Path=\/; HttpOnly; Secure; SameSite=Lax$/)
})

test('@fastify/cookie registered before fastify-pow: its parse options do not apply to fastify-pow\'s cookies', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyCookie, { parseOptions: { decode: (value: string) => value.slice(0, 10) } as never })
  await app.register(pow, { secret: SECRET })
  app.post('/login', async (request) => {
    await request.powSession.create({ id: 1 } as PowUser)
    return {}
  })
  app.get('/me', async (request) => ({ user: request.powSession.user }))
  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login' })
  t.same((await jar.request('/me')).json(), { user: { id: 1 } })
})

test('credentials.put fires session:created; credentials.delete needs an id that signs the device in', async (t) => {
  const { app } = await guardedApp(t)
  const created: Array<{ user: unknown, actor?: string | undefined }> = []
  app.pow.on('session:created', (e) => { created.push({ user: e.user, actor: e.actor }) })
  const id = app.pow.credentials.generateId({ id: 5 } as PowUser)
  await app.pow.credentials.put(id, { id: 5 } as PowUser, {}, { actor: 'import-job' })
  t.same(created, [{ user: { id: 5 }, actor: 'import-job' }])
  const forged = id.slice(0, -4) + (id.endsWith('AAAA') ? 'BBBB' : 'AAAA')
  t.equal(await app.pow.credentials.delete(forged), false, 'an id of the same device that never signed it in ends nothing')
  t.not(await app.pow.credentials.get(id), null, 'the device lives on')
  t.equal(await app.pow.credentials.delete(id), true)
  t.equal(await app.pow.credentials.get(id), null)
})

test('@fastify/redis registered after fastify-pow: a warning at ready says sessions stay in memory', async (t) => {
  const server = await startRedis(t)
  const { lines, stream } = logLines()
  const app = Fastify({ logger: { level: 'warn', stream } })
  t.teardown(() => app.close())
  await app.register(pow, { secret: SECRET })
  await app.register(fastifyRedis, { url: server.url })
  await app.ready()
  t.ok(app.pow.rawStore instanceof MemoryStore, 'the store is the MemoryStore chosen at registration')
  t.ok(lines.some((l) => l.level === 40 && /@fastify\/redis was registered after fastify-pow, so sessions are kept in memory/.test(l.msg)), 'warned')
})
