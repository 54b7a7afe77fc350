import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { install } from '@sinonjs/fake-timers'
import { test, type Test } from 'tap'
import { randomFingerprint, userBucket } from '../lib/crypto.js'
import { RedisStore } from '../lib/stores/redis.js'
import type { DeviceWrite } from '../lib/types.js'
import { readyClient, startCluster, startRedis, waitForClosed, waitForReady, type RedisServer } from './helpers/redis.js'
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

const USER = JSON.stringify({ id: 1, name: 'Ada' })

/** A device write as the lifecycle makes them: the record names the device, so reads can be told apart. */
function write (fingerprint: string, usedAt: number, fields: Partial<DeviceWrite> = {}): DeviceWrite {
  return { fingerprint, data: JSON.stringify({ device: fingerprint }), ttl: 60_000, usedAt, ...fields }
}

/** `count` new fingerprints. */
function fingerprints (count: number): string[] {
  return Array.from({ length: count }, () => randomFingerprint())
}

/** P in the key layout: `<namespace>:{<bucket>}:`. */
function prefixOf (userKey: string, namespace = 'pow'): string {
  return `${namespace}:{${userBucket(userKey)}}:`
}

interface Commands {
  /** Commands a client sent, each as [name, ...args], name in lower case. */
  sent: string[][]
  /** Commands a script ran. */
  scripted: string[][]
}

/**
 * The commands `server` ran while `run` ran, seen through MONITOR. A marker command sent from a
 * connection of its own after `run` ends the recording: MONITOR output comes in the server's
 * order, so everything before it is in.
 */
async function commandsDuring (t: Test, server: RedisServer, run: () => Promise<unknown>): Promise<Commands> {
  const markers = await readyClient(server)
  const monitor = await markers.monitor()
  t.teardown(() => monitor.disconnect())
  const marker = `end-of-recording-${randomFingerprint()}`
  const seen: Commands = { sent: [], scripted: [] }
  const ended = new Promise<void>((resolve) => {
    monitor.on('monitor', (_time: string, args: string[], source: string) => {
      const command = [args[0].toLowerCase(), ...args.slice(1)]
      if (command[0] === 'echo' && command[1] === marker) resolve()
      else (source === 'lua' ? seen.scripted : seen.sent).push(command)
    })
  })
  await run()
  await markers.echo(marker)
  await ended
  monitor.disconnect()
  markers.disconnect()
  return seen
}

test('the key layout: a hash per device, two zsets per user, all under the user\'s bucket', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client)
  const userKey = 'layout'
  const P = prefixOf(userKey)
  const [a, b] = fingerprints(2)
  t.same(await store.commit({ userKey, devices: [write(a, 100), write(b, 50)], user: USER }), { ok: true, evicted: [] })
  t.same(await client.hgetall(P + 'd:' + a), { data: JSON.stringify({ device: a }), user: USER, v: '1', u: userKey })
  t.same(await client.zrange(P + 'ud:' + userKey, '0', '-1', 'WITHSCORES'), [b, '50', a, '100'], 'fingerprints by usedAt')
  const serverSeconds = Number((await client.time())[0])
  const expiries = await client.zrange(P + 'ux:' + userKey, '0', '-1', 'WITHSCORES')
  t.same([expiries[0], expiries[2]].sort(), [a, b].sort(), 'and by expiry')
  for (const score of [expiries[1], expiries[3]]) {
    const left = Number(score) - serverSeconds * 1000
    t.ok(left > 50_000 && left <= 61_000, `an expiry on the server's clock, a ttl ahead: ${left} ms`)
  }
  await store.commit({ userKey, devices: [write(a, 200, { version: 1, data: '{"n":2}' })] })
  t.same(await client.hmget(P + 'd:' + a, 'data', 'v', 'user'), ['{"n":2}', '2', USER], 'a write bumps v and keeps the credentials')
  t.equal(await client.zscore(P + 'ud:' + userKey, a), '200')
  t.same((await client.keys('*')).sort(), [P + 'd:' + a, P + 'd:' + b, P + 'ud:' + userKey, P + 'ux:' + userKey].sort(), 'no other key')

  await store.commit({ userKey, devices: [write(a, 0, { data: null }), write(b, 0, { data: null })] })
  t.same(await client.keys('*'), [], 'deleting every device leaves no key')
})

