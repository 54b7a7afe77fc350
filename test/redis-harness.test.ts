import { once } from 'node:events'
import { test } from 'tap'
import { startRedis, startCluster } from './helpers/redis.js'

test('startRedis: a private server on a free port, with a working client', async (t) => {
  const server = await startRedis(t)
  t.not(server.port, 6379, 'never the shared Redis port')
  t.equal(server.url, `redis://127.0.0.1:${server.port}`)

  const client = server.client()
  t.equal(await client.set('greeting', 'hello'), 'OK')
  t.equal(await client.get('greeting'), 'hello')
  t.equal(await server.dbsize(), 1, 'the admin connection sees the same database')

  const info = await server.info('server')
  t.match(info, new RegExp(`tcp_port:${server.port}\\r?\\n`), 'INFO reports our port')
})

test('startRedis: two servers are independent', async (t) => {
  const [a, b] = await Promise.all([startRedis(t), startRedis(t)])
  t.not(a.port, b.port)
  await a.client().set('only-in-a', '1')
  t.equal(await b.client().get('only-in-a'), null)
  t.equal(await b.dbsize(), 0)
})

test('startRedis with persistence: data survives stop() and start()', async (t) => {
  const server = await startRedis(t, { persistence: true })
  t.equal(await server.client().set('kept', 'value'), 'OK')

  // Without the offline queue, a command fails at once instead of waiting for a reconnect.
  const probe = server.client({ enableOfflineQueue: false, maxRetriesPerRequest: 0 })
  await once(probe, 'ready')
  t.equal(await probe.get('kept'), 'value')

  await server.stop()
  await t.rejects(probe.get('kept'), 'a command fails while the server is stopped')

  await server.start()
  const fresh = server.client()
  t.equal(await fresh.get('kept'), 'value', 'the value was reloaded from the append-only file')
  t.equal(await server.dbsize(), 1)
  t.match(await server.info('persistence'), /aof_enabled:1/)
})

test('startRedis without persistence: stop() and start() lose the data', async (t) => {
  const server = await startRedis(t)
  await server.client().set('lost', 'value')
  await server.stop()
  await server.start()
  t.equal(await server.client().get('lost'), null)
  t.equal(await server.dbsize(), 0)
})

test('pause(): commands wait while the server is paused', async (t) => {
  const server = await startRedis(t)
  const client = server.client()
  await client.set('k', 'v')

  // Baseline: an unpaused command answers quickly.
  let started = performance.now()
  await client.get('k')
  t.ok(performance.now() - started < 200, 'unpaused GET is fast')

  started = performance.now()
  await server.pause(300)
  t.equal(await client.get('k'), 'v')
  const elapsed = performance.now() - started
  t.ok(elapsed >= 250, `GET during the pause waited ${elapsed.toFixed(0)} ms`)
})

test('startCluster: a real 3-master cluster', async (t) => {
  const handle = await startCluster(t)
  t.equal(handle.ports.length, 3)
  t.equal(new Set(handle.ports).size, 3)
  t.notOk(handle.ports.includes(6379))
  t.same(handle.nodes, handle.ports.map((port) => ({ host: '127.0.0.1', port })))

  const cluster = await handle.readyCluster()
  t.equal(cluster.status, 'ready')

  for (let i = 0; i < 100; i++) await cluster.set(`k${i}`, 'v')
  t.equal(await cluster.get('k42'), 'v')

  const masters = cluster.nodes('master')
  t.equal(masters.length, 3, 'three masters')
  const sizes = await Promise.all(masters.map((node) => node.dbsize()))
  t.equal(sizes.reduce((a, b) => a + b, 0), 100, 'every key is somewhere')
  for (const size of sizes) t.ok(size > 0, `a master holds ${size} keys`)

  const script = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return redis.call('GET', KEYS[2])"
  t.equal(await cluster.eval(script, 2, '{u1}:a', '{u1}:b', 'x'), 'x', 'keys with one hash tag share a slot')
  t.equal(await cluster.get('{u1}:a'), 'x')

  // k1 and k2 hash to slots 12706 and 449, on different masters.
  await t.rejects(cluster.eval(script, 2, 'k1', 'k2', 'x'), /^CROSSSLOT/, 'keys without a shared tag are refused')
})
