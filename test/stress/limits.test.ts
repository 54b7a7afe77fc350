import { fork } from 'node:child_process'
import { once } from 'node:events'
import { setPriority } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { RedisStore } from '../../lib/index.js'
import { buildApp, me, signIn } from '../helpers/app.js'
import { startRedis } from '../helpers/redis.js'

const MAX_DEVICES = 100

// The measured user's requests come one every few ms, as a user's do, rather than back to back:
// the measuring process then leaves Redis a core of its own on a 2-core machine, and what moves
// the latency is Redis, not the measuring process's own queue.
const PACE_MS = 4

/** The p99 of `run`'s time, run one at a time every PACE_MS for `ms` (or `n` times). */
async function p99 (limit: { ms?: number, n?: number }, run: () => Promise<void>): Promise<{ p99: number, count: number }> {
  const times: number[] = []
  const started = performance.now()
  while (limit.n !== undefined ? times.length < limit.n : performance.now() - started < (limit.ms as number)) {
    const at = performance.now()
    await run()
    times.push(performance.now() - at)
    await sleep(PACE_MS)
  }
  times.sort((a, b) => a - b)
  return { p99: times[Math.floor(times.length * 0.99)], count: times.length }
}

// How the flood was found: one account's many sessions made every login's script scan them
// all, and the scripts blocked Redis for every other user. Now a user has at most maxDevices
// devices and a sign-in touches its own device, the user's index and the least recently used.
test('one account signing in at maxDevices from 8 connections does not slow another user on Redis', async (t) => {
  const server = await startRedis(t)
  const admin = server.client()
  await admin.config('SET', 'slowlog-log-slower-than', '1000')
  await admin.config('SET', 'latency-monitor-threshold', '1')
  const client = server.client()
  const app = await buildApp(t, { store: new RedisStore(client), maxDevices: MAX_DEVICES })
  const other = await signIn(app, 2)
  const get = async (): Promise<void> => {
    const { status } = await me(other)
    if (status !== 200) throw new Error(`the other user's GET answered ${status}`)
  }
  await p99({ n: 200 }, get)
  const idle = (await p99({ n: 1000 }, get)).p99
  await admin.slowlog('RESET')
  await admin.config('RESETSTAT')
  await admin.call('LATENCY', 'RESET')

  const load = fork(path.join(import.meta.dirname, '..', 'helpers', 'login-load.ts'), [], {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, REDIS_PORT: String(server.port), LOAD_USER: '1', LOAD_CONCURRENCY: '8', LOAD_MAX_DEVICES: String(MAX_DEVICES) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  t.teardown(() => { load.kill() })
  // The flood yields the CPU to Redis and to the measured user: on 2 cores it would otherwise
  // preempt redis-server in the middle of scripts, which SLOWLOG (wall time) would count.
  setPriority(load.pid as number, 19)
  const [ready] = await once(load, 'message')
  t.equal(ready, 'ready', 'the user has maxDevices devices')
  const devices = await new RedisStore(client).list('1')
  t.equal(devices.length, MAX_DEVICES, 'and no more')

  const { p99: busy, count } = await p99({ ms: 10_000 }, get)
  load.send('stop')
  const [{ logins }] = await once(load, 'message') as [{ logins: number }]
  t.ok(logins > 100, `the load signed in ${logins} times in 10 s`)
  t.ok(busy <= 3 * idle, `the other user's GET: p99 ${busy.toFixed(2)} ms under load, ${idle.toFixed(2)} ms idle (${count} requests)`)
  t.equal((await new RedisStore(client).list('1')).length, MAX_DEVICES, 'still maxDevices devices')
  // What the scripts cost in Redis, printed, not asserted: an absolute time depends on the
  // machine (a shared 2-core VM deschedules redis-server for a few ms now and then, in any
  // command), and speed is measured by `npm run bench`, whose per-operation table shows that a
  // sign-in costs the same at 1, 100 and 1000 devices. What the test asserts above is what a
  // user sees: the other user's p99, and the limit.
  const stats = await admin.info('commandstats')
  const evalsha = /cmdstat_evalsha:calls=(\d+),usec=(\d+)/.exec(stats)
  const calls = Number(evalsha?.[1])
  const perCall = Number(evalsha?.[2]) / calls
  t.comment(`a script takes ${perCall.toFixed(1)} µs on average (${calls} scripts)`)
  const slow = (await admin.slowlog('GET', 128) as Array<[number, number, number, string[]]>)
    .filter(([, , , command]) => /^eval/i.test(command[0]))
  const stalls = await admin.call('LATENCY', 'HISTORY', 'fast-command') as unknown[]
  t.comment(`${slow.length} of ${calls} scripts took 1 ms or more ` +
    `(${slow.map(([, , micros]) => micros).join(', ')} µs; single-key commands stalled ${stalls.length} times meanwhile)`)
})
