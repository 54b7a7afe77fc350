import { once } from 'node:events'
import fastifyRedis from '@fastify/redis'
import type { Cluster, Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { RedisStore } from '../lib/index.js'
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