test('a read is one HMGET and nothing else: no script, no write', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client)
  const userKey = 'reader'
  const bucket = userBucket(userKey)
  const [fp, missing] = fingerprints(2)
  await store.commit({ userKey, devices: [write(fp, 1)], user: USER })

  const dirty = async (): Promise<string> => /rdb_changes_since_last_save:(\d+)/.exec(await server.info('persistence'))![1]
  const before = await dirty()
  const seen = await commandsDuring(t, server, async () => {
    t.same(await store.read(bucket, fp), { data: JSON.stringify({ device: fp }), user: USER, version: 1 })
    t.equal(await store.read(bucket, missing), null, 'a missing device is null')
    t.equal(await store.read('no/t', fp), null, 'a bucket userBucket() cannot make is no device')
    t.equal(await store.read(bucket + 'x', fp), null)
  })
  t.same(seen.sent, [
    ['hmget', `pow:{${bucket}}:d:${fp}`, 'data', 'user', 'v'],
    ['hmget', `pow:{${bucket}}:d:${missing}`, 'data', 'user', 'v']
  ], 'one HMGET per read; none for a malformed bucket')
  t.same(seen.scripted, [], 'no script ran')
  t.equal(await dirty(), before, 'nothing was written')
})

test('a commit is one EVALSHA; a list is one EVALSHA; EVAL only when the server lost the script', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client)
  const userKey = 'writer'
  const [first, second, third] = fingerprints(3)

  const cold = await commandsDuring(t, server, () => store.commit({ userKey, devices: [write(first, 1, { version: 0 })], user: USER, limit: 10 }))
  t.same(cold.sent.map(([name]) => name), ['time', 'evalsha', 'eval'], 'the first write: the clock is measured, the script loaded')

  const warm = await commandsDuring(t, server, () => store.commit({ userKey, devices: [write(second, 2, { version: 0 })], user: USER, limit: 10 }))
  t.same(warm.sent.map(([name]) => name), ['evalsha'], 'then a commit is one EVALSHA')
  t.equal(warm.sent[0][2], '3', 'keys: the user\'s two indexes and the device written')
  t.same(warm.sent[0].slice(3, 6), [`pow:{${userBucket(userKey)}}:ud:${userKey}`, `pow:{${userBucket(userKey)}}:ux:${userKey}`, `pow:{${userBucket(userKey)}}:d:${second}`])

  const listed = await commandsDuring(t, server, async () => {
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [first, second])
  })
  t.same(listed.sent.map(([name]) => name), ['evalsha', 'eval'], 'the list script is loaded on its first use')
  const listedAgain = await commandsDuring(t, server, () => store.list(userKey))
  t.same(listedAgain.sent.map(([name]) => name), ['evalsha'], 'then a list is one EVALSHA')

  await client.script('FLUSH')
  const flushed = await commandsDuring(t, server, () => store.commit({ userKey, devices: [write(third, 3)], user: USER }))
  t.same(flushed.sent.map(([name]) => name), ['evalsha', 'eval'], 'after SCRIPT FLUSH, EVAL once')
  t.equal((await store.list(userKey)).length, 3)
})

test('every key of a user is in the user\'s cluster slot', async (t) => {
  const handle = await startCluster(t)
  const cluster = await handle.readyCluster()
  const store = new RedisStore(cluster)
  const users = Array.from({ length: 12 }, (_, i) => `slot-user-${i}`)
  for (const userKey of users) {
    const devices = fingerprints(4)
    t.same((await store.commit({ userKey, devices: devices.map((fp, i) => write(fp, i)), user: USER })).ok, true)
    // Keys the scripts build themselves: the credentials copied to every device, an eviction.
    const changed = await store.commit({ userKey, devices: [write(randomFingerprint(), 10)], user: JSON.stringify({ id: userKey }), limit: 3 })
    t.same(changed.evicted, devices.slice(0, 2), 'the two least recently used devices evicted')
  }
  // Every key, found node by node.
  const byNode = await Promise.all(cluster.nodes('master').map(async (node) => await node.keys('pow:*')))
  const all = byNode.flat()
  t.equal(all.length, users.length * 5, 'three devices and two indexes per user')
  for (const userKey of users) {
    const tag = `{${userBucket(userKey)}}`
    const mine = all.filter((key) => key.includes(tag))
    t.equal(mine.length, 5)
    t.equal(byNode.filter((keys) => keys.some((key) => key.includes(tag))).length, 1, `${userKey}: one node holds every key`)
    const slot = await cluster.cluster('KEYSLOT', tag)
    const slots = await Promise.all(mine.map(async (key) => await cluster.cluster('KEYSLOT', key)))
    t.same([...new Set(slots)], [slot], `${userKey}: every key in slot ${String(slot)}`)
  }
  t.ok(byNode.every((keys) => keys.length > 0), 'the users spread over the three masters')
  const listed = (await store.users()).map((user) => JSON.parse(user).id as string).sort()
  t.same(listed, [...users].sort(), 'users() finds every user on every master, once')
})

