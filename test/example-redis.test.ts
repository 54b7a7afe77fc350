import { once } from 'node:events'
import { test } from 'tap'
import { buildApp } from '../examples/app.js'
import { CookieJar } from './helpers/jar.js'
import { startRedis } from './helpers/redis.js'

const SECRET = 'example-redis-secret-0123456789-abcdefgh'

test('the example with REDIS_URL keeps sessions in Redis across a restart', async (t) => {
  const server = await startRedis(t)
  const admin = server.client()
  await once(admin, 'ready')

  const first = await buildApp({ secret: SECRET, redisUrl: server.url })
  t.teardown(() => first.close())
  const jar = new CookieJar(first)
  const login = await jar.request({
    method: 'POST', url: '/api/login', payload: { email: 'alice@example.com', password: 'alice-password', remember: true }
  })
  t.equal(login.statusCode, 200)
  t.ok((await admin.keys('pow:*')).length > 0, 'the session is in Redis')
  await first.close()

  const second = await buildApp({ secret: SECRET, redisUrl: server.url })
  t.teardown(() => second.close())
  const again = new CookieJar(second)
  again.cookies = jar.clone().cookies
  const me = await again.request('/api/me')
  t.equal(me.statusCode, 200, 'still signed in after the restart')
  t.equal(me.json().user.email, 'alice@example.com')
})
