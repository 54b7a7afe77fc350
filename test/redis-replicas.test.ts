/**
 * RedisStore's `waitForReplicas`, against a real redis-server and a real replica of it
 * (test/helpers/redis.ts). A replica that stops answering is one suspended with SIGSTOP: its
 * connections stay open and unread, as when its machine freezes, so the master keeps sending and
 * `WAIT` is never answered.
 *
 * What a failover does with the writes a replica did not have is in
 * test/stress/cluster-replica-ack.test.ts (a real Redis Cluster, a master killed).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { randomFingerprint, userBucket } from '../lib/crypto.js'
import { RedisStore } from '../lib/index.js'
import type { DeviceWrite } from '../lib/types.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { assertUnavailable } from './helpers/outage.js'
import { parseInfo, readyClient, startRedis, type RedisServer } from './helpers/redis.js'
import { storeContract } from './store-contract.js'

const USER = JSON.stringify({ id: 1, name: 'Ada' })
const SESSION = { ttl: 60_000, renewAfter: 10_000, rotationGrace: 5_000 }

function write (fingerprint: string, fields: Partial<DeviceWrite> = {}): DeviceWrite {
  return { fingerprint, data: JSON.stringify({ device: fingerprint }), ttl: 60_000, usedAt: 1, ...fields }
}

/** A master and a replica whose link is up. */
async function replicated (t: Test): Promise<{ master: RedisServer, replica: RedisServer }> {
  const master = await startRedis(t)
  const replica = await startRedis(t, { replicaOf: master.port })
  const deadline = performance.now() + 10_000
  while (parseInfo(await replica.info('replication')).master_link_status !== 'up') {
    if (performance.now() > deadline) throw new Error('the replica did not connect to its master')
    await sleep(50)
  }
  // Unsuspended before the servers stop (stop() sends SIGCONT too; this keeps the order plain).
  t.teardown(() => { replica.resume() })
  return { master, replica }
}

/** A store outside an app: its write connection is closed when the test ends (an app's close does that). */
function closed (t: Test, store: RedisStore): RedisStore {
  t.teardown(async () => { await store.close() })
  return store
}

/** How many WAITs the server has run. */
async function waits (server: RedisServer): Promise<number> {
  const line = parseInfo(await server.info('commandstats')).cmdstat_wait
  return line === undefined ? 0 : Number(/calls=(\d+)/.exec(line)?.[1])
}

test('RedisStore with waitForReplicas passes the store contract on a Redis with a replica', async (t) => {
  const { master } = await replicated(t)
  const client = await readyClient(master)
  let namespaces = 0
  storeContract(t, async () => {
    const store = new RedisStore(client, { namespace: `contract${++namespaces}`, waitForReplicas: 1 })
    return { store, advance: async (ms) => { await sleep(ms) }, close: async () => { await store.close() } }
  })
})

test('RedisStore rejects bad waitForReplicas and replicaTimeout', async (t) => {
  const fake = { evalsha: () => {}, status: 'wait', on: () => {} } as never
  t.throws(() => new RedisStore(fake, { waitForReplicas: -1 }), /waitForReplicas must be a non-negative integer/)
  t.throws(() => new RedisStore(fake, { waitForReplicas: 1.5 }), /waitForReplicas/)
  t.throws(() => new RedisStore(fake, { replicaTimeout: 0 }), /replicaTimeout must be/)
  t.throws(() => new RedisStore(fake, { replicaTimeout: 2.5 }), /replicaTimeout/)
  t.throws(() => new RedisStore(fake, { commandTimeout: 500, waitForReplicas: 1, replicaTimeout: 251 }), /at most half of commandTimeout/)
  t.doesNotThrow(() => new RedisStore(fake, { commandTimeout: 100 }), 'the default replicaTimeout binds nothing without waitForReplicas')
  t.throws(() => new RedisStore(fake, { waitForReplicas: 1 }), /needs a client with pipeline\(\)/)
  t.doesNotThrow(() => new RedisStore(fake, { commandTimeout: 500, replicaTimeout: 250 }))
})

test('waitForReplicas: a write is done once the replica has it; a read waits for nothing', async (t) => {
  const { master, replica } = await replicated(t)
  const store = closed(t, new RedisStore(await readyClient(master), { waitForReplicas: 1 }))
  const fp = randomFingerprint()
  // The first write meets NOSCRIPT and is sent again with EVAL (and its WAIT with it).
  await store.commit({ userKey: 'ada', devices: [write(randomFingerprint())], user: USER })
  const before = await waits(master)
  t.same(await store.commit({ userKey: 'ada', devices: [write(fp)], user: USER }), { ok: true, evicted: [] })
  t.equal(await waits(master), before + 1, 'the commit sent one WAIT')
  const onReplica = await readyClient(replica)
  t.equal(await onReplica.exists(`pow:{${userBucket('ada')}}:d:${fp}`), 1, 'the replica has the device when commit resolves')
  t.ok(await store.read(userBucket('ada'), fp))
  await store.list('ada')
  t.equal(await waits(master), before + 1, 'read and list sent none')
})

