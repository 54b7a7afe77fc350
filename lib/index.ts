import fastifyCookie from '@fastify/cookie'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { optionError } from './errors.js'
import { buildConfig } from './options.js'
import { PowPersistentSession } from './persistent-session.js'
import { Pow } from './pow.js'
import { kAuthenticate, kCookies, kToken, PowSession } from './session.js'
import { MemoryStore } from './stores/memory.js'
import { RedisStore } from './stores/redis.js'
import type { PowOptions } from './types.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The session of this request; its `user` is null when nobody is signed in. */
    powSession: PowSession
    /** This browser's remember-me token; null when the `persistentSession` option is false. */
    powPersistentSession: PowPersistentSession | null
  }
  interface FastifyInstance {
    /** The credentials cache, the store and the session events. */
    pow: Pow
  }
}

const plugin: FastifyPluginAsync<PowOptions> = async function fastifyPow (fastify: FastifyInstance, opts: PowOptions) {
  const config = buildConfig(opts)
  // With @fastify/redis registered (app.redis), sessions go to that Redis by default.
  const redis = config.store === undefined && fastify.hasDecorator('redis')
    ? (fastify as unknown as { redis: ConstructorParameters<typeof RedisStore>[0] }).redis
    : undefined
  if (redis !== undefined && typeof redis.evalsha !== 'function') {
    throw optionError('store', 'is needed: app.redis holds several clients (@fastify/redis namespaces); pass store: new RedisStore(app.redis.<namespace>)')
  }
  const store = config.store ?? (redis !== undefined ? new RedisStore(redis) : new MemoryStore())
  if (!fastify.hasReplyDecorator('setCookie')) await fastify.register(fastifyCookie)

  const pow = new Pow(config, store, fastify.log)
  fastify.decorate('pow', pow)
  fastify.decorateRequest('powSession', null as unknown as PowSession)
  fastify.decorateRequest('powPersistentSession', null)

  const sessionCookie = config.session.name
  const persistentCookie = config.persistent?.name
  const reload = config.reloadUser !== undefined

  fastify.addHook('onRequest', async function powAuthenticate (request, reply) {
    const session = new PowSession(pow, request, reply)
    request.powSession = session
    const header = request.headers.cookie
    // @fastify/cookie parses in its own onRequest hook unless the app registered it with another hook.
    const cookies = header === undefined ? undefined : request.cookies ?? fastify.parseCookie(header)
    const sidCookie = cookies?.[sessionCookie]
    const tokenCookie = persistentCookie === undefined ? undefined : cookies?.[persistentCookie]
    const persistent = persistentCookie === undefined ? null : new PowPersistentSession(pow, request, session, tokenCookie !== undefined)
    request.powPersistentSession = persistent
    if (sidCookie === undefined && tokenCookie === undefined) return
    const sid = sidCookie === undefined ? null : pow.verify(sidCookie)
    const token = tokenCookie === undefined ? null : pow.verify(tokenCookie)
    if ((sid === null && sidCookie !== undefined) || (token === null && tokenCookie !== undefined)) {
      request.log.debug('fastify-pow: a cookie failed verification')
    }
    if (persistent !== null) persistent[kToken] = token
    if (sid === null && token === null) return
    // As PendingCookies.run, without a closure per request.
    const pending = session[kCookies]
    pending.begin()
    try {
      await session[kAuthenticate](sid, token, reload)
    } catch (err) {
      pending.abort()
      throw err
    }
    pending.commit()
  })
}

/** The fastify-pow plugin. */
export const fastifyPow = fp(plugin, { fastify: '5.x', name: 'fastify-pow' })
export default fastifyPow

export { MemoryStore } from './stores/memory.js'
export { RedisStore, type RedisStoreOptions } from './stores/redis.js'
export { PostgresStore, postgresSchema, type PostgresStoreOptions, type PgPool, type PgClient } from './stores/postgres.js'
export { userBucket } from './crypto.js'
export { PowOptionError, PowStoreError, PowNotSignedInError, PowSignInRevokedError, PowMetadataTooLargeError } from './errors.js'
export { Pow } from './pow.js'
export { CredentialsCache } from './credentials-cache.js'
export { PowSession, type CreateOptions } from './session.js'
export { PowPersistentSession } from './persistent-session.js'
export type * from './types.js'
