import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { test } from 'tap'
import pow, { MemoryStore, type PowStore } from '../lib/index.js'
import { STORE_METHODS } from '../lib/options.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { loggedApp } from './helpers/outage.js'
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
  store.read = () => { throw new Error('boom') }
  const response = await jar.request('/me')
  t.equal(response.statusCode, 503)
  t.equal(response.json().code, 'POW_ERR_STORE_UNAVAILABLE')
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

test('a partial outage (one shard down: failures and answers alternate) logs at most an error and an info line a minute', async (t) => {
  const clock = fakeClock(t)
  const state = switchableStore()
  const { app, lines, cookie } = await loggedApp(t, state.store)
  const storeLines = (): Array<{ level: number, failuresNotLogged?: number }> => lines.filter((l) => /session store/.test(l.msg))
  for (let i = 0; i < 40; i++) {
    state.down = i % 2 === 0
    t.equal((await app.inject({ url: '/me', headers: { cookie } })).statusCode, state.down ? 503 : 200)
    clock.tick(1000)
  }
  t.same(storeLines().map((l) => l.level), [50, 30], 'in 40 s of alternation: one error line, and one line when it answered')
  clock.tick(30_000)
  for (let i = 0; i < 4; i++) {
    state.down = i % 2 === 0
    await app.inject({ url: '/me', headers: { cookie } })
  }
  const logged = storeLines()
  t.same(logged.map((l) => l.level), [50, 30, 50, 30], 'a minute later, one more of each')
  t.equal(logged[2]?.failuresNotLogged, 19, 'with the count of the failures not logged in between')
})

test('a short outage soon after another is not lost: the first answer a minute on reports its failures', async (t) => {
  const clock = fakeClock(t)
  const state = switchableStore()
  const { app, lines, cookie } = await loggedApp(t, state.store)
  const me = async (): Promise<number> => (await app.inject({ url: '/me', headers: { cookie } })).statusCode
  state.down = true
  t.equal(await me(), 503)
  state.down = false
  t.equal(await me(), 200)
  clock.tick(20_000)
  state.down = true
  t.same([await me(), await me(), await me()], [503, 503, 503], 'a second outage inside the minute: not logged yet')
  state.down = false
  t.equal(await me(), 200)
  const storeLines = (): Array<{ level: number, failuresNotLogged?: number }> => lines.filter((l) => /session store/.test(l.msg))
  t.same(storeLines().map((l) => l.level), [50, 30])
  clock.tick(41_000)
  t.equal(await me(), 200)
  t.same(storeLines().map((l) => l.level), [50, 30, 40], 'a warning with the count, once the minute is over')
  t.equal(storeLines()[2]?.failuresNotLogged, 3)
  t.equal(await me(), 200)
  t.equal(storeLines().length, 3, 'once')
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
  failing.add('commit')
  const response = await jar.request('/me')
  t.equal(response.statusCode, 503)
  t.equal(response.headers['set-cookie'], undefined)
  t.equal(jar.header(), before)
  failing.clear()
  clock.tick(60_000)
  t.equal((await me(jar)).status, 200, 'well after the grace, the same token still signs in: it was never used')
})

test('a login whose commit fails is a 503 that sets no cookie and stores nothing', async (t) => {
  const { store, failing } = partlyFailingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  const before = jar.header()
  failing.add('commit')
  const response = await jar.request({ method: 'POST', url: '/login', payload: { id: 2, persistent: true } })
  t.equal(response.statusCode, 503)
  t.equal(response.headers['set-cookie'], undefined)
  t.equal(jar.header(), before)
  failing.clear()
  t.same(await app.pow.credentials.sessions(2), [], 'no device of the new user')
  t.equal((await me(jar)).user?.id, 1, 'the browser is still signed in as before')
})

test('a renewal whose commit fails serves the request with the current id, leaves the cookies; the next request renews', async (t) => {
  const clock = fakeClock(t)
  const { store, failing } = partlyFailingStore()
  const app = await buildApp(t, { store })
  const renewed: unknown[] = []
  app.pow.on('session:renewed', (event) => renewed.push(event))
  const jar = await signIn(app, 1, { persistent: true })
  const before = jar.header()
  clock.tick(16 * 60_000)
  failing.add('commit')
  const response = await jar.request('/me')
  t.equal(response.statusCode, 200, 'the id shown still works: the request is served')
  t.equal(response.json().user.id, 1)
  t.equal(response.headers['set-cookie'], undefined, 'neither the session id nor the token cookie is touched')
  t.same(renewed, [], 'no renewal happened')
  t.equal(jar.header(), before)
  failing.clear()
  const renewal = await jar.request('/me')
  t.equal(renewal.statusCode, 200, 'the same id still works: nothing was written')
  t.same(renewal.cookies.map((c) => c.name).sort(), ['pow_persistent_session', 'pow_session'], 'and renews now, moving the token')
  t.equal(renewed.length, 1)
})