test('waitForReplicas: a write the replica does not acknowledge in replicaTimeout fails; the master has it', async (t) => {
  const { master, replica } = await replicated(t)
  const client = await readyClient(master)
  const waiting = closed(t, new RedisStore(client, { waitForReplicas: 1, replicaTimeout: 100 }))
  const plain = new RedisStore(client)
  const [kept, first, second, third] = [randomFingerprint(), randomFingerprint(), randomFingerprint(), randomFingerprint()]
  await waiting.commit({ userKey: 'ada', devices: [write(kept)], user: USER })

  replica.suspend()
  const started = performance.now()
  await t.rejects(waiting.commit({ userKey: 'ada', devices: [write(first)] }),
    /0 of the 1 replicas asked for acknowledged a write within 100 ms/)
  const ms = performance.now() - started
  t.ok(ms >= 90 && ms < 1000, `it failed after replicaTimeout (${ms.toFixed(0)} ms)`)
  t.ok(await waiting.read(userBucket('ada'), first), 'the master has the write it could not confirm')
  t.same(await waiting.commit({ userKey: 'ada', devices: [write(kept, { version: 99 })] }), { ok: false, evicted: [] },
    'a refused write (nothing written) is no failure')
  t.same(await plain.commit({ userKey: 'ada', devices: [write(second)] }), { ok: true, evicted: [] },
    'without waitForReplicas the same write is done at once')

  replica.resume()
  t.same(await waiting.commit({ userKey: 'ada', devices: [write(third)] }), { ok: true, evicted: [] }, 'the replica back, writes are done again')
})

test('waitForReplicas: writes wait on a connection of their own, so reads are not held up; close() closes it', async (t) => {
  const { master, replica } = await replicated(t)
  const client = await readyClient(master)
  const admin = await readyClient(master)
  const connections = async (): Promise<number> => String(await admin.client('LIST')).trim().split('\n').length
  const before = await connections()
  const store = new RedisStore(client, { waitForReplicas: 1, replicaTimeout: 200 })
  const fp = randomFingerprint()
  await store.commit({ userKey: 'ada', devices: [write(fp)], user: USER })
  t.equal(await connections(), before + 1, 'one connection more, for writes')

  replica.suspend()
  const started = performance.now()
  // Five WAITs of 200 ms, one after the other on the write connection.
  const writes = Array.from({ length: 5 }, async () => await store.commit({ userKey: 'ada', devices: [write(randomFingerprint())] }).then(() => 'done', () => 'failed'))
  await sleep(50)
  const read = await store.read(userBucket('ada'), fp)
  const readMs = performance.now() - started
  t.ok(read, 'the read answers')
  t.same(await Promise.all(writes), Array(5).fill('failed'), 'the writes all fail')
  const writesMs = performance.now() - started
  t.ok(readMs < writesMs / 2, `the read answered at ${readMs.toFixed(0)} ms, not behind the writes (done at ${writesMs.toFixed(0)} ms)`)
  replica.resume()

  await store.close()
  const deadline = performance.now() + 5000
  while (await connections() !== before && performance.now() < deadline) await sleep(20)
  t.equal(await connections(), before, 'close() closed the write connection')
  t.equal(await client.ping(), 'PONG', 'and left the client it was given alone')
})

test('waitForReplicas: a server without a replica fails every write', async (t) => {
  const server = await startRedis(t)
  const store = closed(t, new RedisStore(await readyClient(server), { waitForReplicas: 1, replicaTimeout: 20 }))
  await t.rejects(store.commit({ userKey: 'ada', devices: [write(randomFingerprint())], user: USER }), /0 of the 1 replicas/)
})

test('waitForReplicas in an app: while the replica does not answer, a sign-in answers 503, a renewal is deferred, and both work once it answers', async (t) => {
  const clock = fakeClock(t)
  const { master, replica } = await replicated(t)
  const store = new RedisStore(await readyClient(master), { waitForReplicas: 1, replicaTimeout: 50 })
  const app = await buildApp(t, { store, session: SESSION })
  const jar = await signIn(app, 1)
  const cookies = jar.header()

  replica.suspend()
  const other = new CookieJar(app)
  const login = await other.request({ method: 'POST', url: '/login', payload: { id: 2 } })
  assertUnavailable(t, login, 'a sign-in the replica did not acknowledge')

  clock.tick(SESSION.renewAfter)
  const renewal = await jar.request({ url: '/me' })
  t.equal(renewal.statusCode, 200, 'a renewal the replica did not acknowledge still serves the request')
  t.same(renewal.json().user, { id: 1, name: 'user1' })
  t.equal(renewal.headers['set-cookie'], undefined, 'with the id as read: no cookie changes')
  t.equal(jar.header(), cookies)

  replica.resume()
  clock.tick(SESSION.rotationGrace + 1)
  const later = await jar.request({ url: '/me' })
  t.equal(later.statusCode, 200, 'the replica back, a later request is signed in')
  t.match(String(later.headers['set-cookie']), /pow_session=/, 'and gets the renewed session id')
  t.not(jar.header(), cookies)
  t.equal((await me(jar)).status, 200, 'which works')
  const again = await other.request({ method: 'POST', url: '/login', payload: { id: 2 } })
  t.equal(again.statusCode, 200, 'and the sign-in that failed works')
  t.equal((await me(other)).status, 200)
})
