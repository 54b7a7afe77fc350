import { once } from 'node:events'
import fastifyRedis from '@fastify/redis'
import type { Cluster, Redis } from 'ioredis'
import { test, type Test } from 'tap'
import Fastify from 'fastify'
import { hashSecret, userBucket } from '../lib/crypto.js'
import pow, { RedisStore } from '../lib/index.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { startCluster, startRedis } from './helpers/redis.js'

const SESSION = 'pow_session'
const TOKEN = 'pow_persistent_session'

/** Every key under the prefix, from every master. */
async function keysOf (client: Redis | Cluster, prefix: string): Promise<string[]> {
  const nodes = (client as Cluster).isCluster ? (client as Cluster).nodes('master') : [client as Redis]
  const keys: string[] = []
  for (const node of nodes) keys.push(...await node.keys(`${prefix}:*`))
  return keys.sort()
}

/** The secret a signed cookie value holds (what the device keeps the SHA-256 of). */
function secretOf (jar: CookieJar, name: string): string {
  return (jar.get(name) as string).split('.')[0] as string
}

/**
 * Checks every key under `<keyPrefix><namespace>:` against the layout at the top of
 * lib/stores/redis.ts, and returns the keys by user key:
 *   - `P d:<fingerprint>`: a hash of exactly data, user, v, u, whose bucket is that of u, whose
 *     record is stored without its fingerprint, and whose fingerprint is in the user's index;
 *   - `P ud:<userKey>` and `P ux:<userKey>`: zsets (by use, by expiry);
 * with P = `<namespace>:{<bucket>}:`. Nothing else: no lock key, no key per secret. Every key
 * has a TTL: nothing outlives the devices it is about.
 * `client` reads without a keyPrefix of its own: the keys are named as Redis holds them.
 */
async function assertLayout (t: Test, client: Redis | Cluster, fullPrefix: string): Promise<Map<string, string[]>> {
  const keys = await keysOf(client, fullPrefix)
  t.ok(keys.length > 0, `${keys.length} keys stored`)
  const escaped = fullPrefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const shape = new RegExp(`^${escaped}:\\{([A-Za-z0-9_-]{4})\\}:(?:d:([A-Za-z0-9_-]{22})|u[dx]:(.+))$`)
  const byUser = new Map<string, string[]>()
  const problems: string[] = []
  const withoutTtl: string[] = []
  for (const key of keys) {
    const match = shape.exec(key)
    if (match === null) {
      problems.push(`${key}: not a device hash or a user's index`)
      continue
    }
    const [, bucket, fingerprint, indexOf] = match as unknown as [string, string, string | undefined, string | undefined]
    if (await client.pttl(key) <= 0) withoutTtl.push(key)
    let userKey: string
    if (fingerprint !== undefined) {
      if (await client.type(key) !== 'hash') problems.push(`${key}: not a hash`)
      const fields = await client.hgetall(key)
      if (Object.keys(fields).sort().join() !== 'data,u,user,v') problems.push(`${key}: fields ${Object.keys(fields).sort().join()}`)
      userKey = fields.u as string
      if (!/^[1-9]\d*$/.test(fields.v ?? '')) problems.push(`${key}: version ${fields.v}`)
      const record = JSON.parse(fields.data as string) as Record<string, unknown>
      if ('fingerprint' in record) problems.push(`${key}: the record repeats its fingerprint`)
      if (record.userKey !== userKey) problems.push(`${key}: the record's user ${String(record.userKey)} is not u ${userKey}`)
      if (await client.zscore(`${fullPrefix}:{${bucket}}:ud:${userKey}`, fingerprint) === null) problems.push(`${key}: not in its user's index`)
      if (await client.zscore(`${fullPrefix}:{${bucket}}:ux:${userKey}`, fingerprint) === null) problems.push(`${key}: not in its user's index by expiry`)
    } else {
      if (await client.type(key) !== 'zset') problems.push(`${key}: not a zset`)
      userKey = indexOf as string
    }
    if (userBucket(userKey) !== bucket) problems.push(`${key}: bucket ${bucket} is not that of user ${userKey}`)
    byUser.set(userKey, [...byUser.get(userKey) ?? [], key])
  }
  t.same(problems, [], 'every key is a device hash (data, user, v, u) or one of a user\'s two index zsets, in its user\'s bucket: no lock key, no key per secret')
  t.same(withoutTtl, [], 'every key has a TTL')
  return byUser
}

