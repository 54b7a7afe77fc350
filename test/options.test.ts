import Fastify from 'fastify'
import { test } from 'tap'
import pow, { MemoryStore, PowOptionError, type PowOptions } from '../lib/index.js'
import { SECRET } from './helpers/app.js'

const cases: Array<[string, unknown, string]> = [
  ['missing secret', {}, 'secret'],
  ['short secret', { secret: 'short' }, 'secret'],
  ['short secret in a list', { secret: [SECRET, 'short'] }, 'secret'],
  ['empty secret list', { secret: [] }, 'secret'],
  ['non-string secret', { secret: 42 }, 'secret'],
  ['renewAfter >= ttl', { session: { ttl: 1000, renewAfter: 1000 } }, 'session.renewAfter'],
  ['renewAfter above the default ttl', { session: { renewAfter: 31 * 60_000 } }, 'session.renewAfter'],
  ['zero ttl', { session: { ttl: 0 } }, 'session.ttl'],
  ['negative ttl', { session: { ttl: -5 } }, 'session.ttl'],
  ['infinite ttl', { session: { ttl: Infinity } }, 'session.ttl'],
  ['NaN renewAfter', { session: { renewAfter: NaN } }, 'session.renewAfter'],
  ['string ttl', { session: { ttl: '30m' } }, 'session.ttl'],
  ['zero rotationGrace', { session: { rotationGrace: 0 } }, 'session.rotationGrace'],
  ['rotationGrace >= ttl', { session: { ttl: 10_000, renewAfter: 5000, rotationGrace: 10_000 } }, 'session.rotationGrace'],
  ['negative absoluteTtl', { session: { absoluteTtl: -1 } }, 'session.absoluteTtl'],
  ['zero persistent ttl', { persistentSession: { ttl: 0 } }, 'persistentSession.ttl'],
  ['persistent ttl under a second', { persistentSession: { ttl: 500 } }, 'persistentSession.ttl'],
  ['persistent ttl over 400 days', { persistentSession: { ttl: 401 * 86_400_000 } }, 'persistentSession.ttl'],
  ['persistentSession not an object', { persistentSession: true }, 'persistentSession'],
  ['store without the interface', { store: { get: () => null } }, 'store'],
  ['store missing one method', { store: Object.assign(Object.create(MemoryStore.prototype), { commit: undefined }) }, 'store'],
  ['a store of the old interface', { store: { getSession: async () => null, putSession: async () => {}, lock: async () => true, rotateToken: async () => null } }, 'store'],
  ['zero maxDevices', { maxDevices: 0 }, 'maxDevices'],
  ['negative maxDevices', { maxDevices: -1 }, 'maxDevices'],
  ['fractional maxDevices', { maxDevices: 1.5 }, 'maxDevices'],
  ['infinite maxDevices', { maxDevices: Infinity }, 'maxDevices'],
  ['NaN maxDevices', { maxDevices: NaN }, 'maxDevices'],
  ['string maxDevices', { maxDevices: '10' }, 'maxDevices'],
  ['maxMetadataBytes below 2 (the JSON of {})', { maxMetadataBytes: 1 }, 'maxMetadataBytes'],
  ['fractional maxMetadataBytes', { maxMetadataBytes: 100.5 }, 'maxMetadataBytes'],
  ['infinite maxMetadataBytes', { maxMetadataBytes: Infinity }, 'maxMetadataBytes'],
  ['string maxMetadataBytes', { maxMetadataBytes: '4kB' }, 'maxMetadataBytes'],
  ['zero persistent absoluteTtl', { persistentSession: { absoluteTtl: 0 } }, 'persistentSession.absoluteTtl'],
  ['negative persistent absoluteTtl', { persistentSession: { absoluteTtl: -1 } }, 'persistentSession.absoluteTtl'],
  ['infinite persistent absoluteTtl', { persistentSession: { absoluteTtl: Infinity } }, 'persistentSession.absoluteTtl'],
  ['string persistent absoluteTtl', { persistentSession: { absoluteTtl: '90d' } }, 'persistentSession.absoluteTtl'],
  ['userId not a function', { userId: 'id' }, 'userId'],
  ['reloadUser not a function', { reloadUser: true }, 'reloadUser'],
  ['bad cookie name', { session: { cookieName: 'bad name;' } }, 'session.cookieName'],
  ['same cookie names', { session: { cookieName: 'c' }, persistentSession: { cookieName: 'c' } }, 'persistentSession.cookieName'],
  ['__Host- with a Domain', { session: { cookieName: '__Host-s', cookie: { domain: 'example.com' } } }, 'session.cookie'],
  ['__Host- without Secure', { session: { cookieName: '__Host-s', cookie: { secure: false } } }, 'session.cookie'],
  ['__Host- with another path', { session: { cookieName: '__Host-s', cookie: { path: '/x' } } }, 'session.cookie'],
  ['__Secure- without Secure', { persistentSession: { cookieName: '__Secure-r', cookie: { secure: false } } }, 'persistentSession.cookie'],
  ['session not an object', { session: 'yes' }, 'session'],
  ['a cookie attribute fastify-pow does not set', { session: { cookie: { maxAge: 60 } } }, 'session.cookie.maxAge'],
  ['a domain with a space', { session: { cookie: { domain: 'bad domain' } } }, 'session.cookie'],
  ['a path with a semicolon', { persistentSession: { cookie: { path: '/a;b' } } }, 'persistentSession.cookie'],
  ['a path not from the root', { session: { cookie: { path: 'app' } } }, 'session.cookie.path'],
  ["secure: 'auto'", { session: { cookie: { secure: 'auto' } } }, 'session.cookie.secure'],
  ["sameSite: 'Lax'", { session: { cookie: { sameSite: 'Lax' } } }, 'session.cookie.sameSite'],
  ["priority: 'urgent'", { persistentSession: { cookie: { priority: 'urgent' } } }, 'persistentSession.cookie.priority']
]

