import { randomBytes } from 'node:crypto'
import fastifyCookie from '@fastify/cookie'
import fastifyHelmet from '@fastify/helmet'
import fastifyPostgres from '@fastify/postgres'
import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import pow, { type PersistentSessionOptions, PowNotSignedInError, type PowStore, type SessionOptions } from '../lib/index.js'
import { pages } from './pages.js'
import { deviceMetadata, readDeviceMetadata } from './user-agent.js'
import { type PublicUser, UserStore } from './users.js'

// A standalone app would type `request.powSession.user` by merging its user into PowUser:
//   declare module 'fastify-pow' { interface PowUser { id: number, email: string, name: string } }
// This example is compiled in the same program as lib/ and the plugin's tests, where such a merge
// is global and makes their `{ id, name }` test users (and lib/options.ts) fail to compile, so it
// narrows `PowUser` to its own `PublicUser` in `signedIn()` instead.

export interface BuildAppOptions {
  /** Cookie signing secret(s), each at least 32 characters. Default: a random one (sessions die with the process). */
  secret?: string | string[]
  store?: PowStore
  logger?: FastifyServerOptions['logger']
  session?: SessionOptions
  /** Login form posts allowed per IP and minute. Default 10. */
  loginAttemptsPerMinute?: number
  /** With a Redis URL, @fastify/redis is registered and fastify-pow stores sessions in `app.redis`. */
  redisUrl?: string
  /**
   * With a PostgreSQL URL (and no Redis URL), @fastify/postgres is registered and fastify-pow
   * stores sessions in `app.pg`, creating its table at start when it is missing.
   */
  databaseUrl?: string
  persistentSession?: false | PersistentSessionOptions
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

export async function buildApp (options: BuildAppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? false,
    ajv: {
      // Fastify's defaults silently drop unknown properties and coerce types ("123" -> 123);
      // this API rejects both with a 400.
      customOptions: { removeAdditional: false, coerceTypes: false }
    }
  })

  const users = await UserStore.create()
  app.decorate('users', users)

  // For the CSRF protection of the pages; fastify-pow writes its own cookies and works without it.
  await app.register(fastifyCookie)
  // With @fastify/redis registered and no `store` option, fastify-pow uses app.redis.
  if (options.redisUrl !== undefined) await app.register(fastifyRedis, { url: options.redisUrl })
  // Likewise with @fastify/postgres: app.pg.
  else if (options.databaseUrl !== undefined) await app.register(fastifyPostgres, { connectionString: options.databaseUrl, connectionTimeoutMillis: 2000 })
  await app.register(pow, {
    secret: options.secret ?? randomBytes(36).toString('base64url'),
    store: options.store,
    session: options.session,
    persistentSession: options.persistentSession
  })

  await app.register(fastifyHelmet, {
    contentSecurityPolicy: {
      // Plain http on localhost during development must not be upgraded to https.
      directives: { upgradeInsecureRequests: process.env.NODE_ENV === 'production' ? [] : null }
    }
  })
  // HTML pages (login, account, devices) beside the JSON API below.
  await app.register(pages, { users, loginAttemptsPerMinute: options.loginAttemptsPerMinute })

  // The JSON API answers its errors as `{ error }`; `app.pow.requireUser` throws a
  // PowNotSignedInError (401 "Not signed in"). Other errors keep Fastify's answer.
  app.setErrorHandler(async (err, request, reply) => {
    if (err instanceof PowNotSignedInError) return await reply.code(401).send({ error: err.message })
    throw err
  })

  app.post<{ Body: LoginBody }>('/api/login', {
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
      response: { 200: userReply, 401: errorSchema }
    }
  }, async (request, reply) => {
    const { email, password, remember } = request.body
    const user = await users.authenticate(email, password)
    if (user === null) return reply.code(401).send({ error: 'Invalid email or password' })
    await request.powSession.create(user, {
      // Remember-me needs the persistentSession option; without it the checkbox is ignored.
      persistent: remember === true && request.powPersistentSession !== null,
      // Parsed and cut: the raw header is whatever the client sends (up to Node's 16 kB).
      metadata: deviceMetadata(request.headers['user-agent'], request.ip)
    })
    return { user }
  })

  app.post('/api/logout', async (request, reply) => {
    await request.powSession.delete()
    return reply.code(204).send()
  })

  app.get('/api/me', {
    preHandler: app.pow.requireUser,
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

  app.patch<{ Body: UpdateMeBody }>('/api/me', {
    preHandler: app.pow.requireUser,
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

  app.get('/api/sessions', {
    preHandler: app.pow.requireUser,
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

  app.delete<{ Params: SessionParams }>('/api/sessions/:fingerprint', {
    preHandler: app.pow.requireUser,
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

  app.delete('/api/sessions', {
    preHandler: app.pow.requireUser,
    schema: { response: { 204: noContent, 401: errorSchema } }
  }, async (request, reply) => {
    await request.powSession.deleteOtherSessions()
    return reply.code(204).send()
  })

  return app
}
