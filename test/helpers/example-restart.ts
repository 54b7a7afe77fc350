import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import { CookieJar } from './jar.js'

/**
 * Signs alice in with remember-me on one example server, lets `stored` look at what the store
 * holds, closes it, and checks that a second server on the same store still knows the browser.
 */
export async function survivesRestart (t: Test, start: () => Promise<FastifyInstance>, stored: (jar: CookieJar) => Promise<void>): Promise<CookieJar> {
  const first = await start()
  t.teardown(() => first.close())
  const jar = new CookieJar(first)
  const login = await jar.request({
    method: 'POST', url: '/api/login', payload: { email: 'alice@example.com', password: 'alice-password', remember: true }
  })
  t.equal(login.statusCode, 200)
  await stored(jar)
  await first.close()

  const second = await start()
  t.teardown(() => second.close())
  const again = new CookieJar(second)
  again.cookies = jar.clone().cookies
  const me = await again.request('/api/me')
  t.equal(me.statusCode, 200, 'still signed in after the restart')
  t.equal(me.json().user.email, 'alice@example.com')
  return again
}
