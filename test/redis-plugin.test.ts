import { once } from 'node:events'
import fastifyRedis from '@fastify/redis'
import type { Cluster, Redis } from 'ioredis'
import { test, type Test } from 'tap'
import Fastify from 'fastify'
import pow, { RedisStore } from '../lib/index.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { startCluster, startRedis } from './helpers/redis.js'

/** Every key under the namespace, from every master. */
async function keysOf (client: Redis | Cluster, namespace: string): Promise<string[]> {
  const nodes = (client as Cluster).isCluster ? (client as Cluster).nodes('master') : [client as Redis]
  const keys: string[] = []
  for (const node of nodes) keys.push(...await node.keys(`${namespace}:*`))
  return keys
}

async function assertAllKeysExpire (t: Test, client: Redis | Cluster, namespace: string): Promise<void> {
  const keys = await keysOf(client, namespace)
  t.ok(keys.length > 0, `${keys.length} keys stored`)
  const withoutTtl: string[] = []
  for (const key of keys) if (await client.pttl(key) < 0) withoutTtl.push(key)
  t.same(withoutTtl, [], 'every key has a TTL')
}

test('with @fastify/redis registered, the plugin stores sessions in app.redis', async (t) => {
  const server = await startRedis(t)
  const admin = server.client()
  await once(admin, 'ready')
  const app = await buildApp(t, {}, async (instance) => {
    await instance.register(fastifyRedis, { url: server.url })
  })
  t.ok(app.pow.rawStore instanceof RedisStore, 'a RedisStore by default')
  const jar = await signIn(app, 1, { persistent: true })
  t.equal((await me(jar)).status, 200)
  const keys = await admin.keys('pow:*')
  t.ok(keys.some((k) => /^pow:\{[A-Za-z0-9_-]{4}\}:s:/.test(k)), 'a session key')
  t.ok(keys.some((k) => /^pow:\{[A-Za-z0-9_-]{4}\}:t:/.test(k)), 'a token key')
  t.ok(keys.some((k) => k.endsWith(':u:1')), 'the credentials key')
})

test('sessions survive an app restart with the same secret', async (t) => {
  const server = await startRedis(t)
  const first = server.client()
  await once(first, 'ready')
  const before = await buildApp(t, { store: new RedisStore(first) })
  const jar = await signIn(before, 1, { persistent: true })
  await before.close()
  t.equal(first.status, 'ready', 'the store never closes the client it was given')

  const second = server.client()
  await once(second, 'ready')
  const after = await buildApp(t, { store: new RedisStore(second) })
  const restarted = new CookieJar(after)
  restarted.cookies = jar.clone().cookies
  t.equal((await me(restarted)).status, 200)
  restarted.delete('pow_session')
  t.equal((await me(restarted)).status, 200, 'remember-me too')
})

test('the whole flow works on a Redis Cluster: no CROSSSLOT anywhere', async (t) => {
  const clock = fakeClock(t)
  const handle = await startCluster(t)
  const cluster = await handle.readyCluster()
  const app = await buildApp(t, { store: new RedisStore(cluster, { namespace: 'flow' }) })

  const users = await Promise.all([1, 2, 3, 4, 5, 6].map((id) => signIn(app, id, { persistent: true })))
  for (const jar of users) t.equal((await me(jar)).status, 200)
  const second = await signIn(app, 1)
  t.equal((await users[0].request('/sessions')).json().sessions.length, 2)
  t.equal((await users[0].request({ method: 'PATCH', url: '/me', payload: { name: 'renamed' } })).statusCode, 200)
  t.equal((await me(second)).user?.name, 'renamed')

  clock.tick(16 * 60_000)
  const renewed = await users[1].request('/me')
  t.equal(renewed.statusCode, 200)
  t.equal(renewed.cookies.filter((c) => c.name === 'pow_session').length, 1, 'renewed')

  users[2].delete('pow_session')
  const remembered = await users[2].request('/me')
  t.equal(remembered.statusCode, 200, 'remember-me sign-in')

  t.equal((await users[0].request({ method: 'DELETE', url: '/sessions' })).statusCode, 200)
  t.equal((await me(second)).status, 401, 'revoked')
  t.same((await app.pow.credentials.users()).map((u) => (u as { id: number }).id).sort(), [1, 2, 3, 4, 5, 6])

  t.equal((await users[3].request({ method: 'POST', url: '/logout' })).statusCode, 204)
  t.equal((await me(users[3])).status, 401)
  await assertAllKeysExpire(t, cluster, 'flow')
})

test('no key without a TTL on a single Redis after every kind of write', async (t) => {
  const clock = fakeClock(t)
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const app = await buildApp(t, { store: new RedisStore(client, { namespace: 'ttl' }) })
  const a = await signIn(app, 1, { persistent: true })
  const b = await signIn(app, 1, { persistent: true })
  await a.request({ method: 'PATCH', url: '/me', payload: { name: 'x' } })
  clock.tick(16 * 60_000)
  await me(a)
  b.delete('pow_session')
  await me(b)
  await a.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent((await me(b)).fingerprint as string)}` })
  await signIn(app, 2)
  await assertAllKeysExpire(t, client, 'ttl')
})

test('a client with a keyPrefix works: every key, the scripts\' own included, carries the prefix', async (t) => {
  const server = await startRedis(t)
  const admin = server.client()
  await once(admin, 'ready')
  const app = await buildApp(t, {}, async (instance) => {
    await instance.register(fastifyRedis, { url: server.url, keyPrefix: 'myapp:' })
  })
  const jar = await signIn(app, 1, { persistent: true })
  t.equal((await me(jar)).status, 200, 'the session is found again')
  const other = await signIn(app, 1)
  t.equal((await jar.request('/sessions')).json().sessions.length, 2)
  t.same((await app.pow.credentials.users()).map((u) => (u as { id: number }).id), [1])
  await jar.request({ method: 'DELETE', url: '/sessions' })
  t.equal((await me(other)).status, 401)
  const keys = await admin.keys('*')
  t.ok(keys.length > 0)
  t.same(keys.filter((k) => !k.startsWith('myapp:pow:')), [], 'no key outside the prefix')
})

test('@fastify/redis with namespaces needs an explicit store', async (t) => {
  const server = await startRedis(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyRedis, { url: server.url, namespace: 'sessions' })
  app.register(pow, { secret: 'x'.repeat(32) })
  await t.rejects(async () => { await app.ready() }, { code: 'POW_ERR_OPTION', option: 'store' })
})

test('Redis holds no raw session id or token, only hashes', async (t) => {
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const app = await buildApp(t, { store: new RedisStore(client) })
  const jar = await signIn(app, 1, { persistent: true })
  const secrets = ['pow_session', 'pow_persistent_session'].map((name) => (jar.get(name) as string).split('.')[0])
  let dump = ''
  for (const key of await client.keys('*')) {
    const type = await client.type(key)
    const value = type === 'string' ? await client.get(key) : type === 'hash' ? await client.hgetall(key) : await client.zrange(key, '0', '-1')
    dump += key + JSON.stringify(value)
  }
  t.ok(dump.length > 0)
  for (const secret of secrets) {
    t.notOk(dump.includes(secret), 'the raw value is nowhere')
    t.notOk(dump.includes(secret.slice(4)), 'not even without its bucket')
  }
})
