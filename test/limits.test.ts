import { fork } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { test } from 'tap'
import { RedisStore } from '../lib/index.js'
import { buildApp, me, signIn } from './helpers/app.js'
import { startRedis } from './helpers/redis.js'

const MAX_DEVICES = 100

/** The p99 of `n` sequential runs of `run`, in ms. */
async function p99 (n: number, run: () => Promise<void>): Promise<number> {
  const times: number[] = []
  for (let i = 0; i < n; i++) {
    const started = performance.now()
    await run()
    times.push(performance.now() - started)
  }
  times.sort((a, b) => a - b)
  return times[Math.floor(times.length * 0.99)]
}

// How the flood was found: one account's many sessions made every login's script scan them
// all, and the scripts blocked Redis for every other user. Now a user has at most maxDevices
// devices and a sign-in touches its own device, the user's index and the least recently used.
test('one account signing in at maxDevices from 8 connections does not slow another user on Redis', async (t) => {
  const server = await startRedis(t)
  const admin = server.client()
  await admin.config('SET', 'slowlog-log-slower-than', '1000')
  await admin.slowlog('RESET')
  const client = server.client()
  const app = await buildApp(t, { store: new RedisStore(client), maxDevices: MAX_DEVICES })
  const other = await signIn(app, 2)
  const get = async (): Promise<void> => {
    const { status } = await me(other)
    if (status !== 200) throw new Error(`the other user's GET answered ${status}`)
  }
  await p99(200, get)
  const idle = await p99(1000, get)

  const load = fork(path.join(import.meta.dirname, 'helpers', 'login-load.ts'), [], {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, REDIS_PORT: String(server.port), LOAD_USER: '1', LOAD_CONCURRENCY: '8', LOAD_MAX_DEVICES: String(MAX_DEVICES) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  t.teardown(() => { load.kill() })
  const [ready] = await once(load, 'message')
  t.equal(ready, 'ready', 'the user has maxDevices devices')
  const devices = await new RedisStore(client).list('1')
  t.equal(devices.length, MAX_DEVICES, 'and no more')

  const started = performance.now()
  let loaded = 0
  const times: number[] = []
  while (performance.now() - started < 10_000) {
    const at = performance.now()
    await get()
    times.push(performance.now() - at)
    loaded++
  }
  load.send('stop')
  const [{ logins }] = await once(load, 'message') as [{ logins: number }]
  times.sort((a, b) => a - b)
  const busy = times[Math.floor(times.length * 0.99)]
  t.ok(logins > 100, `the load signed in ${logins} times in 10 s`)
  t.ok(busy <= 3 * idle, `the other user's GET: p99 ${busy.toFixed(2)} ms under load, ${idle.toFixed(2)} ms idle (${loaded} requests)`)
  t.equal((await new RedisStore(client).list('1')).length, MAX_DEVICES, 'still maxDevices devices')
  const slow = (await admin.slowlog('GET', 128) as Array<[number, number, number, string[]]>)
    .filter(([, , , command]) => /^eval/i.test(command[0]))
  t.same(slow.map(([, , micros, command]) => `${command[0]} ${micros} µs`), [], 'no script a request runs took 1 ms')
})
