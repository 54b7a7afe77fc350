import { createHmac, randomBytes } from 'node:crypto'
import fastifyCookie from '@fastify/cookie'
import fastifyHelmet from '@fastify/helmet'
import fastifyPostgres from '@fastify/postgres'
import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import pow, { type PersistentSessionOptions, type PowStore, type SessionOptions } from '../lib/index.js'
import { api } from './api.js'
import { LoginLimiter, type LoginLimitOptions } from './login-limits.js'
import type { OidcOptions } from './oidc.js'
import { pages } from './pages.js'
import { UserStore } from './users.js'

// A standalone app would type `request.powSession.user` by merging its user into PowUser:
//   declare module 'fastify-pow' { interface PowUser { id: number, email: string, name: string } }
// This example is compiled in the same program as lib/ and the plugin's tests, where such a merge
// is global and makes their `{ id, name }` test users (and lib/options.ts) fail to compile, so it
// narrows `PowUser` to its own `PublicUser` where it reads the user instead.

export interface BuildAppOptions {
  /** Cookie signing secret(s), each at least 32 characters. Default: a random one (sessions die with the process). */
  secret?: string | string[]
  store?: PowStore
  logger?: FastifyServerOptions['logger']
  session?: SessionOptions
  /**
   * Fastify's `trustProxy`, so that `request.ip` (which the sign-in limits count by) is the
   * client's behind a proxy: the proxies' addresses or CIDRs, comma-separated. `true` trusts any
   * `X-Forwarded-For`, which a client can then forge. Default: the socket's address.
   */
  trustProxy?: boolean | string
  /** Limits on failed sign-ins per IP and per account, shared by the form and the JSON login. */
  loginLimits?: Partial<LoginLimitOptions>
  /**
   * Production settings: `__Host-` cookie names (Secure, Path=/, no Domain: no other subdomain
   * can set or shadow them) and a Secure CSRF cookie. Default: `NODE_ENV === 'production'`.
   */
  production?: boolean
  /** With a Redis URL, @fastify/redis is registered and fastify-pow stores sessions in `app.redis`. */
  redisUrl?: string
  /**
   * With a PostgreSQL URL (and no Redis URL), @fastify/postgres is registered and fastify-pow
   * stores sessions in `app.pg`, creating its table at start when it is missing.
   */
  databaseUrl?: string
  persistentSession?: false | PersistentSessionOptions
  /** "Sign in with OpenID Connect" on the login page (examples/oidc.ts). */
  oidc?: OidcOptions
}

/** A key for one purpose, from the first signing secret. */
function deriveKey (secret: string | string[], purpose: string): Buffer {
  return createHmac('sha256', Array.isArray(secret) ? secret[0] : secret).update(`fastify-pow example ${purpose}`).digest()
}

export async function buildApp (options: BuildAppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? false,
    trustProxy: options.trustProxy ?? false,
    ajv: {
      // Fastify's defaults silently drop unknown properties and coerce types ("123" -> 123);
      // this API rejects both with a 400.
      customOptions: { removeAdditional: false, coerceTypes: false }
    }
  })
  const production = options.production ?? process.env.NODE_ENV === 'production'
  const secret = options.secret ?? randomBytes(36).toString('base64url')
  const users = await UserStore.create()
  app.decorate('users', users)
  const limiter = new LoginLimiter(options.loginLimits)

  // For the CSRF protection of the pages and the OpenID Connect transaction (signed with a key of
  // its own); fastify-pow writes its own cookies and works without it.
  await app.register(fastifyCookie, { secret: deriveKey(secret, 'cookies').toString('base64url') })
  // With @fastify/redis registered and no `store` option, fastify-pow uses app.redis.
  if (options.redisUrl !== undefined) await app.register(fastifyRedis, { url: options.redisUrl })
  // Likewise with @fastify/postgres: app.pg.
  else if (options.databaseUrl !== undefined) await app.register(fastifyPostgres, { connectionString: options.databaseUrl, connectionTimeoutMillis: 2000 })
  const persistentSession = options.persistentSession === false || !production
    ? options.persistentSession
    : { cookieName: '__Host-pow_persistent_session', ...options.persistentSession }
  await app.register(pow, {
    secret,
    store: options.store,
    session: production ? { cookieName: '__Host-pow_session', ...options.session } : options.session,
    persistentSession
  })

  // The OpenID provider's origins, for CSP form-action (examples/oidc.ts adds its authorization endpoint's).
  const formActionOrigins = new Set(options.oidc === undefined ? [] : [new URL(options.oidc.issuer).origin])
  await app.register(fastifyHelmet, {
    contentSecurityPolicy: {
      // Plain http on localhost during development must not be upgraded to https.
      directives: {
        upgradeInsecureRequests: production ? [] : null,
        // The OpenID Connect button is a form whose answer redirects to the provider: CSP's
        // form-action covers the redirect too.
        formAction: options.oidc === undefined ? ["'self'"] : ["'self'", () => [...formActionOrigins].join(' ')]
      }
    }
  })
  // Pages and API answers carry a user's data (or a CSRF token): no cache, shared or private,
  // may keep them. A route that sets its own Cache-Control (the stylesheet) keeps it.
  app.addHook('onSend', async (request, reply) => {
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store')
  })

  // HTML pages (login, account, devices) beside the JSON API.
  await app.register(pages, {
    users,
    limiter,
    production,
    // The CSRF tokens' HMAC key: tokens are bound to the device.
    csrfKey: deriveKey(secret, 'csrf'),
    oidc: options.oidc === undefined ? undefined : { options: options.oidc, formActionOrigins }
  })
  await app.register(api, { prefix: '/api', users, limiter })
  return app
}
