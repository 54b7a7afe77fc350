import { once } from 'node:events'
import { test } from 'tap'
import { buildApp } from '../examples/app.js'
import { fakeClock } from './helpers/clock.js'
import { survivesRestart } from './helpers/example-restart.js'
import { CookieJar } from './helpers/jar.js'
import { startRedis } from './helpers/redis.js'

const SECRET = 'example-redis-secret-0123456789-abcdefgh'
const MINUTE = 60_000

test('the example with REDIS_URL keeps sessions in Redis across a restart', async (t) => {
  const server = await startRedis(t)
  const admin = server.client()
  await once(admin, 'ready')

  await survivesRestart(t, async () => await buildApp({ secret: SECRET, redisUrl: server.url }), async () => {
    t.ok((await admin.keys('pow:*')).length > 0, 'the session is in Redis')
  })
})

test('with Redis, a remembered browser whose session idled out is listed and can be signed out; a 15 kB User-Agent stores little', async (t) => {
  const server = await startRedis(t)
  const admin = server.client()
  await once(admin, 'ready')
  // Only Date is faked: the plugin decides by it, and writes its TTLs (30 days for the token) to
  // Redis relative to it, so Redis's own clock keeps the device.
  const clock = fakeClock(t, Date.now())
  const app = await buildApp({ secret: SECRET, redisUrl: server.url })
  t.teardown(() => app.close())

  const login = async (jar: CookieJar, remember: boolean, userAgent: string) => await jar.request({
    method: 'POST',
    url: '/api/login',
    headers: { 'user-agent': userAgent },
    payload: { email: 'alice@example.com', password: 'alice-password', remember }
  })
  const laptop = new CookieJar(app)
  t.equal((await login(laptop, false, 'Laptop/1.0')).statusCode, 200)
  const phone = new CookieJar(app)
  // Far more than the plugin's 4096-byte metadata limit, had the raw header been stored.
  t.equal((await login(phone, true, 'Phone/2.0 ' + 'x'.repeat(15 * 1024))).statusCode, 200, 'a 15 kB User-Agent signs in')
  const phoneFp = (await phone.request('/api/me')).json().session.fingerprint as string

  const keys = await admin.keys('pow:*')
  t.ok(keys.length > 0, 'the devices are in Redis')
  let bytes = 0
  for (const key of keys) bytes += Number(await admin.call('MEMORY', 'USAGE', key))
  t.ok(bytes < 8 * 1024, `two devices take ${bytes} bytes in Redis`)

  // The laptop is used (and renews); the phone makes no more requests until its session idled out.
  clock.tick(16 * MINUTE)
  t.equal((await laptop.request('/api/me')).statusCode, 200)
  clock.tick(16 * MINUTE)
  const sessions = (await laptop.request('/api/sessions')).json().sessions as Array<Record<string, unknown>>
  t.equal(sessions.length, 2, 'the remembered phone is still listed')
  const listed = sessions.find((s) => s.fingerprint === phoneFp)
  t.match(listed, { current: false, remembered: true })
  t.ok(String(listed?.userAgent).length <= 200, 'its user agent is short')

  t.equal((await laptop.request({ method: 'DELETE', url: `/api/sessions/${phoneFp}` })).statusCode, 204)
  t.equal((await phone.request('/api/me')).statusCode, 401, 'the phone\'s token no longer signs in')
  t.equal(((await laptop.request('/api/sessions')).json().sessions as unknown[]).length, 1)
})
