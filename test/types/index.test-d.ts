// Type tests: compiled by `npm run typecheck` (part of `npm test`); an unmet @ts-expect-error fails it.
import Fastify, { type FastifyRequest } from 'fastify'
import pow, {
  fastifyPow, MemoryStore, PowOptionError, PowSignInRevokedError, PowStoreError, type PowStore, type PowUser, type SessionInfo,
  type StoredSession, type TokenRecord
} from '../../lib/index.js'

declare module '../../lib/types.js' {
  interface PowUser { id: number, email: string }
}

const app = Fastify()
app.register(pow, { secret: 'x'.repeat(32) })
app.register(fastifyPow, { secret: ['a'.repeat(32), 'b'.repeat(32)], store: new MemoryStore(), persistentSession: false })
app.register(pow, {
  secret: 'x'.repeat(32),
  userId: (user) => user.email,
  reloadUser: async (user, request: FastifyRequest) => (request.ip === '' ? null : user),
  session: { ttl: 1, renewAfter: 1, rotationGrace: 1, absoluteTtl: 1, cookieName: '__Host-s', cookie: { sameSite: 'strict' } },
  persistentSession: { ttl: 1, cookieName: 'r', cookie: { domain: 'example.com' } }
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
app.pow.on('persistent:reuse', (event) => { const fp: string = event.fingerprint; void fp })
app.pow.on('session:reuse', (event) => { const fp: string = event.fingerprint; void fp })
const stored: StoredSession = { record: { userKey: 'u', fingerprint: 'f', insertedAt: 0, signedInAt: 0, metadata: {} }, user: {}, retired: true, unclaimedSince: 1, superseded: false }
const token: Partial<TokenRecord> = { unclaimed: true, superseded: false }
const revokedError: boolean = new Error() instanceof PowSignInRevokedError
void stored
void token
void revokedError
// @ts-expect-error unknown event
app.pow.on('session:exploded', () => {})
const store: PowStore = new MemoryStore()
const isOptionError: boolean = new Error() instanceof PowOptionError || new Error() instanceof PowStoreError
void revoked
void store
void isOptionError