test('with @fastify/redis registered, the plugin stores devices in app.redis', async (t) => {
  const server = await startRedis(t)
  const admin = server.client()
  await once(admin, 'ready')
  const app = await buildApp(t, {}, async (instance) => {
    await instance.register(fastifyRedis, { url: server.url })
  })
  t.ok(app.pow.rawStore instanceof RedisStore, 'a RedisStore by default')
  const jar = await signIn(app, 1, { persistent: true })

  // The store speaks through app.redis, not a connection of its own.
  const appRedis = (app as unknown as { redis: Redis }).redis
  const sent: string[] = []
  const send = appRedis.sendCommand.bind(appRedis)
  appRedis.sendCommand = ((command: Parameters<Redis['sendCommand']>[0], stream?: Parameters<Redis['sendCommand']>[1]) => {
    sent.push(command.name)
    return send(command, stream)
  }) as Redis['sendCommand']
  const signedIn = await me(jar)
  t.equal(signedIn.status, 200)
  t.same(sent, ['hmget'], 'the authentication is one HMGET on app.redis')

  // One device: one hash, and the user's two indexes.
  const fingerprint = signedIn.fingerprint as string
  const P = `pow:{${userBucket('1')}}:`
  t.same(await admin.keys('pow:*').then((keys) => keys.sort()), [`${P}d:${fingerprint}`, `${P}ud:1`, `${P}ux:1`].sort(),
    'the device\'s hash and the user\'s indexes, nothing else')
  const device = await admin.hgetall(`${P}d:${fingerprint}`)
  t.same(Object.keys(device).sort(), ['data', 'u', 'user', 'v'], 'the device hash holds data, user, v and u')
  t.equal(device.u, '1', 'u: the user key')
  t.same(JSON.parse(device.user as string), { id: 1, name: 'user1' }, 'user: the credentials')
  t.equal(device.v, '1', 'v: 1 for a device written once (the sign-in; the authentication wrote nothing)')
  const record = JSON.parse(device.data as string)
  t.notOk('fingerprint' in record, 'the record leaves out its fingerprint: the key holds it')
  t.notOk('retired' in record, 'and its empty fields')
  t.equal(record.session.hash, hashSecret(secretOf(jar, SESSION)), 'it keeps the session id\'s SHA-256')
  t.equal(record.token.hash, hashSecret(secretOf(jar, TOKEN)), 'and the token\'s')
  t.same(await admin.zrange(`${P}ud:1`, '0', '-1'), [fingerprint], 'the index lists the device')
  await assertLayout(t, admin, 'pow')
})

test('sessions survive an app restart with the same secret', async (t) => {
  const server = await startRedis(t)
  const first = server.client()
  await once(first, 'ready')
  const before = await buildApp(t, { store: new RedisStore(first) })
  const jar = await signIn(before, 1, { persistent: true })
  await before.close()
  t.equal(first.status, 'ready', 'the store never closes the client it was given')
  t.equal(await first.ping(), 'PONG', 'which still answers')

  const second = server.client()
  await once(second, 'ready')
  const after = await buildApp(t, { store: new RedisStore(second) })
  const restarted = new CookieJar(after)
  restarted.cookies = jar.clone().cookies
  t.equal((await me(restarted)).status, 200)
  restarted.delete(SESSION)
  t.equal((await me(restarted)).status, 200, 'remember-me too')
})

test('the whole flow works on a Redis Cluster: no CROSSSLOT anywhere, and a user\'s keys share one slot', async (t) => {
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
  t.equal(renewed.cookies.filter((c) => c.name === SESSION).length, 1, 'renewed')
  t.equal((await me(users[1])).status, 200, 'the renewed id claims its device')

  users[2].delete(SESSION)
  const remembered = await users[2].request('/me')
  t.equal(remembered.statusCode, 200, 'remember-me sign-in')
  t.equal(remembered.cookies.filter((c) => c.name === TOKEN).length, 1, 'with a rotated token')

  // A browser signed in as user 5 signs in as user 4: two users' slots, one commit each.
  const switched = await users[4].request({ method: 'POST', url: '/login', payload: { id: 4 } })
  t.equal(switched.statusCode, 200, 'a browser switches users')
  t.equal((await me(users[4])).user?.id, 4)

  t.equal((await users[0].request({ method: 'DELETE', url: '/sessions' })).statusCode, 200)
  t.equal((await me(second)).status, 401, 'revoked')
  const third = await signIn(app, 1)
  const thirdFingerprint = (await me(third)).fingerprint as string
  t.equal((await users[0].request({ method: 'DELETE', url: `/sessions/${thirdFingerprint}` })).statusCode, 204)
  t.equal((await me(third)).status, 401, 'one device revoked')
  t.same((await app.pow.credentials.users()).map((u) => (u as { id: number }).id).sort(), [1, 2, 3, 4, 5, 6].filter((id) => id !== 5),
    'users() finds every user with a device, on every master (user 5\'s only browser switched to user 4)')

  t.equal((await users[3].request({ method: 'POST', url: '/logout' })).statusCode, 204)
  t.equal((await me(users[3])).status, 401)

  const byUser = await assertLayout(t, cluster, 'flow')
  const slotsOf = async (keys: string[]): Promise<Set<number>> =>
    new Set(await Promise.all(keys.map(async (key) => Number(await cluster.cluster('KEYSLOT', key)))))
  const spread: Record<string, number> = {}
  for (const [userKey, keys] of byUser) spread[userKey] = (await slotsOf(keys)).size
  t.same(spread, Object.fromEntries([...byUser.keys()].map((userKey) => [userKey, 1])), 'every key of a user is in one slot')
  const nodes = await Promise.all(cluster.nodes('master').map(async (node) => (await node.keys('flow:*')).length))
  t.ok(nodes.filter((n) => n > 0).length >= 2, `the users are spread over the masters (${nodes.join(', ')} keys): the flow crossed nodes`)
})