test('keys have TTLs: each device its write\'s ttl; the index the longest written', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client)
  const userKey = 'ttl'
  const P = prefixOf(userKey)
  const index = P + 'ud:' + userKey
  const [a, b, c, d] = fingerprints(4)

  await store.commit({ userKey, devices: [write(a, 1, { ttl: 60_000 })], user: USER })
  const ttlA = await client.pttl(P + 'd:' + a)
  t.ok(ttlA > 59_000 && ttlA <= 60_000, `the device: ${ttlA} ms`)
  t.ok(await client.pttl(index) > 59_000, 'the index: as long')

  await store.commit({ userKey, devices: [write(b, 2, { ttl: 5_000 })] })
  t.ok(await client.pttl(P + 'd:' + b) <= 5_000)
  t.ok(await client.pttl(index) > 59_000, 'a shorter device does not shorten the index')

  await store.commit({ userKey, devices: [write(c, 3, { ttl: 120_000.4 })] })
  const ttlC = await client.pttl(P + 'd:' + c)
  t.ok(ttlC > 119_000 && ttlC <= 120_001, `a fractional ttl is rounded up: ${ttlC} ms`)
  t.ok(await client.pttl(index) > 119_000, 'a longer device lengthens the index')

  await store.commit({ userKey, devices: [write(a, 4, { ttl: 1_000 })] })
  t.ok(await client.pttl(P + 'd:' + a) <= 1_000, 'a write sets the ttl it carries, shorter too')

  await store.commit({ userKey, devices: [write(d, 5, { ttl: 0 })] })
  await sleep(10)
  t.equal(await store.read(userBucket(userKey), d), null, 'a ttl of 0 is 1 ms: the device is gone at once')

  const keys = await client.keys('*')
  const ttls = await Promise.all(keys.map(async (key) => await client.pttl(key)))
  t.ok(ttls.every((ms) => ms > 0), 'no key without a TTL')
  await t.rejects(store.commit({ userKey, devices: [write(d, 6, { ttl: NaN })] }), TypeError, 'a NaN ttl is refused before anything is sent')
  await t.rejects(store.commit({ userKey, devices: [write(d, Infinity)] }), TypeError)
  await t.rejects(store.commit({ userKey, devices: [], limit: -1 }), TypeError)
})