for (const [name, options, option] of cases) {
  test(`invalid options fail app.ready(): ${name}`, async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    const opts = 'secret' in (options as object) || name.includes('secret') ? options : { secret: SECRET, ...(options as object) }
    app.register(pow, opts as PowOptions)
    const err = await app.ready().then(() => null, (e: unknown) => e) as (Error & { code: string, option: string }) | null
    t.ok(err instanceof PowOptionError, 'a PowOptionError')
    t.equal(err?.code, 'POW_ERR_OPTION')
    t.equal(err?.option, option)
    t.match(err?.message, `"${option}"`, 'the message names the option')
  })
}

test('a store that lacks methods is named with what it misses', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(pow, { secret: SECRET, store: { read: async () => null, users: async () => [] } as never })
  await t.rejects(async () => { await app.ready() }, { option: 'store', message: /missing list, commit/ })
})

test('the smallest maxDevices and maxMetadataBytes are accepted', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pow, { secret: SECRET, maxDevices: 1, maxMetadataBytes: 2 })
  app.post('/login', async (request) => {
    await request.powSession.create({ id: 1 } as never)
    return { metadata: request.powSession.metadata }
  })
  const login = await app.inject({ method: 'POST', url: '/login' })
  t.equal(login.statusCode, 200, 'a sign-in without metadata fits in 2 bytes ({})')
})

test('valid options start the app and answer requests', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pow, {
    secret: [SECRET, SECRET + '-old'],
    store: new MemoryStore(),
    maxDevices: 5,
    maxMetadataBytes: 1024,
    session: { ttl: 60_000, renewAfter: 30_000, rotationGrace: 1000, absoluteTtl: 3_600_000, cookieName: 'sid' },
    persistentSession: { ttl: 86_400_000, absoluteTtl: 7 * 86_400_000, cookieName: 'remember' }
  })
  app.get('/', async (request) => ({ user: request.powSession.user }))
  t.same((await app.inject('/')).json(), { user: null })
})