test('no key without a TTL on a single Redis after every kind of write', async (t) => {
  const clock = fakeClock(t)
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const app = await buildApp(t, { store: new RedisStore(client, { namespace: 'ttl' }) })
  const a = await signIn(app, 1, { persistent: true })
  const b = await signIn(app, 1, { persistent: true })
  const c = await signIn(app, 1)
  await a.request({ method: 'PATCH', url: '/me', payload: { name: 'x' } })
  clock.tick(16 * 60_000)
  t.equal((await me(a)).status, 200, 'a renewal')
  t.equal((await me(a)).status, 200, 'its claim')
  b.delete(SESSION)
  t.equal((await me(b)).status, 200, 'a remember-me sign-in')
  t.equal((await a.request({ method: 'DELETE', url: `/sessions/${encodeURIComponent((await me(b)).fingerprint as string)}` })).statusCode, 204, 'a revocation')
  t.equal((await c.request({ method: 'POST', url: '/login', payload: { id: 2 } })).statusCode, 200, 'a browser switching users')
  await signIn(app, 3)
  const d = await signIn(app, 3)
  t.equal((await d.request({ method: 'POST', url: '/logout' })).statusCode, 204, 'a sign-out')
  const byUser = await assertLayout(t, client, 'ttl')
  t.same([...byUser.keys()].sort(), ['1', '2', '3'], 'each user with devices')
})

test('a client with a keyPrefix works: every key, the scripts\' own included, carries the prefix', async (t) => {
  const server = await startRedis(t)
  const admin = server.client()
  await once(admin, 'ready')
  const app = await buildApp(t, {}, async (instance) => {
    await instance.register(fastifyRedis, { url: server.url, keyPrefix: 'myapp:' })
  })
  const jar = await signIn(app, 1, { persistent: true })
  t.equal((await me(jar)).status, 200, 'the device is found again')
  const other = await signIn(app, 1)
  const otherFingerprint = (await me(other)).fingerprint
  t.equal((await jar.request('/sessions')).json().sessions.length, 2, 'the list script finds both devices from the prefix it builds')
  t.same((await app.pow.credentials.users()).map((u) => (u as { id: number }).id), [1])
  t.same((await jar.request({ method: 'DELETE', url: '/sessions' })).json().revoked, [otherFingerprint], 'the commit finds the device it deletes')
  t.equal((await me(other)).status, 401)
  const keys = await admin.keys('*')
  t.same(keys.filter((k) => !k.startsWith('myapp:pow:')), [], 'no key outside the prefix')
  const P = `myapp:pow:{${userBucket('1')}}:`
  t.same(keys.sort(), [`${P}d:${(await me(jar)).fingerprint as string}`, `${P}ud:1`, `${P}ux:1`].sort(), 'the revoked device\'s hash is gone: the scripts delete prefixed keys')
  await assertLayout(t, admin, 'myapp:pow')
})

test('@fastify/redis with namespaces needs an explicit store', async (t) => {
  const server = await startRedis(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyRedis, { url: server.url, namespace: 'sessions' })
  app.register(pow, { secret: 'x'.repeat(32) })
  await t.rejects(async () => { await app.ready() }, { code: 'POW_ERR_OPTION', option: 'store' })
})

test('Redis holds no raw session id or token, only their hashes', async (t) => {
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const app = await buildApp(t, { store: new RedisStore(client) })
  const jar = await signIn(app, 1, { persistent: true })
  const secrets = [SESSION, TOKEN].map((name) => secretOf(jar, name))
  t.same(secrets.map((s) => s.length), [69, 69], 'secrets are bucket, fingerprint and 256 random bits')
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
    t.notOk(dump.includes(secret.slice(26)), 'nor its random part alone')
    t.ok(dump.includes(hashSecret(secret)), 'its SHA-256 is stored')
  }
})