test('a renewal whose commit fails past the id\'s expiry is not served: the id has ended', async (t) => {
  const clock = fakeClock(t)
  const { store, failing } = partlyFailingStore()
  const app = await buildApp(t, { store, persistentSession: false })
  const jar = await signIn(app, 1)
  clock.tick(29 * 60_000)
  failing.add('commit')
  t.equal((await jar.request('/me')).statusCode, 200, 'inside the idle timeout: served unrenewed')
  clock.tick(2 * 60_000)
  t.equal((await jar.request('/me')).statusCode, 401, 'the idle timeout of the id as issued still holds')
})

test('a claim whose commit fails serves the request; a remember-me sign-in whose commit fails is still a 503', async (t) => {
  const clock = fakeClock(t)
  const { store, failing } = partlyFailingStore()
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  jar.delete('pow_session')
  const copy = jar.clone()
  failing.add('commit')
  const remembered = await copy.request('/me')
  t.equal(remembered.statusCode, 503, 'the token must be rotated to sign in: no write, no sign-in')
  failing.clear()
  const rotated = await jar.request('/me')
  t.equal(rotated.statusCode, 200)
  clock.tick(1000)
  failing.add('commit')
  const claim = await jar.request('/me')
  t.equal(claim.statusCode, 200, 'the first use of the new id would claim it: served without the write')
  t.equal(claim.headers['set-cookie'], undefined)
  failing.clear()
  t.equal((await jar.request('/me')).statusCode, 200, 'and claimed by the next request')
})

/**
 * A MemoryStore on which another request writes the device between this request's read and its
 * commit, `times` times: every such commit is refused, as under a parallel request.
 */
function racingStore (times: number): { store: PowStore, calls: string[] } {
  const inner = new MemoryStore()
  const calls: string[] = []
  let races = 0
  let armed = false
  const store: PowStore = {
    read: async (bucket, fingerprint) => {
      calls.push('read')
      const found = await inner.read(bucket, fingerprint)
      armed = found !== null && races < times
      return found
    },
    list: async (userKey) => await inner.list(userKey),
    users: async () => await inner.users(),
    commit: async (change) => {
      calls.push('commit')
      if (armed) {
        armed = false
        races++
        // The other request: it writes every device of this change as it is, which moves its version.
        const current = await inner.list(change.userKey)
        await inner.commit({ userKey: change.userKey, devices: current.filter((d) => change.devices.some((w) => w.fingerprint === d.fingerprint)).map((d) => ({ fingerprint: d.fingerprint, data: d.data, ttl: 600_000, usedAt: Date.now() })) })
      }
      const result = await inner.commit(change)
      if (!result.ok) calls.push('refused')
      return result
    }
  }
  return { store, calls }
}

test('a renewal that loses a race reads the device again and decides again', async (t) => {
  const clock = fakeClock(t)
  const { store, calls } = racingStore(1)
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1)
  clock.tick(16 * 60_000)
  calls.length = 0
  const renewal = await jar.request('/me')
  t.equal(renewal.statusCode, 200)
  t.equal(renewal.cookies.length, 1, 'renewed on the second try')
  t.same(calls, ['read', 'commit', 'refused', 'read', 'commit'], 'the refused commit, a fresh read, a commit')
  t.equal((await me(jar)).status, 200, 'the new id works')
})

test('a renewal that loses the race three times is a 503 that leaves the cookies', async (t) => {
  const clock = fakeClock(t)
  const { store, calls } = racingStore(3)
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1)
  const before = jar.header()
  clock.tick(16 * 60_000)
  calls.length = 0
  const renewal = await jar.request('/me')
  t.equal(renewal.statusCode, 503)
  t.equal(renewal.json().code, 'POW_ERR_STORE_UNAVAILABLE')
  t.equal(renewal.headers['set-cookie'], undefined)
  t.same(calls, ['read', 'commit', 'refused', 'read', 'commit', 'refused', 'read', 'commit', 'refused'], 'three attempts, no more')
  t.equal(jar.header(), before)
  t.equal((await me(jar)).status, 200, 'the next request renews')
})

