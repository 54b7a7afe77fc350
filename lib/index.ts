import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { cookieValue, type PendingCookies } from './cookies.js'
import { optionError } from './errors.js'
import { buildConfig } from './options.js'
import { PowPersistentSession } from './persistent-session.js'
import { Pow } from './pow.js'
import { kAuthenticate, kCookies, kToken, PowSession } from './session.js'
import { MemoryStore } from './stores/memory.js'
import { type PgPool, PostgresStore } from './stores/postgres.js'
import { RedisStore } from './stores/redis.js'
import { keepTickShapes } from './tick.js'
import type { PowOptions, PowStore } from './types.js'

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
  // Fastify calls process.nextTick several times per request: keep it on V8's fast path (lib/tick.ts).
  keepTickShapes()
  const config = buildConfig(opts)
  const store = config.store ?? defaultStore(fastify)
  // A store that needs it checks (or creates) its tables now: a missing migration fails app.ready().
  if (typeof store.ready === 'function') await store.ready(fastify.log)
  if (typeof store.close === 'function') fastify.addHook('onClose', async () => { await store.close?.() })
  if (store instanceof MemoryStore && process.env.NODE_ENV === 'production') {
    fastify.log.warn('fastify-pow: sessions are kept in memory (MemoryStore) under NODE_ENV=production: they are lost on restart and not shared with other instances; register @fastify/redis or @fastify/postgres before fastify-pow, or pass the store option')
  }
  if (config.store === undefined && store instanceof MemoryStore) {
    fastify.addHook('onReady', async function powLateStore () {
      for (const [name, plugin] of [['redis', '@fastify/redis'], ['pg', '@fastify/postgres']]) {
        if (this.hasDecorator(name)) {
          this.log.warn(`fastify-pow: ${plugin} was registered after fastify-pow, so sessions are kept in memory; register it before fastify-pow (or pass the store option) to keep them in app.${name}`)
        }
      }
    })
  }

  const pow = new Pow(config, store, fastify.log)
  fastify.decorate('pow', pow)
  fastify.decorateRequest('powSession', null as unknown as PowSession)
  fastify.decorateRequest('powPersistentSession', null)

  const sessionCookie = config.session.name
  const persistentCookie = config.persistent?.name
  const reload = config.reloadUser !== undefined

  // A callback hook, not an async one: a request without cookies, or one whose session the store
  // answers at once (MemoryStore) and that needs no write, is authenticated without a promise.
  fastify.addHook('onRequest', function powAuthenticate (request, reply, done) {
    const header = request.headers.cookie
    // Read here even when an app's @fastify/cookie has parsed them: its options (a `decode`) are
    // for the app's cookies, not fastify-pow's.
    const sidCookie = header === undefined ? undefined : cookieValue(header, sessionCookie)
    const session = new PowSession(pow, request, reply, sidCookie !== undefined)
    request.powSession = session
    const tokenCookie = persistentCookie === undefined || header === undefined ? undefined : cookieValue(header, persistentCookie)
    const persistent = persistentCookie === undefined ? null : new PowPersistentSession(pow, request, session, tokenCookie !== undefined)
    request.powPersistentSession = persistent
    if (sidCookie === undefined && tokenCookie === undefined) {
      done()
      return
    }
    const sid = sidCookie === undefined ? null : pow.verify(sidCookie)
    const token = tokenCookie === undefined ? null : pow.verify(tokenCookie)
    if ((sid === null && sidCookie !== undefined) || (token === null && tokenCookie !== undefined)) {
      request.log.debug('fastify-pow: a cookie failed verification')
    }
    if (persistent !== null) persistent[kToken] = token
    if (sid === null && token === null) {
      done()
      return
    }
    // As PendingCookies.run, without a closure per request. `done` is called outside the try: it
    // runs the next hooks, whose errors are not this hook's.
    const pending = session[kCookies]
    pending.begin()
    let later: Promise<void> | undefined
    try {
      later = session[kAuthenticate](sid, token, reload)
    } catch (err) {
      pending.abort()
      done(err as Error)
      return
    }
    if (later === undefined) {
      commit(pending, done)
      return
    }
    later.then(() => { commit(pending, done) }, (err: unknown) => {
      pending.abort()
      done(err as Error)
    })
  })
}

/** The hook's cookies go to the reply, then the next hook runs; a reply that refuses them is the request's error. */
function commit (pending: PendingCookies, done: (err?: Error) => void): void {
  try {
    pending.commit()
  } catch (err) {
    done(err as Error)
    return
  }
  done()
}

/**
 * The store when none is given: Redis through @fastify/redis (`app.redis`), else PostgreSQL
 * through @fastify/postgres (`app.pg`, its tables created when missing), else memory.
 */
function defaultStore (fastify: FastifyInstance): PowStore {
  const app = fastify as unknown as { redis?: ConstructorParameters<typeof RedisStore>[0], pg?: { pool?: PgPool } }
  if (fastify.hasDecorator('redis')) {
    const redis = app.redis
    if (typeof redis?.evalsha !== 'function') {
      throw optionError('store', 'is needed: app.redis holds several clients (@fastify/redis namespaces); pass store: new RedisStore(app.redis.<namespace>)')
    }
    fastify.log.info('fastify-pow: sessions are stored in Redis (app.redis of @fastify/redis)')
    return new RedisStore(redis)
  }
  if (fastify.hasDecorator('pg')) {
    const pool = app.pg?.pool
    if (pool === undefined || typeof pool.connect !== 'function') {
      throw optionError('store', 'is needed: app.pg holds several pools (@fastify/postgres names); pass store: new PostgresStore(app.pg.<name>.pool)')
    }
    fastify.log.info('fastify-pow: sessions are stored in PostgreSQL (app.pg of @fastify/postgres; its tables are created if missing)')
    return new PostgresStore(pool, { createTables: true })
  }
  return new MemoryStore()
}

/** The fastify-pow plugin. */
export const fastifyPow = fp(plugin, { fastify: '5.x', name: 'fastify-pow' })
export default fastifyPow

export { MemoryStore } from './stores/memory.js'
export { RedisStore, type RedisStoreOptions, type RedisClient, type RedisPipeline } from './stores/redis.js'
export { PostgresStore, postgresSchema, type PostgresStoreOptions, type PgPool, type PgClient } from './stores/postgres.js'
export { userBucket } from './crypto.js'
export { PowOptionError, PowStoreError, PowReloadUserError, PowNotSignedInError, PowSignInRevokedError, PowMetadataTooLargeError } from './errors.js'
export { Pow } from './pow.js'
export { CredentialsCache } from './credentials-cache.js'
export { PowSession, type CreateOptions } from './session.js'
export { PowPersistentSession } from './persistent-session.js'
export type * from './types.js'
