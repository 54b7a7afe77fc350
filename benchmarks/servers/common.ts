/**
 * What every benchmark server shares: the user, the secret, and how a server tells the runner it
 * listens. Servers are started by benchmarks/run.ts with an IPC channel: they answer
 * `{ type: 'ready', port, ...info }` once listening, exit on the message 'exit' (so that
 * `--cpu-prof` writes its profile) and exit when the runner goes away. The messages
 * `{ type: 'profile-start' }` and `{ type: 'profile-stop', file }` run V8's CPU profiler (what
 * `node --cpu-prof` runs, same sampling interval) on the running server, so a server that took
 * a minute to fill need not be started again to be profiled.
 *
 * The routes of the variants whose session is a plugin's `request.session` (@fastify/session,
 * @fastify/secure-session) are here too: {@link sessionRoutes}.
 */
import { writeFileSync } from 'node:fs'
import { Session } from 'node:inspector/promises'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'

/** The payload every variant's GET /me returns. */
export const USER = { id: 1, email: 'alice@example.com', name: 'Alice' }
export type BenchUser = typeof USER

/** Signing secret / key material shared by the variants that need one (>= 32 characters). */
export const SECRET = 'fastify-pow benchmark secret: not a real secret, 48 chars'

/** The session id bare Fastify and raw-redis accept (they compare the cookie header to it). */
export const FIXED_SID = 'bench-0123456789abcdefghijklmnopqrstuvwxyz'
export const FIXED_COOKIE = `sid=${FIXED_SID}`

export function env (name: string, fallback?: string): string {
  const value = process.env[name] ?? fallback
  if (value === undefined) throw new Error(`benchmark server: ${name} is not set`)
  return value
}

/** Send a message to the runner (no-op when started without IPC, e.g. by hand). */
export function tell (message: Record<string, unknown>): void {
  if (typeof process.send === 'function') process.send(message)
  else console.log(JSON.stringify(message))
}

/** Listens on a free loopback port and tells the runner. */
export async function serve (app: FastifyInstance, info: Record<string, unknown> = {}, onExit?: () => Promise<void>): Promise<void> {
  const stop = (): void => {
    const done = (): never => process.exit(0)
    app.close().then(async () => { if (onExit !== undefined) await onExit() }).then(done, done)
    setTimeout(done, 3000).unref()
  }
  let inspector: Session | undefined
  process.on('message', (message: string | { type?: string, file?: string }) => {
    if (message === 'exit') return stop()
    if (typeof message !== 'object' || message === null) return
    const fail = (err: Error): void => tell({ type: 'profile-error', error: err.message })
    if (message.type === 'profile-start') {
      inspector = new Session()
      inspector.connect()
      inspector.post('Profiler.enable')
        .then(() => (inspector as Session).post('Profiler.setSamplingInterval', { interval: 1000 }))
        .then(() => (inspector as Session).post('Profiler.start'))
        .then(() => tell({ type: 'profile-started' }), fail)
    } else if (message.type === 'profile-stop' && inspector !== undefined) {
      const session = inspector
      session.post('Profiler.stop').then(({ profile }) => {
        writeFileSync(message.file as string, JSON.stringify(profile))
        session.disconnect()
        tell({ type: 'profile-written', file: message.file })
      }, fail)
    }
  })
  process.on('disconnect', stop)
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  await app.listen({ port: Number(env('BENCH_PORT', '0')), host: '127.0.0.1' })
  tell({ type: 'ready', port: (app.server.address() as AddressInfo).port, ...info })
}

// @fastify/session and @fastify/secure-session both declare `request.session`; the routes below
// use it through this narrow view, which both provide.
interface PluginSession { get (key: string): unknown, set (key: string, value: unknown): void }
const sessionOf = (request: unknown): PluginSession => (request as { session: PluginSession }).session

/**
 * POST /login and GET /me on a session plugin's `request.session`: the login stores USER in the
 * session, GET /me answers the session's user, or 401 without one.
 */
export function sessionRoutes (app: FastifyInstance): void {
  app.post('/login', async (request) => {
    sessionOf(request).set('user', USER)
    return USER
  })

  app.get('/me', async (request, reply) => {
    const user = sessionOf(request).get('user')
    if (user === undefined || user === null) return reply.code(401).send()
    return user
  })
}
