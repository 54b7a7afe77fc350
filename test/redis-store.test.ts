import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { hashToken, randomToken, userBucket } from '../lib/crypto.js'
import { RedisStore } from '../lib/index.js'
import { startCluster, startRedis } from './helpers/redis.js'
import { storeContract } from './store-contract.js'

let namespaces = 0

test('RedisStore passes the store contract on a single Redis', async (t) => {
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  storeContract(t, async () => ({
    // A namespace per subtest: the subtests share the server, never their keys.
    store: new RedisStore(client, { namespace: `contract${++namespaces}` }),
    advance: async (ms) => { await sleep(ms) },
    close: async () => {}
  }))
})

test('RedisStore passes the store contract on a 3-master Redis Cluster', async (t) => {
  const handle = await startCluster(t)
  const cluster = await handle.readyCluster()
  storeContract(t, async () => ({
    store: new RedisStore(cluster, { namespace: `contract${++namespaces}` }),
    advance: async (ms) => { await sleep(ms) },
    close: async () => {}
  }))
})

test('RedisStore rejects bad arguments', async (t) => {
  t.throws(() => new RedisStore({} as never), /needs an ioredis client/)
  const fake = { evalsha: () => {} } as never
  t.throws(() => new RedisStore(fake, { namespace: 'a*b' }), /namespace/)
  t.throws(() => new RedisStore(fake, { commandTimeout: 0 }), /commandTimeout/)
  t.throws(() => new RedisStore(fake, { commandTimeout: Infinity }), /commandTimeout/)
})

test('a session stored without a copy of the credentials (by an older version) reads them from the user key', async (t) => {
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const store = new RedisStore(client)
  const userKey = 'old-format'
  const sidHash = hashToken(randomToken(userBucket(userKey)))
  const now = Date.now()
  await store.putSession(sidHash, { userKey, fingerprint: 'fp', insertedAt: now, signedInAt: now, metadata: {} }, { id: 7 }, 60_000, 1000)
  const key = `pow:{${userBucket(userKey)}}:s:${sidHash.slice(5)}`
  t.equal(await client.hdel(key, 'user'), 1, 'the copy removed, as an older version wrote it')
  t.same((await store.getSession(sidHash))?.user, { id: 7 }, 'the user comes from the credentials key')
  await client.del(`pow:{${userBucket(userKey)}}:u:${userKey}`)
  t.equal(await store.getSession(sidHash), null, 'and without either it is no session')
})
