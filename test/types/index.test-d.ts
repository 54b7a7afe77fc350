// Type tests: compiled by `npm run typecheck` (part of `npm test`); an unmet @ts-expect-error fails it.
import Fastify, { type FastifyRequest } from 'fastify'
import pow, {
  fastifyPow, MemoryStore, PowMetadataTooLargeError, PowOptionError, PowSignInRevokedError, PowStoreError, type DeletedReason, type DeviceChange,
  type PowStore, type PowUser, type SessionInfo, type StoredDevice
} from '../../lib/index.js'

declare module '../../lib/types.js' {
  interface PowUser { id: number, email: string }
  interface PowMetadata { ip?: string, browser?: string }
}

const app = Fastify()
app.register(pow, { secret: 'x'.repeat(32) })
app.register(fastifyPow, { secret: ['a'.repeat(32), 'b'.repeat(32)], store: new MemoryStore(), persistentSession: false })
app.register(pow, {
  secret: 'x'.repeat(32),
  userId: (user) => user.email,
  reloadUser: async (user, request: FastifyRequest) => (request.ip === '' ? null : user),
  maxDevices: 10,
  maxMetadataBytes: 1024,
  session: { ttl: 1, renewAfter: 1, rotationGrace: 1, absoluteTtl: 1, cookieName: '__Host-s', cookie: { sameSite: 'strict' } },
  persistentSession: { ttl: 1, absoluteTtl: 1, cookieName: 'r', cookie: { domain: 'example.com' } }
})
// @ts-expect-error secret is required
app.register(pow, {})
// @ts-expect-error durations are numbers of milliseconds
app.register(pow, { secret: 'x'.repeat(32), session: { ttl: '30m' } })

app.get('/', async (request) => {
  const user: PowUser | null = request.powSession.user
  if (user !== null) {
    const id: number = user.id
    // @ts-expect-error the merged user type has no such field
    void user.nope
    void id
  }
  await request.powSession.create({ id: 1, email: 'a@b.c' }, { persistent: true, metadata: { ip: request.ip } })
  // @ts-expect-error create needs the merged user type
  await request.powSession.create({ name: 'x' })
  const sessions: SessionInfo[] = await request.powSession.sessions()
  const remembered: boolean = sessions[0].remembered
  const fresh: boolean = request.powSession.isFresh(5 * 60_000)
  void remembered
  void fresh
  const fingerprint: string | undefined = request.powSession.metadata?.fingerprint
  const deleted: boolean = await request.powSession.deleteSession(sessions[0].fingerprint)
  const others: string[] = await request.powSession.deleteOtherSessions()
  await request.powSession.update({ id: 1, email: 'x@y.z' })
  await request.powSession.delete()
  await request.powPersistentSession?.create({ id: 1, email: 'a@b.c' })
  await request.powPersistentSession?.delete()
  return { fingerprint, deleted, others }
})

const users: PowUser[] = await app.pow.credentials.users()
await app.pow.credentials.put('id', { id: 1, email: 'a' }, { device: 'x' })
const revoked: string[] = await app.pow.credentials.deleteUserSessions(users[0], { except: 'fp' })
// Admin calls take a user id as well as a user.
await app.pow.credentials.deleteUserSessions(42)
await app.pow.credentials.sessions('42')
app.pow.on('session:deleted', (event) => { const reason: DeletedReason | undefined = event.reason; void reason })
app.pow.on('persistent:reuse', (event) => { const fp: string = event.fingerprint; void fp })
app.pow.on('session:reuse', (event) => { const fp: string = event.fingerprint; void fp })
const stored: StoredDevice = { data: '{}', user: '{}', version: 1 }
const change: DeviceChange = { userKey: 'u', devices: [{ fingerprint: 'f', version: 0, data: '{}', ttl: 1000, usedAt: 0 }], limit: 10 }
const revokedError: boolean = new Error() instanceof PowSignInRevokedError || new Error() instanceof PowMetadataTooLargeError
void stored
void change
void revokedError
// @ts-expect-error unknown event
app.pow.on('session:exploded', () => {})
const store: PowStore = new MemoryStore()
const isOptionError: boolean = new Error() instanceof PowOptionError || new Error() instanceof PowStoreError
void revoked
void store
void isOptionError

// Custom metadata merges into PowMetadata, and requireUser() is the user without null.
app.get('/typed', { onRequest: app.pow.requireUser }, async (request) => {
  const user: PowUser = request.powSession.requireUser()
  const ip: string | undefined = request.powSession.metadata?.ip
  await request.powSession.create(user, { metadata: { ip: request.ip, browser: 'Firefox' } })
  // @ts-expect-error a merged metadata field keeps its type
  await request.powSession.create(user, { metadata: { ip: 1 } })
  const listed: string | undefined = (await request.powSession.sessions())[0]?.metadata.browser
  await app.pow.credentials.deleteUserSessions(2, { except: request.powSession.metadata?.fingerprint, request, actor: 'admin' })
  app.pow.on('session:deleted', (event) => {
    const id: number = event.user.id
    void id
  })
  return { ip, listed }
})
app.get('/preHandled', { preHandler: app.pow.requireUser }, async () => ({}))

// Both ioredis clients fit RedisStore's structural RedisClient, waitForReplicas (pipeline) included.
{
  const { Redis, Cluster } = await import('ioredis')
  const { RedisStore } = await import('../../lib/index.js')
  const stores: PowStore[] = [
    new RedisStore(new Redis({ lazyConnect: true }), { waitForReplicas: 1, replicaTimeout: 50 }),
    new RedisStore(new Cluster([], { lazyConnect: true }), { commandTimeout: 1000, waitForReplicas: 1 }),
    // @ts-expect-error replicaTimeout is a number of milliseconds
    new RedisStore(new Redis({ lazyConnect: true }), { replicaTimeout: '50ms' })
  ]
  void stores
}
