/**
 * The example server (`npm start`). Environment:
 *
 * - PORT (3000), HOST (127.0.0.1)
 * - POW_SECRET: cookie signing secret, at least 32 characters. Required when NODE_ENV=production;
 *   otherwise a random one is generated per start (sessions do not survive a restart).
 * - REDIS_URL: keep sessions in Redis (redis://127.0.0.1:6379). DATABASE_URL: keep them in
 *   PostgreSQL (postgres://postgres@127.0.0.1:5432/<db>; the table is created at start). Neither:
 *   in memory.
 * - POW_SESSION_TTL_MS, POW_SESSION_RENEWAL_MS, POW_ROTATION_GRACE_MS, POW_PERSISTENT_TTL_MS:
 *   session idle timeout, renewal age, rotation grace and remember-me lifetime in milliseconds.
 * - LOGIN_MAX_FAILURES_PER_IP (20), LOGIN_MAX_FAILURES_PER_ACCOUNT (10), LOGIN_FAILURE_WINDOW_MS
 *   (900000): failed sign-ins allowed per IP and per account within the window.
 * - TRUST_PROXY: the proxies in front (Fastify's trustProxy), so that the limits count clients.
 * - OIDC_ISSUER, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET (OIDC_REDIRECT_URI, OIDC_NAME): "Sign in
 *   with OpenID Connect".
 *
 * All of them are read by examples/config.ts; examples/README.md has the full table.
 */
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import { configFromEnv, type ServerConfig } from './config.js'

function fail (message: string): never {
  console.error(`fastify-pow example: ${message}`)
  process.exit(1)
}

async function main (): Promise<void> {
  let config: ServerConfig
  try {
    config = configFromEnv(process.env, () => randomBytes(36).toString('base64url')) // 48 characters
  } catch (err) {
    fail((err as Error).message)
  }
  const { port, host, generatedSecret } = config

  let app: FastifyInstance
  try {
    app = await buildApp(config.options)
  } catch (err) {
    // Invalid plugin options (for example renewAfter >= ttl) end up here, named by the plugin.
    fail((err as Error).message)
  }

  if (config.options.redisUrl === undefined && config.options.databaseUrl === undefined) {
    app.log.info('sessions are stored in memory: set REDIS_URL (Redis) or DATABASE_URL (PostgreSQL) to keep them across restarts')
  }
  if (generatedSecret) {
    app.log.warn('POW_SECRET is not set: using a random secret for this run; sessions will not survive a restart')
  }

  let closing = false
  const shutdown = (signal: string): void => {
    if (closing) return
    closing = true
    app.log.info({ signal }, 'shutting down')
    app.close().then(() => process.exit(0), (err: unknown) => {
      app.log.error({ err }, 'error while shutting down')
      process.exit(1)
    })
  }
  process.once('SIGINT', () => shutdown('SIGINT'))
  process.once('SIGTERM', () => shutdown('SIGTERM'))

  try {
    const address = await app.listen({ port, host })
    app.log.info(`fastify-pow example listening at ${address}`)
  } catch (err) {
    app.log.error({ err }, 'could not start')
    process.exit(1)
  }
}

await main()