test('the index is pruned of expired devices by list, by a limit and by new credentials', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client)

  t.test('list', async (t) => {
    const userKey = 'prune-list'
    const index = prefixOf(userKey) + 'ud:' + userKey
    const [short, long] = fingerprints(2)
    await store.commit({ userKey, devices: [write(short, 1, { ttl: 50 }), write(long, 2)], user: USER })
    await sleep(100)
    t.equal(await client.zcard(index), 2, 'the expired device\'s member is still there')
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [long], 'list leaves it out')
    t.same(await client.zrange(index, '0', '-1'), [long], 'and removes it')
  })

  t.test('a limit does not count expired devices', async (t) => {
    const userKey = 'prune-limit'
    const index = prefixOf(userKey) + 'ud:' + userKey
    const [b, c, expired, d] = fingerprints(4)
    // The expired device was used last: evicting by score alone would evict b, which is live.
    await store.commit({ userKey, devices: [write(b, 1), write(c, 2), write(expired, 10, { ttl: 50 })], user: USER })
    await sleep(100)
    const result = await store.commit({ userKey, devices: [write(d, 11)], limit: 3 })
    t.same(result, { ok: true, evicted: [] }, 'three live devices fit a limit of three')
    t.same(await client.zrange(index, '0', '-1'), [b, c, d])

    const e = randomFingerprint()
    await store.commit({ userKey, devices: [write(c, 1, { ttl: 50 })] })
    await sleep(100)
    t.same(await store.commit({ userKey, devices: [write(e, 12)], limit: 2 }), { ok: true, evicted: [b] },
      'evicted lists the live devices evicted only')
    t.same(await client.zrange(index, '0', '-1'), [d, e])
  })

  t.test('new credentials', async (t) => {
    const userKey = 'prune-user'
    const P = prefixOf(userKey)
    const index = P + 'ud:' + userKey
    const [gone, kept, last] = fingerprints(3)
    // The device used last expires: the credentials held are found on another one.
    await store.commit({ userKey, devices: [write(gone, 1, { ttl: 50 }), write(kept, 2), write(last, 3, { ttl: 50 })], user: USER })
    await sleep(100)
    const renamed = JSON.stringify({ id: 1, name: 'Ada L.' })
    await store.commit({ userKey, devices: [], user: renamed })
    t.same(await client.zrange(index, '0', '-1'), [kept], 'the expired devices left the index')
    t.equal(await client.hget(P + 'd:' + kept, 'user'), renamed)
    t.equal(await client.exists(P + 'd:' + gone, P + 'd:' + last), 0, 'and were not brought back')
  })
})

test('credentials are copied to every device only when they change', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client)
  const userKey = 'fifty'
  const P = prefixOf(userKey)
  const devices = fingerprints(50)
  await store.commit({ userKey, devices: devices.map((fp, i) => write(fp, i)), user: USER, limit: 100 })
  const userFields = async (): Promise<Array<string | null>> => await Promise.all(devices.map(async (fp) => await client.hget(P + 'd:' + fp, 'user')))
  t.same(new Set(await userFields()), new Set([USER]))

  const signIn = randomFingerprint()
  const same = await commandsDuring(t, server, () => store.commit({ userKey, devices: [write(signIn, 100, { version: 0 })], user: USER, limit: 100 }))
  const writes = same.scripted.filter(([name]) => name !== 'hget' && name !== 'zrange' && name !== 'time' && name !== 'zcard' && name !== 'pttl')
  t.same([...new Set(writes.map(([, key]) => key))].sort(), [P + 'd:' + signIn, P + 'ud:' + userKey, P + 'ux:' + userKey].sort(),
    'a sign-in with the credentials held writes its device and the indexes only')
  t.ok(same.scripted.length < 20, `and runs a handful of commands, not one per device (${same.scripted.length})`)
  t.equal(await client.hget(P + 'd:' + signIn, 'user'), USER)

  const renamed = JSON.stringify({ id: 1, name: 'Ada Lovelace' })
  const changed = await commandsDuring(t, server, () => store.commit({ userKey, devices: [write(devices[0], 101, { version: 1 })], user: renamed }))
  const copied = changed.scripted.filter(([name, , field]) => name === 'hset' && field === 'user').map(([, key]) => key)
  t.ok(devices.every((fp) => copied.includes(P + 'd:' + fp)), 'new credentials are copied to every device')
  t.same(new Set(await userFields()), new Set([renamed]))
  t.equal((await store.read(userBucket(userKey), signIn))?.user, renamed)
  t.same(new Set((await store.list(userKey)).map((d) => d.user)), new Set([renamed]))
})

test('a new device takes the credentials a sibling holds when the change carries none', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client)
  const userKey = 'sibling'
  const [first, second] = fingerprints(2)
  await store.commit({ userKey, devices: [write(first, 1)], user: USER })
  t.same((await store.commit({ userKey, devices: [write(second, 2)] })).ok, true)
  t.equal((await store.read(userBucket(userKey), second))?.user, USER)

  const lonely = 'no-devices'
  await t.rejects(store.commit({ userKey: lonely, devices: [write(first, 1)] }), /needs the user's credentials/,
    'no credentials anywhere: a programming error')
  t.same(await client.keys(prefixOf(lonely) + '*'), [], 'and nothing was written')
})

