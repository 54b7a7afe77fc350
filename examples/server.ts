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
 */
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { buildApp, type BuildAppOptions } from './app.js'

function fail (message: string): never {
  console.error(`fastify-pow example: ${message}`)
  process.exit(1)
}

/** A positive number of milliseconds from the environment, or undefined when the variable is unset. */
function durationEnv (name: string): number | undefined {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return undefined
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0) {
    fail(`${name} must be a positive number of milliseconds (got ${JSON.stringify(raw)})`)
  }
  return value
}

function portEnv (): number {
  const raw = process.env.PORT
  if (raw === undefined || raw.trim() === '') return 3000
  const port = Number(raw)
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`PORT must be an integer from 0 to 65535 (got ${JSON.stringify(raw)})`)
  return port
}

async function main (): Promise<void> {
  const port = portEnv()
  const host = process.env.HOST ?? '127.0.0.1'

  let secret = process.env.POW_SECRET
  const generatedSecret = secret === undefined || secret === ''
  if (generatedSecret) {
    if (process.env.NODE_ENV === 'production') {
      fail('POW_SECRET must be set in production (a random string of at least 32 characters)')
    }
    secret = randomBytes(36).toString('base64url') // 48 characters
  }

  const session: NonNullable<BuildAppOptions['session']> = {}
  const ttl = durationEnv('POW_SESSION_TTL_MS')
  const renewAfter = durationEnv('POW_SESSION_RENEWAL_MS')
  const rotationGrace = durationEnv('POW_ROTATION_GRACE_MS')
  const persistentTtl = durationEnv('POW_PERSISTENT_TTL_MS')
  if (ttl !== undefined) session.ttl = ttl
  if (renewAfter !== undefined) session.renewAfter = renewAfter
  if (rotationGrace !== undefined) session.rotationGrace = rotationGrace

  let app: FastifyInstance
  try {
    app = await buildApp({
      secret,
      redisUrl: process.env.REDIS_URL === '' ? undefined : process.env.REDIS_URL,
      databaseUrl: process.env.DATABASE_URL === '' ? undefined : process.env.DATABASE_URL,
      logger: { level: 'info' },
      session,
      persistentSession: persistentTtl === undefined ? {} : { ttl: persistentTtl }
    })
  } catch (err) {
    // Invalid plugin options (for example renewAfter >= ttl) end up here, named by the plugin.
    fail((err as Error).message)
  }

  if (process.env.REDIS_URL === undefined && process.env.DATABASE_URL === undefined) {
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
