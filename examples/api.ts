import type { FastifyInstance, FastifyRequest } from 'fastify'
import { PowNotSignedInError } from '../lib/index.js'
import { limitedSignIn, type LoginLimiter, TooManySignInsError } from './login-limits.js'
import { deviceMetadata, readDeviceMetadata } from './user-agent.js'
import type { PublicUser, UserStore } from './users.js'

export interface ApiOptions {
  users: UserStore
  limiter: LoginLimiter
}

interface LoginBody {
  email: string
  password: string
  remember?: boolean
}

interface UpdateMeBody {
  name: string
}

interface SessionParams {
  fingerprint: string
}

const userSchema = {
  type: 'object',
  required: ['id', 'email', 'name'],
  properties: {
    id: { type: 'integer' },
    email: { type: 'string' },
    name: { type: 'string' }
  }
} as const

const errorSchema = {
  type: 'object',
  required: ['error'],
  properties: { error: { type: 'string' } }
} as const

const noContent = { type: 'null' } as const

const userReply = {
  type: 'object',
  required: ['user'],
  properties: { user: userSchema }
} as const

/** The signed-in user, in a handler behind `app.pow.requireUser`. */
function signedIn (request: FastifyRequest): PublicUser {
  return request.powSession.requireUser() as PublicUser
}

/** The methods whose requests must be JSON: those that carry a body here. */
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH'])

/**
 * The JSON API, registered under `/api`. State-changing requests must say `content-type:
 * application/json`: a page on another site can only send that with a CORS preflight, which this
 * API does not answer, so a cross-site form or `fetch` cannot sign anyone in or out. DELETE needs
 * a preflight whatever its body.
 */