test('a store method that throws instead of rejecting is a 503 too', async (t) => {
  const inner = new MemoryStore()
  let throwing = false
  const store: PowStore = {
    read: async (bucket, fingerprint) => await inner.read(bucket, fingerprint),
    list: async (userKey) => await inner.list(userKey),
    users: async () => await inner.users(),
    commit: (change) => {
      if (throwing) throw new Error('the client is closed')
      return inner.commit(change)
    }
  }
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1)
  throwing = true
  const login = await jar.request({ method: 'POST', url: '/login', payload: { id: 2 } })
  t.equal(login.statusCode, 503)
  t.equal(login.json().code, 'POW_ERR_STORE_UNAVAILABLE')
  t.equal(login.headers['set-cookie'], undefined, 'no cookie change')
  throwing = false
  t.same((await me(jar)).user, { id: 1, name: 'user1' }, 'still signed in as before')
})

test('a store read may answer at once, with a native promise or with any thenable; each failure is a 503 that leaves the cookies', async (t) => {
  const clock = fakeClock(t)
  const inner = new MemoryStore()
  type Answer = 'at once' | 'promise' | 'thenable' | 'throws' | 'rejects' | 'thenable rejects'
  let answer: Answer = 'at once'
  const failure = (): Error => new Error('connect ECONNREFUSED 127.0.0.1:6379')
  // A promise-like object that is not a native promise, as some clients and other realms give.
  const thenable = <T>(settle: (resolve: (value: T) => void, reject: (err: unknown) => void) => void): PromiseLike<T> => ({
    then: (onFulfilled, onRejected) => new Promise<T>(settle).then(onFulfilled, onRejected)
  })
  let reads = 0
  const store: PowStore = {
    read: (bucket, fingerprint) => {
      reads++
      const found = inner.read(bucket, fingerprint)
      switch (answer) {
        case 'at once': return found
        case 'promise': return Promise.resolve(found)
        case 'thenable': return thenable((resolve) => { setImmediate(() => resolve(found)) }) as Promise<typeof found>
        case 'throws': throw failure()
        case 'rejects': return Promise.reject(failure())
        case 'thenable rejects': return thenable((_resolve, reject) => { setImmediate(() => reject(failure())) }) as Promise<typeof found>
      }
    },
    list: async (userKey) => await inner.list(userKey),
    users: async () => await inner.users(),
    commit: async (change) => await inner.commit(change)
  }
  const app = await buildApp(t, { store })
  const jar = await signIn(app, 1, { persistent: true })
  const cookies = jar.header()
  for (const way of ['at once', 'promise', 'thenable'] as const) {
    answer = way
    const before = reads
    const signedIn = await me(jar)
    t.equal(signedIn.status, 200, `${way}: signed in`)
    t.same(signedIn.user, { id: 1, name: 'user1' })
    t.equal(reads - before, 1, `${way}: one store read for the request`)
  }
  for (const way of ['throws', 'rejects', 'thenable rejects'] as const) {
    answer = way
    const response = await jar.request('/me')
    t.equal(response.statusCode, 503, `${way}: a 503`)
    t.equal(response.json().code, 'POW_ERR_STORE_UNAVAILABLE')
    t.equal(response.headers['set-cookie'], undefined, `${way}: no cookie change`)
    t.equal(jar.header(), cookies)
  }
  // A renewal falls due: the read answers at once, the write takes the promise path.
  answer = 'at once'
  clock.tick(16 * 60_000)
  const renewed = await jar.request('/me')
  t.equal(renewed.statusCode, 200, 'renewed on a read that answered at once')
  t.match(String(renewed.headers['set-cookie']), /pow_session=/, 'with a new session cookie')
  answer = 'thenable'
  t.same((await me(jar)).user, { id: 1, name: 'user1' }, 'the renewed session reads through a thenable too')
  // Deleted behind this app's back (as another instance would): the next read, at once, sees it.
  answer = 'at once'
  await inner.commit({ userKey: '1', devices: (await inner.list('1')).map(({ fingerprint }) => ({ fingerprint, data: null, ttl: 0, usedAt: Date.now() })) })
  t.equal((await me(jar)).user, null, 'a device deleted in the store is signed out on the next request')
})
