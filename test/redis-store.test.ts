import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { hashToken, randomToken, userBucket } from '../lib/crypto.js'
import { RedisStore, type SessionRecord } from '../lib/index.js'
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
  t.throws(() => new RedisStore(fake, { commandTimeout: 2 ** 31 }), /commandTimeout.*at most 2147483647/, 'longer than a Node.js timer can wait')
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

test('a session stored without the marks field (by an older version) reads its marks from their own fields', async (t) => {
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const store = new RedisStore(client)
  const userKey = 'old-marks'
  const record = (insertedAt: number): SessionRecord => ({ userKey, fingerprint: 'fp', insertedAt, signedInAt: insertedAt, metadata: {} })
  const first = hashToken(randomToken(userBucket(userKey)))
  const second = hashToken(randomToken(userBucket(userKey)))
  const now = Date.now()
  await store.putSession(first, record(now), { id: 8 }, 60_000, 1000)
  // A renewal: the first session is retired and unclaimed, the second unread.
  t.ok(await store.putSession(second, record(now + 1), undefined, 60_000, 1000, { session: first }))
  const key = (hash: string): string => `pow:{${userBucket(userKey)}}:s:${hash.slice(5)}`
  t.match(await client.hget(key(first), 'm'), /^1,\d+,,$/, 'the marks field: retired, unclaimed since')
  t.equal(await client.hget(key(second), 'm'), ',,1,', 'the marks field: unread')
  const expected = await store.getSession(first)
  t.equal(expected?.retired, true)
  t.type(expected?.unclaimedSince, 'number')

  t.equal(await client.hdel(key(first), 'm'), 1, 'the field removed, as an older version wrote the hash')
  t.same(await store.getSession(first), expected, 'the same session read back from x, n, p and sup')
  await client.hdel(key(second), 'm')
  const replacement = await store.getSession(second)
  t.equal(replacement?.retired, false, 'the replacement reads as live')
  // Its first read claimed it (sent without waiting): the retired one lives out the grace now.
  await sleep(50)
  t.same(await client.hget(key(first), 'm'), '1,,,', 'the claim rewrote the marks field of the retired session')
  t.equal(await client.hget(key(second), 'm'), '', 'and of the replacement: no marks left')
  t.ok(await client.pttl(key(first)) <= 1000, 'the retired session is cut to the grace')
})

test('commandTimeout: one timer fails each stalled command at its own deadline; answers in time are kept', async (t) => {
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const store = new RedisStore(client, { commandTimeout: 200 })
  const userKey = 'timer'
  const sidHash = hashToken(randomToken(userBucket(userKey)))
  const now = Date.now()
  await store.putSession(sidHash, { userKey, fingerprint: 'fp', insertedAt: now, signedInAt: now, metadata: {} }, { id: 9 }, 60_000, 1000)
  t.same((await store.getSession(sidHash))?.user, { id: 9 }, 'answered in time')

  await server.pause(500)
  const started = performance.now()
  const settled = async (delay: number): Promise<{ error: string, after: number }> => {
    await sleep(delay)
    const sent = performance.now()
    return await store.getSession(sidHash).then(
      () => ({ error: 'answered', after: performance.now() - sent }),
      (err: Error) => ({ error: err.message, after: performance.now() - sent }))
  }
  // Three commands sent 0, 50 and 100 ms into the stall: each fails 200 ms after it was sent.
  const results = await Promise.all([settled(0), settled(50), settled(100)])
  for (const [i, { error, after }] of results.entries()) {
    t.match(error, /timed out after 200 ms/, `command ${i + 1} timed out`)
    t.ok(after >= 195 && after < 280, `command ${i + 1} failed ${Math.round(after)} ms after it was sent, at its own deadline`)
  }
  // Past the stall, the late answers to the failed commands change nothing; new commands answer.
  await sleep(Math.max(0, 550 - (performance.now() - started)))
  t.same((await store.getSession(sidHash))?.user, { id: 9 }, 'answered again after the stall')

  // Many commands in flight, a stall in their midst: those answered before it keep their answer,
  // the others fail at their own deadlines (past a thousand answered ones at the head of the queue).
  const outcomes: Array<Promise<{ ok: boolean, after: number }>> = []
  for (let i = 0; i < 3000; i++) {
    if (i === 1500) await server.pause(400)
    const sent = performance.now()
    outcomes.push(store.getSession(sidHash).then(
      (found) => ({ ok: found !== null, after: performance.now() - sent }),
      () => ({ ok: false, after: performance.now() - sent })))
  }
  const settledAll = await Promise.all(outcomes)
  const answered = settledAll.filter((o) => o.ok).length
  t.ok(answered >= 1000 && answered < 3000, `${answered} of 3000 answered, the rest timed out in the stall`)
  const late = settledAll.filter((o) => o.after > 300)
  t.same(late, [], 'none settled later than its deadline and a margin')
})
