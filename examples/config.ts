/**
 * The example server's settings from its environment (see examples/README.md). Bad values throw
 * an error naming the variable.
 */
import type { BuildAppOptions } from './app.js'
import type { OidcOptions } from './oidc.js'

export interface ServerConfig {
  port: number
  host: string
  /** Set: POW_SECRET was unset and a random secret is used for this run. */
  generatedSecret: boolean
  options: BuildAppOptions & { secret: string }
}

type Env = Record<string, string | undefined>

function value (env: Env, name: string): string | undefined {
  const raw = env[name]
  return raw === undefined || raw.trim() === '' ? undefined : raw
}

/** A positive number of milliseconds, or undefined when unset. */
function duration (env: Env, name: string): number | undefined {
  const raw = value(env, name)
  if (raw === undefined) return undefined
  const ms = Number(raw)
  if (!Number.isFinite(ms) || ms <= 0) throw new Error(`${name} must be a positive number of milliseconds (got ${JSON.stringify(raw)})`)
  return ms
}

/** A positive integer, or undefined when unset. */
function count (env: Env, name: string): number | undefined {
  const raw = value(env, name)
  if (raw === undefined) return undefined
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer (got ${JSON.stringify(raw)})`)
  return n
}

/** Assigns the defined values only: `exactOptionalPropertyTypes` keeps unset options absent. */
function defined<T extends object> (values: { [K in keyof T]: T[K] | undefined }): Partial<T> {
  return Object.fromEntries(Object.entries(values).filter(([, v]) => v !== undefined)) as Partial<T>
}

/** "Sign in with OpenID Connect" when OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET are set. */
function oidcFromEnv (env: Env, host: string, port: number, production: boolean): OidcOptions | undefined {
  const names = ['OIDC_ISSUER', 'OIDC_CLIENT_ID', 'OIDC_CLIENT_SECRET'] as const
  const [issuer, clientId, clientSecret] = names.map((name) => value(env, name))
  if (issuer === undefined && clientId === undefined && clientSecret === undefined) return undefined
  if (issuer === undefined || clientId === undefined || clientSecret === undefined) {
    throw new Error(`${names.filter((name) => value(env, name) === undefined).join(', ')} must be set with the other OIDC_ variables`)
  }
  const url = (name: string, raw: string): string => {
    if (!URL.canParse(raw)) throw new Error(`${name} must be a URL (got ${JSON.stringify(raw)})`)
    return raw
  }
  const redirectUri = value(env, 'OIDC_REDIRECT_URI')
  // The default is this server over plain http: right for development only.
  if (redirectUri === undefined && production) throw new Error('OIDC_REDIRECT_URI must be set in production (https://<your site>/auth/oidc/callback)')
  const origin = `http://${host === '0.0.0.0' || host === '::' ? 'localhost' : host}:${port}`
  return {
    issuer: url('OIDC_ISSUER', issuer),
    clientId,
    clientSecret,
    redirectUri: url('OIDC_REDIRECT_URI', redirectUri ?? `${origin}/auth/oidc/callback`),
    name: value(env, 'OIDC_NAME')
  }
}

export function configFromEnv (env: Env, randomSecret: () => string): ServerConfig {
  const rawPort = value(env, 'PORT')
  const port = rawPort === undefined ? 3000 : Number(rawPort)
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PORT must be an integer from 0 to 65535 (got ${JSON.stringify(rawPort)})`)
  const host = value(env, 'HOST') ?? '127.0.0.1'
  const production = env.NODE_ENV === 'production'

  let secret = value(env, 'POW_SECRET')
  const generatedSecret = secret === undefined
  if (secret === undefined) {
    if (production) throw new Error('POW_SECRET must be set in production (a random string of at least 32 characters)')
    secret = randomSecret()
  }

  const persistentTtl = duration(env, 'POW_PERSISTENT_TTL_MS')
  const options: ServerConfig['options'] = {
    secret,
    logger: { level: 'info' },
    production,
    session: defined({ ttl: duration(env, 'POW_SESSION_TTL_MS'), renewAfter: duration(env, 'POW_SESSION_RENEWAL_MS'), rotationGrace: duration(env, 'POW_ROTATION_GRACE_MS') }),
    persistentSession: persistentTtl === undefined ? {} : { ttl: persistentTtl },
    loginLimits: defined({
      perIp: count(env, 'LOGIN_MAX_FAILURES_PER_IP'),
      perAccount: count(env, 'LOGIN_MAX_FAILURES_PER_ACCOUNT'),
      windowMs: duration(env, 'LOGIN_FAILURE_WINDOW_MS')
    })
  }
  const trustProxy = value(env, 'TRUST_PROXY')
  if (trustProxy !== undefined) options.trustProxy = trustProxy === 'true' ? true : trustProxy
  const oidc = oidcFromEnv(env, host, port, production)
  if (oidc !== undefined) options.oidc = oidc
  const redisUrl = value(env, 'REDIS_URL')
  const databaseUrl = value(env, 'DATABASE_URL')
  if (redisUrl !== undefined) options.redisUrl = redisUrl
  if (databaseUrl !== undefined) options.databaseUrl = databaseUrl
  return { port, host, generatedSecret, options }
}
