import Fastify, { type FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import pow, { type CommitResult, MemoryStore, type PowOptions, type PowStore } from '../../lib/index.js'
import { STORE_METHODS } from '../../lib/options.js'
import { CookieJar } from './jar.js'

export const SECRET = 'test-secret-that-is-long-enough-0123456789'

export interface TestUser { id: number, name: string }

/**
 * A store that records which methods were called, over a real MemoryStore. `writes()` are the
 * commits (a refused one, a lost race, included); `refused()` counts those that applied nothing,
 * so that `writes().length - refused()` is what was written.
 */
export function recordingStore (inner: PowStore = new MemoryStore()): PowStore & { calls: string[], writes: () => string[], refused: () => number } {
  const calls: string[] = []
  let refused = 0
  const store = {
    calls,
    writes: () => calls.filter((c) => c === 'commit'),
    refused: () => refused
  } as unknown as PowStore & { calls: string[], writes: () => string[], refused: () => number }
  for (const method of STORE_METHODS) {
    (store as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
      calls.push(method)
      const result = await (inner[method] as (...a: unknown[]) => Promise<unknown>).apply(inner, args)
      if (method === 'commit' && !(result as CommitResult).ok) refused++
      return result
    }
  }
  return store
}

/**
 * An app with fastify-pow and small routes over it: POST /login {id, name?, persistent?},
 * GET /me, PATCH /me {name}, POST /logout, GET /sessions, DELETE /sessions[/:fingerprint].
 */
export async function buildApp (t: Test, options: Partial<PowOptions> = {}, setup?: (app: FastifyInstance) => Promise<void> | void): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  if (setup !== undefined) await setup(app)
  await app.register(pow, { secret: SECRET, ...options })
  app.post<{ Body: { id: number, name?: string, persistent?: boolean, metadata?: Record<string, unknown> } }>('/login', async (request) => {
    const user = { id: request.body.id, name: request.body.name ?? `user${request.body.id}` }
    await request.powSession.create(user, { persistent: request.body.persistent, metadata: request.body.metadata })
    return { user }
  })
  app.get('/me', async (request, reply) => {
    if (request.powSession.user === null) return await reply.code(401).send({ user: null })
    return { user: request.powSession.user, metadata: request.powSession.metadata }
  })
  app.patch<{ Body: { name: string } }>('/me', async (request) => {
    const user = { ...(request.powSession.user as unknown as TestUser), name: request.body.name }
    await request.powSession.update(user)
    return { user }
  })
  app.post('/logout', async (request, reply) => {
    await request.powSession.delete()
    return await reply.code(204).send()
  })
  app.get('/sessions', async (request) => ({ sessions: await request.powSession.sessions() }))
  app.delete<{ Params: { fingerprint: string } }>('/sessions/:fingerprint', async (request, reply) => {
    const deleted = await request.powSession.deleteSession(request.params.fingerprint)
    return await reply.code(deleted ? 204 : 404).send()
  })
  app.delete('/sessions', async (request) => ({ revoked: await request.powSession.deleteOtherSessions() }))
  await app.ready()
  return app
}

/** A jar signed in as user `id`. */
export async function signIn (app: FastifyInstance, id: number, body: Record<string, unknown> = {}): Promise<CookieJar> {
  const jar = new CookieJar(app)
  const response = await jar.request({ method: 'POST', url: '/login', payload: { id, ...body } })
  if (response.statusCode !== 200) throw new Error(`login failed: ${response.statusCode} ${response.body}`)
  return jar
}

export async function me (jar: CookieJar): Promise<{ status: number, user: TestUser | null, fingerprint?: string }> {
  const response = await jar.request('/me')
  const body = response.json()
  return { status: response.statusCode, user: body.user, fingerprint: body.metadata?.fingerprint }
}