test('a client with a keyPrefix: every key carries it, the keys scripts build too', async (t) => {
  const server = await startRedis(t)
  // '[' and ']' are special in SCAN patterns: users() must escape them.
  const keyPrefix = 'app[1]:'
  const client = await readyClient(server, { keyPrefix })
  const raw = await readyClient(server)
  const store = new RedisStore(client)
  const userKey = 'prefixed'
  const [a, b, c] = fingerprints(3)
  await store.commit({ userKey, devices: [write(a, 1), write(b, 2)], user: USER })
  const renamed = JSON.stringify({ id: 2 })
  t.same(await store.commit({ userKey, devices: [write(c, 3)], user: renamed, limit: 2 }), { ok: true, evicted: [a] })
  const P = keyPrefix + prefixOf(userKey)
  t.same((await raw.keys('*')).sort(), [P + 'd:' + b, P + 'd:' + c, P + 'ud:' + userKey, P + 'ux:' + userKey].sort(),
    'the evicted device is gone; every key is prefixed')
  t.equal(await raw.hget(P + 'd:' + b, 'user'), renamed, 'the credentials were copied under the prefix')
  t.same((await store.list(userKey)).map((d) => d.fingerprint), [b, c])
  t.equal((await store.read(userBucket(userKey), c))?.user, renamed)
  t.same(await store.users(), [renamed], 'users() finds the prefixed keys, once per user')
  t.same(await new RedisStore(raw).users(), [], 'a store without the prefix sees none of them')
})

test('a write that reaches Redis past its deadline does nothing', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const userKey = 'late'
  const P = prefixOf(userKey)

  t.test('its caller timed out: the script runs after the stall and does nothing', async (t) => {
    const store = new RedisStore(client, { commandTimeout: 300 })
    const [warm, fp] = fingerprints(2)
    await store.commit({ userKey, devices: [write(warm, 1)], user: USER })
    await server.pause(1000)
    const started = performance.now()
    await t.rejects(store.commit({ userKey, devices: [write(fp, 2)], user: USER }), /timed out after 300 ms/)
    t.ok(performance.now() - started < 400, 'failed at the timeout, not at the end of the stall')
    await sleep(1000)
    t.equal(await client.exists(P + 'd:' + fp), 0, 'the device was never written')
    t.same(await client.zrange(P + 'ud:' + userKey, '0', '-1'), [warm], 'nor indexed')
  })

  t.test('its caller is still waiting: the store throws', async (t) => {
    const store = new RedisStore(client, { commandTimeout: 2000 })
    // The store measures the server's clock with TIME: told it is 10 s behind, it sends
    // deadlines already past on the server, as if the command had been delayed that long.
    const time = client.time.bind(client)
    client.time = (async () => {
      const [seconds, micros] = await time()
      return [String(Number(seconds) - 10), micros]
    }) as typeof client.time
    t.teardown(() => { client.time = time })
    const fp = randomFingerprint()
    await t.rejects(store.commit({ userKey, devices: [write(fp, 3)], user: USER }), /after its deadline; it did nothing/)
    t.equal(await client.exists(P + 'd:' + fp), 0, 'nothing written')
    t.equal(await store.read(userBucket(userKey), fp), null)
  })
})