export async function api (api: FastifyInstance, options: ApiOptions): Promise<void> {
  const { users, limiter } = options

  api.addHook('onRequest', async (request, reply) => {
    if (!BODY_METHODS.has(request.method)) return
    const type = request.headers['content-type']?.split(';')[0].trim().toLowerCase()
    if (type !== 'application/json') {
      return await reply.code(415).send({ error: 'Send a JSON body with content-type: application/json' })
    }
  })
  // An empty JSON body is no body (`POST /api/logout` needs none), not a 400.
  const json = api.getDefaultJsonParser('error', 'error')
  api.removeContentTypeParser('application/json')
  api.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '') done(null, undefined)
    else json(request, body as string, done)
  })

  // The API answers its errors as `{ error }`: 401 from `api.pow.requireUser`, 429 with
  // Retry-After for a limited sign-in. Other errors keep Fastify's answer.
  api.setErrorHandler(async (err, request, reply) => {
    if (err instanceof PowNotSignedInError) return await reply.code(401).send({ error: err.message })
    if (err instanceof TooManySignInsError) {
      return await reply.code(429).header('retry-after', String(err.retryAfter)).send({ error: err.message })
    }
    throw err
  })

  api.post<{ Body: LoginBody }>('/login', {
    schema: {
      body: {
        type: 'object',
        additionalProperties: false,
        required: ['email', 'password'],
        properties: {
          email: { type: 'string', maxLength: 254 },
          password: { type: 'string', maxLength: 1024 },
          remember: { type: 'boolean' }
        }
      },
      response: { 200: userReply, 401: errorSchema, 429: errorSchema }
    }
  }, async (request, reply) => {
    const { email, password, remember } = request.body
    // 429 with Retry-After (through the error handler) once this IP or account failed too often.
    const user = await limitedSignIn(limiter, request.ip, email, async () => await users.authenticate(email, password))
    if (user === null) return reply.code(401).send({ error: 'Invalid email or password' })
    await request.powSession.create(user, {
      // Remember-me needs the persistentSession option; without it the checkbox is ignored.
      persistent: remember === true && request.powPersistentSession !== null,
      // Parsed and cut: the raw header is whatever the client sends (up to Node's 16 kB).
      metadata: deviceMetadata(request.headers['user-agent'], request.ip)
    })
    return { user }
  })

  api.post('/logout', async (request, reply) => {
    await request.powSession.delete()
    return reply.code(204).send()
  })

  api.get('/me', {
    preHandler: api.pow.requireUser,
    schema: {
      response: {
        200: {
          type: 'object',
          required: ['user', 'session'],
          properties: {
            user: userSchema,
            session: {
              type: 'object',
              required: ['fingerprint', 'insertedAt', 'signedInAt'],
              properties: {
                fingerprint: { type: 'string' },
                // When this browser's current session id was issued (renewals move it).
                insertedAt: { type: 'number' },
                // When this browser last signed in with a password; remember-me sign-ins keep it.
                signedInAt: { type: 'number' }
              }
            }
          }
        },
        401: errorSchema
      }
    }
  }, async (request) => {
    const user = signedIn(request)
    const metadata = request.powSession.metadata
    if (metadata === null) throw new Error('a signed-in request has session metadata')
    const { fingerprint, insertedAt, signedInAt } = metadata
    return { user, session: { fingerprint, insertedAt, signedInAt } }
  })

  api.patch<{ Body: UpdateMeBody }>('/me', {
    preHandler: api.pow.requireUser,
    schema: {
      body: {
        type: 'object',
        additionalProperties: false,
        required: ['name'],
        properties: { name: { type: 'string', minLength: 1, maxLength: 100 } }
      },
      response: { 200: userReply, 401: errorSchema, 404: errorSchema }
    }
  }, async (request, reply) => {
    const current = signedIn(request)
    const updated = users.updateName(current.id, request.body.name)
    if (updated === null) return reply.code(404).send({ error: 'User not found' })
    // Every session of the user (other browsers included) sees the new credentials.
    await request.powSession.update(updated)
    return { user: updated }
  })

  api.get('/sessions', {
    preHandler: api.pow.requireUser,
    schema: {
      response: {
        200: {
          type: 'object',
          required: ['sessions'],
          properties: {
            sessions: {
              type: 'array',
              items: {
                type: 'object',
                required: ['fingerprint', 'current', 'remembered', 'insertedAt', 'signedInAt', 'browser', 'os', 'userAgent', 'ip'],
                properties: {
                  fingerprint: { type: 'string' },
                  current: { type: 'boolean' },
                  // A remember-me token of this browser works: it is listed (and can be signed
                  // out) even when its session idled out, since it signs back in on its next visit.
                  remembered: { type: 'boolean' },
                  insertedAt: { type: 'number' },
                  signedInAt: { type: 'number' },
                  browser: { type: 'string' },
                  os: { type: 'string' },
                  userAgent: { type: ['string', 'null'] },
                  ip: { type: ['string', 'null'] }
                }
              }
            }
          }
        },
        401: errorSchema
      }
    }
  }, async (request) => {
    const sessions = await request.powSession.sessions()
    return {
      sessions: sessions.map((session) => ({
        fingerprint: session.fingerprint,
        current: session.current,
        remembered: session.remembered,
        insertedAt: session.insertedAt,
        signedInAt: session.signedInAt,
        ...readDeviceMetadata(session.metadata)
      }))
    }
  })

  api.delete<{ Params: SessionParams }>('/sessions/:fingerprint', {
    preHandler: api.pow.requireUser,
    schema: {
      params: {
        type: 'object',
        required: ['fingerprint'],
        properties: { fingerprint: { type: 'string', minLength: 1, maxLength: 64 } }
      },
      response: { 204: noContent, 401: errorSchema, 404: errorSchema }
    }
  }, async (request, reply) => {
    // false for an unknown fingerprint and for another user's: both are a 404.
    const deleted = await request.powSession.deleteSession(request.params.fingerprint)
    if (!deleted) return reply.code(404).send({ error: 'Session not found' })
    return reply.code(204).send()
  })

  api.delete('/sessions', {
    preHandler: api.pow.requireUser,
    schema: { response: { 204: noContent, 401: errorSchema } }
  }, async (request, reply) => {
    await request.powSession.deleteOtherSessions()
    return reply.code(204).send()
  })
}
