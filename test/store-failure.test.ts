import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { test } from 'tap'
import pow, { MemoryStore, type PowStore } from '../lib/index.js'
import { STORE_METHODS } from '../lib/options.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'

/** A real MemoryStore behind a switch: while `down`, every call fails as a dead connection would. */
function switchableStore (): { store: PowStore, down: boolean } {
  const inner = new MemoryStore()
  const state = { down: false, store: {} as PowStore }
  for (const method of STORE_METHODS) {
    (state.store as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
      if (state.down) throw new Error('connect ECONNREFUSED 127.0.0.1:6379')
      return await (inner[method] as (...a: unknown[]) => Promise<unknown>).apply(inner, args)
    }
  }
  return state
}

test('a store outage is a 503 that leaves cookies alone; the same cookies work afterwards', async (t) => {
  const clock = fakeClock(t)
  const state = switchableStore()
  const app = await buildApp(t, { store: state.store })
  const jar = await signIn(app, 1, { persistent: true })
  const cookies = jar.header()

  state.down = true
  const plain = await jar.request('/me')
  t.equal(plain.statusCode, 503)
  t.equal(plain.json().code, 'POW_ERR_STORE_UNAVAILABLE')
  t.notMatch(plain.body, /ECONNREFUSED/, 'the store error stays in the logs')
  t.equal(plain.headers['set-cookie'], undefined, 'no cookie is touched')

  clock.tick(16 * 60_000)
  t.equal((await jar.request('/me')).statusCode, 503, 'a request due for renewal fails the same way')
  const noSession = jar.clone()
  noSession.delete('pow_session')
  const remember = await noSession.request('/me')
  t.equal(remember.statusCode, 503, 'so does a remember-me sign-in')
  t.equal(remember.headers['set-cookie'], undefined)
  const login = await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  t.equal(login.statusCode, 503, 'and a login')
  t.equal(login.headers['set-cookie'], undefined)
  t.equal((await jar.request({ method: 'POST', url: '/logout' })).statusCode, 503, 'and a logout, which keeps the cookies')
  t.equal(jar.header(), cookies, 'the browser still holds its cookies')

  t.equal((await app.inject('/me')).statusCode, 401, 'anonymous requests never reach the store')

  state.down = false
  const back = await me(jar)
  t.equal(back.status, 200, 'once the store is back the same cookies sign in')
})

test('a store method that throws synchronously is a 503 too', async (t) => {
  const store = new MemoryStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1)
  store.getSession = () => { throw new Error('boom') }
  const response = await jar.request('/me')
  t.equal(response.statusCode, 503)
})

test('app.pow.credentials reports a failing store as a 503 error', async (t) => {
  const state = switchableStore()
  const app = await buildApp(t, { store: state.store })
  state.down = true
  await t.rejects(app.pow.credentials.users(), { code: 'POW_ERR_STORE_UNAVAILABLE', statusCode: 503 })
})

test('an outage is logged once when it starts and once when it ends, not per request', async (t) => {
  const lines: Array<{ level: number, msg: string }> = []
  const stream = new Writable({ write (chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb() } })
  const state = switchableStore()
  const logged = Fastify({ logger: { level: 'info', stream } })
  t.teardown(() => logged.close())
  await logged.register(pow, { secret: 'x'.repeat(32), store: state.store })
  logged.post('/login', async (request) => { await request.powSession.create({ id: 1 } as never); return {} })
  logged.get('/me', async (request) => ({ user: request.powSession.user }))
  const login = await logged.inject({ method: 'POST', url: '/login' })
  const cookie = `pow_session=${login.cookies[0].value}`
  state.down = true
  for (let i = 0; i < 5; i++) t.equal((await logged.inject({ url: '/me', headers: { cookie } })).statusCode, 503)
  state.down = false
  t.equal((await logged.inject({ url: '/me', headers: { cookie } })).statusCode, 200)
  const store = lines.filter((l) => /session store/.test(l.msg))
  t.same(store.map((l) => l.level), [50, 30], 'one error, then one info when it is back')
})

/** A real MemoryStore whose named methods fail while armed: a store that breaks in the middle of a request. */
function partlyFailingStore (): { store: PowStore, failing: Set<string> } {
  const inner = new MemoryStore()
  const failing = new Set<string>()
  const store = {} as PowStore
  for (const method of STORE_METHODS) {
    (store as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
      if (failing.has(method)) throw new Error(`${method} failed`)
      return await (inner[method] as (...a: unknown[]) => Promise<unknown>).apply(inner, args)
    }
  }
  return { store, failing }
}

test('a store failing as a remember-me token is used is a 503 that loses nothing', async (t) => {
  const clock = fakeClock(t)
  const { store, failing } = partlyFailingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  jar.delete('pow_session')
  const before = jar.header()
  failing.add('rotateToken')
  const response = await jar.request('/me')
  t.equal(response.statusCode, 503)
  t.equal(response.headers['set-cookie'], undefined)
  t.equal(jar.header(), before)
  failing.clear()
  clock.tick(60_000)
  t.equal((await me(jar)).status, 200, 'well after the grace, the same token still signs in: it was never used')
})

test('a login whose remember-me token cannot be stored is a 503 that sets no cookie', async (t) => {
  const { store, failing } = partlyFailingStore()
  const app = await buildApp(t, { store })
  failing.add('putToken')
  const response = await app.inject({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })
  t.equal(response.statusCode, 503)
  t.equal(response.headers['set-cookie'], undefined)
})

test('a renewal whose remember-me token cannot be extended still succeeds', async (t) => {
  const clock = fakeClock(t)
  const { store, failing } = partlyFailingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  clock.tick(16 * 60_000)
  failing.add('touchToken')
  const response = await jar.request('/me')
  t.equal(response.statusCode, 200)
  t.ok(response.cookies.some((c) => c.name === 'pow_session'), 'the renewed id is set')
  failing.clear()
  t.equal((await me(jar)).status, 200)
})