test('a failing TIME (sent to any Cluster node, maybe a dead one) keeps the last clock offset and is asked again 5 s on; the first one must answer', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  t.teardown(() => client.disconnect())
  // The store times its clock checks with performance.now(), which fakeClock leaves alone.
  const clock = install({ toFake: ['performance'] })
  t.teardown(() => clock.uninstall())
  const store = new RedisStore(client)
  const time = client.time.bind(client)
  let asked = 0
  client.time = (async () => {
    asked++
    throw new Error('CLUSTERDOWN The cluster is down')
  }) as typeof client.time
  const userKey = 'time-user'
  const device = (fp: string): DeviceWrite => ({ fingerprint: fp, version: 0, data: '{}', ttl: 60_000, usedAt: Date.now() })
  await t.rejects(store.commit({ userKey, devices: [device(randomFingerprint())], user: '{}' }), 'no offset measured yet: the write cannot have a deadline')
  client.time = time
  t.ok((await store.commit({ userKey, devices: [device(randomFingerprint())], user: '{}' })).ok, 'measured')
  client.time = (async () => {
    asked++
    throw new Error('CLUSTERDOWN The cluster is down')
  }) as typeof client.time
  asked = 0
  clock.tick(61_000)
  t.ok((await store.commit({ userKey, devices: [device(randomFingerprint())], user: '{}' })).ok, 'due again, TIME fails: the write goes on with the last offset')
  t.ok((await store.commit({ userKey, devices: [device(randomFingerprint())], user: '{}' })).ok)
  t.equal(asked, 1, 'the writes right after it do not each wait for TIME')
  clock.tick(6_000)
  t.ok((await store.commit({ userKey, devices: [device(randomFingerprint())], user: '{}' })).ok)
  t.equal(asked, 2, 'asked again a few seconds on')
  client.time = time
  clock.tick(6_000)
  t.ok((await store.commit({ userKey, devices: [device(randomFingerprint())], user: '{}' })).ok)
  asked = 0
  client.time = (async () => { asked++; return await time() }) as typeof client.time
  t.ok((await store.commit({ userKey, devices: [device(randomFingerprint())], user: '{}' })).ok)
  t.equal(asked, 0, 'once it answered, the next check is a minute on')
  client.time = time
})

test('commands fail fast while the client is not connected, and work again once it is', async (t) => {
  const server = await startRedis(t)
  const client = await readyClient(server)
  const store = new RedisStore(client, { commandTimeout: 2000 })
  const userKey = 'outage'
  const fp = randomFingerprint()
  await store.commit({ userKey, devices: [write(fp, 1)], user: USER })
  await server.stop()
  await waitForClosed(client)
  const calls: Array<[string, () => Promise<unknown>]> = [
    ['read', () => store.read(userBucket(userKey), fp)],
    ['list', () => store.list(userKey)],
    ['commit', () => store.commit({ userKey, devices: [write(fp, 2)] })],
    ['users', () => store.users()]
  ]
  for (const [name, call] of calls) {
    const started = performance.now()
    await t.rejects(call(), /Redis connection is/, `${name} fails`)
    t.ok(performance.now() - started < 100, `${name} fails at once, not after the timeout`)
  }
  await server.start()
  await waitForReady(client)
  t.equal((await store.read(userBucket(userKey), fp)), null, 'the server lost its data (no persistence) and answers again')
  t.not(client.status, 'end', 'the store never closed the client')
})

test('commandTimeout: one timer fails each stalled command at its own deadline; answers in time are kept', async (t) => {
  const server = await startRedis(t)
  const client = server.client()
  await once(client, 'ready')
  const store = new RedisStore(client, { commandTimeout: 200 })
  const userKey = 'timer'
  const bucket = userBucket(userKey)
  const fp = randomFingerprint()
  await store.commit({ userKey, devices: [write(fp, 1)], user: USER })
  t.equal((await store.read(bucket, fp))?.user, USER, 'answered in time')

  await server.pause(500)
  const started = performance.now()
  const settled = async (delay: number): Promise<{ error: string, after: number }> => {
    await sleep(delay)
    const sent = performance.now()
    return await store.read(bucket, fp).then(
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
  t.equal((await store.read(bucket, fp))?.user, USER, 'answered again after the stall')

  // Many commands in flight, a stall in their midst: those answered before it keep their answer,
  // the others fail at their own deadlines (past a thousand answered ones at the head of the queue).
  const outcomes: Array<Promise<{ ok: boolean, after: number }>> = []
  for (let i = 0; i < 3000; i++) {
    if (i === 1500) await server.pause(400)
    const sent = performance.now()
    outcomes.push(store.read(bucket, fp).then(
      (found) => ({ ok: found !== null, after: performance.now() - sent }),
      () => ({ ok: false, after: performance.now() - sent })))
  }
  const settledAll = await Promise.all(outcomes)
  const answered = settledAll.filter((o) => o.ok).length
  t.ok(answered >= 1000 && answered < 3000, `${answered} of 3000 answered, the rest timed out in the stall`)
  const late = settledAll.filter((o) => o.after > 300)
  t.same(late, [], 'none settled later than its deadline and a margin')
})
