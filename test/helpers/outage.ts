import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import type { Test } from 'tap'
import pow, { type PowStore } from '../../lib/index.js'
import type { CookieJar } from './jar.js'

/** Sends a request through `jar` and measures how long the answer took (real clock: bounded latency is the point). */
export async function timed (jar: CookieJar, options: Parameters<CookieJar['request']>[0]): Promise<{ response: LightMyRequestResponse, ms: number }> {
  const started = performance.now()
  const response = await jar.request(options)
  return { response, ms: performance.now() - started }
}

/** A 503 POW_ERR_STORE_UNAVAILABLE that sets no cookie. */
export function assertUnavailable (t: Test, response: LightMyRequestResponse, what: string): void {
  t.equal(response.statusCode, 503, `${what}: 503`)
  t.equal(response.json().code, 'POW_ERR_STORE_UNAVAILABLE', `${what}: POW_ERR_STORE_UNAVAILABLE`)
  t.equal(response.headers['set-cookie'], undefined, `${what}: no set-cookie header`)
}

/** A line fastify-pow logged. */
export interface LogLine { level: number, msg: string, err?: { message?: string } }

/** A stream for Fastify's logger that keeps the lines, parsed. */
export function logLines (): { lines: LogLine[], stream: Writable } {
  const lines: LogLine[] = []
  const stream = new Writable({
    write (chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)))
      cb()
    }
  })
  return { lines, stream }
}

/**
 * An app on `store` whose log lines are kept, with a POST /login (user 1, remember-me) and a
 * GET /me; and the cookies of a browser signed in through it.
 */
export async function loggedApp (t: Test, store: PowStore): Promise<{ app: FastifyInstance, lines: LogLine[], cookie: string }> {
  const { lines, stream } = logLines()
  const app = Fastify({ logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  await app.register(pow, { secret: 'x'.repeat(32), store })
  app.post('/login', async (request) => {
    await request.powSession.create({ id: 1 } as never, { persistent: true })
    return {}
  })
  app.get('/me', async (request) => ({ user: request.powSession.user }))
  await app.ready()
  const login = await app.inject({ method: 'POST', url: '/login' })
  t.equal(login.statusCode, 200)
  const cookie = (login.cookies as Array<{ name: string, value: string }>).map((c) => `${c.name}=${c.value}`).join('; ')
  return { app, lines, cookie }
}
