/**
 * A load of sign-ins in a process of its own (so that its CPU does not queue the measuring
 * process's requests): an app on the Redis at REDIS_PORT signs user LOAD_USER in until it has
 * maxDevices devices, says 'ready', then runs LOAD_CONCURRENCY sign-in loops of that user until
 * it is sent 'stop', and answers with the number of sign-ins.
 */
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import pow, { RedisStore } from '../../lib/index.js'
import { SECRET } from './app.js'

const port = Number(process.env.REDIS_PORT)
const userId = Number(process.env.LOAD_USER)
const concurrency = Number(process.env.LOAD_CONCURRENCY)
const maxDevices = Number(process.env.LOAD_MAX_DEVICES)

const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true })
await client.connect()
const app = Fastify({ logger: false })
await app.register(pow, { secret: SECRET, store: new RedisStore(client), maxDevices })
app.post('/login', async (request) => {
  await request.powSession.create({ id: userId, name: `user${userId}` } as never, { persistent: true, metadata: { userAgent: 'load' } })
  return {}
})
await app.ready()

async function login (): Promise<void> {
  const res = await app.inject({ method: 'POST', url: '/login' })
  if (res.statusCode !== 200) throw new Error(`login answered ${res.statusCode}: ${res.body}`)
}

for (let i = 0; i < maxDevices; i++) await login()
let running = true
let count = 0
process.on('message', (message) => { if (message === 'stop') running = false })
;(process.send as (m: unknown) => void)('ready')
await Promise.all(Array.from({ length: concurrency }, async () => {
  // eslint-disable-next-line no-unmodified-loop-condition -- set by the message listener
  while (running) {
    await login()
    count++
  }
}))
;(process.send as (m: unknown) => void)({ logins: count })
await app.close()
client.disconnect()
