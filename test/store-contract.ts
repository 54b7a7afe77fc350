import type { Test } from 'tap'
import type { PowStore, SessionRecord, TokenRecord } from '../lib/types.js'
import { hashToken, randomFingerprint, userBucket, randomToken } from '../lib/crypto.js'

/** What a store's test file hands the contract: a fresh, empty store and a way to let time pass. */
export interface ContractHarness {
  store: PowStore
  /** Lets `ms` pass for the store: a fake clock for MemoryStore, a real wait for a real server. */
  advance: (ms: number) => Promise<void>
  close: () => Promise<void>
}

// Short enough that a real server's expiry can be waited for; long enough to never race a round trip.
const TTL = 600
const GRACE = 200

let counter = 0
function unique (prefix: string): string {
  return `${prefix}-${process.pid}-${++counter}-${randomFingerprint().slice(0, 6)}`
}

function sessionRecord (userKey: string, fingerprint: string, metadata: Record<string, unknown> = {}): SessionRecord {
  const now = Date.now()
  return { userKey, fingerprint, insertedAt: now, signedInAt: now, metadata }
}

function tokenRecord (userKey: string, fingerprint: string, user: unknown): TokenRecord {
  return { userKey, fingerprint, user, metadata: { ip: '127.0.0.1' } }
}

/** A session-id or token hash as the plugin makes them: it carries the user's bucket. */
const sid = (userKey: string): string => hashToken(randomToken(userBucket(userKey)))

/**
 * The store contract: every `PowStore` must pass it. Each subtest gets a fresh harness, so
 * none depends on another's order or leftovers.
 */
export function storeContract (t: Test, makeHarness: () => Promise<ContractHarness>): void {
  async function setup (t: Test): Promise<ContractHarness> {
    const harness = await makeHarness()
    t.teardown(() => harness.close())
    return harness
  }

  t.test('putSession and getSession round-trip the record and the user', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const h = sid(userKey)
    const record = sessionRecord(userKey, 'fp1', { ip: '10.0.0.1', nested: { a: [1, 2] } })
    const user = { id: userKey, name: 'Alice' }
    await store.putSession(h, record, user, TTL, GRACE)
    const found = await store.getSession(h)
    t.same(found, { record, user, retired: false })
    t.not(found?.user, user, 'the user read back is a copy')
    t.equal(await store.getSession(sid(userKey)), null, 'an unknown id is null')
  })

  t.test('putSession without a user keeps the stored credentials; with one, every session sees it', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const [a, b] = [sid(userKey), sid(userKey)]
    await store.putSession(a, sessionRecord(userKey, 'fpA'), { id: userKey, v: 1 }, TTL, GRACE)
    await store.putSession(b, sessionRecord(userKey, 'fpB'), undefined, TTL, GRACE)
    t.same((await store.getSession(b))?.user, { id: userKey, v: 1 })
    await store.putSession(b, sessionRecord(userKey, 'fpB'), { id: userKey, v: 2 }, TTL, GRACE)
    t.same((await store.getSession(a))?.user, { id: userKey, v: 2 })
  })

  t.test('a put with the same fingerprint retires the older session: unclaimed until the new one is read, then for the grace only', async (t) => {
    const { store, advance } = await setup(t)
    const userKey = unique('u')
    const [old, renewed, other] = [sid(userKey), sid(userKey), sid(userKey)]
    await store.putSession(old, sessionRecord(userKey, 'fp'), { id: userKey }, TTL, GRACE)
    await store.putSession(other, sessionRecord(userKey, 'fp-other'), undefined, TTL, GRACE)
    const retiredAt = Date.now()
    await store.putSession(renewed, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE)
    const before = await store.getSession(old)
    t.equal(before?.retired, true, 'the old id still works, retired')
    t.ok(before?.unclaimedSince !== undefined && Math.abs(before.unclaimedSince - retiredAt) < 1000, 'unclaimed since the put: nobody has used the new id yet')
    t.notOk(before?.superseded, 'never read, but not a replacement itself: not superseded')
    t.same((await store.listSessions(userKey)).map((s) => s.sidHash).sort(), [renewed, other].sort(), 'the list shows one session per fingerprint')
    await advance(GRACE + 50)
    t.ok((await store.getSession(old))?.unclaimedSince, 'past the grace, an unclaimed old id still works')
    const fresh = await store.getSession(renewed)
    t.equal(fresh?.retired, false, 'the first read of the new id claims it')
    t.notOk(fresh?.superseded)
    t.equal((await store.getSession(other))?.retired, false, 'another fingerprint is untouched')
    const after = await store.getSession(old)
    t.equal(after?.retired, true, 'the old id works for the grace from the claim')
    t.equal(after?.unclaimedSince, undefined, 'claimed')
    await advance(GRACE + 50)
    t.equal(await store.getSession(old), null, 'the retired id dies after the grace')
    t.ok(await store.getSession(renewed))
    t.same((await store.listSessions(userKey)).map((s) => s.sidHash).sort(), [renewed, other].sort())
  })

  t.test('a session replaced before it was ever read is superseded; the one before stays unclaimed', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const [old, lost, again] = [sid(userKey), sid(userKey), sid(userKey)]
    await store.putSession(old, sessionRecord(userKey, 'fp'), { id: userKey }, TTL, GRACE)
    t.ok(await store.getSession(old))
    t.equal(await store.putSession(lost, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: old }), true)
    t.equal(await store.putSession(lost, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: old }), true, 'the same put again (a command sent twice) is written')
    t.ok((await store.getSession(old))?.unclaimedSince, 'and the old id is still unclaimed')
    // The answer carrying `lost` never arrived: the browser comes back with `old` and renews again.
    t.equal(await store.putSession(again, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: old }), true)
    const superseded = await store.getSession(lost)
    t.equal(superseded?.superseded, true, 'the never-read replacement is superseded')
    t.equal(superseded?.retired, true)
    t.ok((await store.getSession(old))?.unclaimedSince, 'reading a superseded id claims nothing')
    t.same((await store.listSessions(userKey)).map((s) => s.sidHash), [again], 'only the newest is listed')
    const fresh = await store.getSession(again)
    t.equal(fresh?.retired, false)
    t.notOk(fresh?.superseded)
    t.equal((await store.getSession(old))?.unclaimedSince, undefined, 'the newest one claims')
    t.equal((await store.getSession(lost))?.superseded, true, 'the superseded one stays superseded')
  })

  t.test('sessions expire after their ttl and leave the lists', async (t) => {
    const { store, advance } = await setup(t)
    const userKey = unique('u')
    const [short, long] = [sid(userKey), sid(userKey)]
    await store.putSession(short, sessionRecord(userKey, 'fp1'), { id: userKey }, TTL / 2, GRACE)
    await store.putSession(long, sessionRecord(userKey, 'fp2'), undefined, TTL * 2, GRACE)
    await advance(TTL / 2 + 50)
    t.equal(await store.getSession(short), null)
    t.same((await store.listSessions(userKey)).map((s) => s.sidHash), [long])
    await advance(TTL * 2)
    t.equal(await store.getSession(long), null)
    t.same(await store.listSessions(userKey), [])
    t.notOk((await store.listUsers()).some((u) => (u as { id: string }).id === userKey), 'an expired user is not listed')
  })

  t.test('listSessions reports each entry with its expiry', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const h = sid(userKey)
    const record = sessionRecord(userKey, 'fp', { ua: 'x' })
    const before = Date.now()
    await store.putSession(h, record, { id: userKey }, TTL, GRACE)
    const [entry] = await store.listSessions(userKey)
    t.equal(entry.sidHash, h)
    t.same(entry.record, record)
    t.ok(entry.expiresAt >= before + TTL - 5 && entry.expiresAt <= Date.now() + TTL + 5, 'expiresAt is now + ttl')
  })

  t.test('deleteSession removes the session; the last one takes the credentials with it', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const [a, b] = [sid(userKey), sid(userKey)]
    await store.putSession(a, sessionRecord(userKey, 'fpA'), { id: userKey }, TTL, GRACE)
    await store.putSession(b, sessionRecord(userKey, 'fpB'), undefined, TTL, GRACE)
    t.equal(await store.deleteSession(a), true)
    t.equal(await store.deleteSession(a), false, 'deleting twice reports nothing deleted')
    t.equal(await store.getSession(a), null)
    t.same((await store.listSessions(userKey)).map((s) => s.sidHash), [b])
    t.ok(await store.getSession(b), 'credentials stay while a session lives')
    await store.deleteSession(b)
    const c = sid(userKey)
    await store.putSession(c, sessionRecord(userKey, 'fpC'), undefined, TTL, GRACE)
    t.equal(await store.getSession(c), null, 'the credentials went with the last session')
  })

  t.test('listUsers lists each user with a live session once', async (t) => {
    const { store } = await setup(t)
    const [u1, u2] = [unique('u'), unique('u')]
    await store.putSession(sid(u1), sessionRecord(u1, 'a'), { id: u1 }, TTL, GRACE)
    await store.putSession(sid(u1), sessionRecord(u1, 'b'), undefined, TTL, GRACE)
    const gone = sid(u2)
    await store.putSession(gone, sessionRecord(u2, 'a'), { id: u2 }, TTL, GRACE)
    await store.deleteSession(gone)
    const ids = (await store.listUsers()).map((u) => (u as { id: string }).id).filter((id) => id === u1 || id === u2)
    t.same(ids, [u1])
  })

  t.test('updateUser replaces the credentials and the user held by tokens', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const h = sid(userKey)
    const token = sid(userKey)
    await store.putSession(h, sessionRecord(userKey, 'fp'), { id: userKey, name: 'old' }, TTL, GRACE)
    await store.putToken(token, tokenRecord(userKey, 'fp', { id: userKey, name: 'old' }), TTL)
    await store.updateUser(userKey, { id: userKey, name: 'new' })
    t.same((await store.getSession(h))?.user, { id: userKey, name: 'new' })
    t.same((await store.getToken(token))?.user, { id: userKey, name: 'new' })
    await store.updateUser(unique('nobody'), { id: 'x' })
    t.pass('updating a user with nothing stored is a no-op')
  })

  t.test('revoke by fingerprint deletes its sessions, retired ones included, and its tokens', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const otherUser = unique('u')
    const [old, current, keep, foreign] = [sid(userKey), sid(userKey), sid(userKey), sid(otherUser)]
    const [token, keepToken, foreignToken] = [sid(userKey), sid(userKey), sid(otherUser)]
    await store.putSession(old, sessionRecord(userKey, 'fp'), { id: userKey }, TTL, GRACE)
    await store.putSession(current, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE)
    await store.putSession(keep, sessionRecord(userKey, 'fp-keep'), undefined, TTL, GRACE)
    await store.putSession(foreign, sessionRecord(otherUser, 'fp'), { id: otherUser }, TTL, GRACE)
    await store.putToken(token, tokenRecord(userKey, 'fp', { id: userKey }), TTL)
    await store.putToken(keepToken, tokenRecord(userKey, 'fp-keep', { id: userKey }), TTL)
    await store.putToken(foreignToken, tokenRecord(otherUser, 'fp', { id: otherUser }), TTL)

    t.same(await store.revoke(userKey, { fingerprint: 'fp' }), ['fp'])
    t.equal(await store.getSession(old), null, 'the retired session is gone too')
    t.equal(await store.getSession(current), null)
    t.equal(await store.getToken(token), null, 'the token of the fingerprint is gone')
    t.ok(await store.getSession(keep), 'another fingerprint stays')
    t.ok(await store.getSession(foreign), "another user's session with the same fingerprint stays")
    t.ok(await store.getToken(foreignToken))
    t.ok(await store.getToken(keepToken))
    t.same(await store.revoke(userKey, { fingerprint: 'nope' }), [], 'an unknown fingerprint revokes nothing')
    t.same(await store.revoke(unique('nobody'), { fingerprint: 'fp' }), [])
  })

  t.test('revoke with except keeps one fingerprint; a token-only fingerprint is revoked too', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const [a, b, c] = [sid(userKey), sid(userKey), sid(userKey)]
    const [ta, tOnly] = [sid(userKey), sid(userKey)]
    await store.putSession(a, sessionRecord(userKey, 'fpA'), { id: userKey }, TTL, GRACE)
    await store.putSession(b, sessionRecord(userKey, 'fpB'), undefined, TTL, GRACE)
    await store.putSession(c, sessionRecord(userKey, 'fpC'), undefined, TTL, GRACE)
    await store.putToken(ta, tokenRecord(userKey, 'fpA', { id: userKey }), TTL)
    await store.putToken(tOnly, tokenRecord(userKey, 'fpD', { id: userKey }), TTL)
    const revoked = await store.revoke(userKey, { except: 'fpA' })
    t.same(revoked.sort(), ['fpB', 'fpC', 'fpD'])
    t.ok(await store.getSession(a))
    t.equal(await store.getSession(b), null)
    t.equal(await store.getSession(c), null)
    t.equal(await store.getToken(tOnly), null)
    t.ok(await store.getToken(ta))
    t.same((await store.listSessions(userKey)).map((s) => s.record.fingerprint), ['fpA'])
  })

  function rotation (userKey: string, fingerprint: string, metadata: Record<string, unknown> = { ip: '127.0.0.1' }) {
    const now = Date.now()
    return {
      sidHash: sid(userKey),
      session: { userKey, fingerprint, insertedAt: now, signedInAt: now, metadata },
      sessionTtl: TTL,
      grace: GRACE,
      tokenHash: sid(userKey),
      tokenTtl: TTL
    }
  }

  t.test('getToken reads a token; rotateToken uses it once and stores the new session and token', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const token = sid(userKey)
    const record = tokenRecord(userKey, 'fp', { id: userKey, name: 'A' })
    await store.putToken(token, record, TTL)
    t.same(await store.getToken(token), record)
    t.equal(await store.getToken(sid(userKey)), null, 'an unknown token is null')

    const old = sid(userKey)
    await store.putSession(old, sessionRecord(userKey, 'fp'), { id: userKey, name: 'A' }, TTL, GRACE)
    const next = rotation(userKey, 'fp')
    const usedAt = Date.now()
    t.equal(await store.rotateToken(token, usedAt, next), 'rotated')
    t.same(await store.getToken(token), { ...record, usedAt, unclaimed: true }, 'the old token stays, marked used, unclaimed')
    t.equal((await store.getSession(old))?.retired, true, 'an older session of the fingerprint is retired')
    t.same(await store.getToken(next.tokenHash), { userKey, fingerprint: 'fp', user: { id: userKey, name: 'A' }, metadata: { ip: '127.0.0.1' } })
    t.same((await store.listSessions(userKey)).map((s) => s.sidHash), [next.sidHash])

    const again = rotation(userKey, 'fp')
    t.equal(await store.rotateToken(token, usedAt + 5, again), 'used', 'a used token does not rotate to other ids')
    t.equal(await store.getSession(again.sidHash), null, 'and writes nothing')
    t.equal(await store.getToken(again.tokenHash), null)
    t.equal(await store.rotateToken(token, usedAt + 5, next), 'rotated', 'the same rotation again (a command sent twice) writes the same again')
    t.equal((await store.getToken(token))?.usedAt, usedAt, 'keeping when it was first used')

    t.same(await store.getSession(next.sidHash), { record: next.session, user: { id: userKey, name: 'A' }, retired: false }, 'the new session')
    t.same(await store.getToken(token), { ...record, usedAt }, 'reading the new session claims the rotation')
    t.equal(await store.rotateToken(token, usedAt + 10, next), 'used', 'then it is used for good')
    t.equal(await store.rotateToken(token, usedAt + GRACE + 10, { ...rotation(userKey, 'fp'), again: true }), 'used', 'even with again')
    t.equal(await store.rotateToken(sid(userKey), usedAt, rotation(userKey, 'fp')), 'missing')
  })

  t.test('an unclaimed rotation rotates again past the grace; the earlier new session and token are superseded', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const token = sid(userKey)
    await store.putToken(token, tokenRecord(userKey, 'fp', { id: userKey }), TTL)
    const first = rotation(userKey, 'fp')
    const usedAt = Date.now()
    t.equal(await store.rotateToken(token, usedAt, first), 'rotated')
    const second = { ...rotation(userKey, 'fp'), again: true }
    t.equal(await store.rotateToken(token, usedAt + GRACE / 2, second), 'used', 'not within the grace')
    t.equal(await store.getSession(second.sidHash), null, 'which writes nothing')
    t.equal(await store.rotateToken(token, usedAt + GRACE + 1, second), 'rotated', 'past the grace it rotates again')
    t.equal(await store.rotateToken(token, usedAt + GRACE + 2, { ...rotation(userKey, 'fp'), again: true }), 'used', 'once: it was used again just now')
    t.equal((await store.getToken(token))?.usedAt, usedAt + GRACE + 1)
    t.equal((await store.getSession(first.sidHash))?.superseded, true, 'the first new session is superseded')
    t.equal((await store.getToken(first.tokenHash))?.superseded, true, 'and the first new token')
    t.equal(await store.rotateToken(first.tokenHash, Date.now(), rotation(userKey, 'fp')), 'used', 'which does not rotate')
    t.same((await store.listSessions(userKey)).map((s) => s.sidHash), [second.sidHash])
    t.equal((await store.getSession(second.sidHash))?.retired, false)
    t.notOk((await store.getToken(token))?.unclaimed, 'reading the newest session claims the token')
  })

  t.test('an unclaimed token rotates again at most 3 times', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const token = sid(userKey)
    await store.putToken(token, tokenRecord(userKey, 'fp', { id: userKey }), TTL)
    let at = Date.now()
    t.equal(await store.rotateToken(token, at, rotation(userKey, 'fp')), 'rotated')
    for (let i = 1; i <= 3; i++) {
      at += GRACE + 1
      t.equal(await store.rotateToken(token, at, { ...rotation(userKey, 'fp'), again: true }), 'rotated', `again, ${i}`)
      t.equal((await store.getToken(token))?.rotatedAgain, i)
    }
    const refused = { ...rotation(userKey, 'fp'), again: true }
    t.equal(await store.rotateToken(token, at + GRACE + 1, refused), 'used', 'not a fourth time')
    t.equal(await store.getSession(refused.sidHash), null, 'which writes nothing')
  })

  t.test('a retired session renews again at most 3 times', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const old = sid(userKey)
    await store.putSession(old, sessionRecord(userKey, 'fp'), { id: userKey }, TTL, GRACE)
    t.equal(await store.putSession(sid(userKey), sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: old }), true, 'renewed')
    for (let i = 1; i <= 3; i++) {
      t.equal(await store.putSession(sid(userKey), sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: old }), true, `renewed again, ${i}`)
    }
    const refused = sid(userKey)
    t.equal(await store.putSession(refused, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: old }), false, 'not a fourth time')
    t.equal(await store.getSession(refused), null)
  })

  t.test('renewing an unread replacement claims it instead of superseding it', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const [old, unread, next] = [sid(userKey), sid(userKey), sid(userKey)]
    await store.putSession(old, sessionRecord(userKey, 'fp'), { id: userKey }, TTL, GRACE)
    await store.putSession(unread, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: old })
    // Its read (whose claim a store may send without waiting) happened; the claim had not landed.
    t.equal(await store.putSession(next, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: unread }), true)
    const renewed = await store.getSession(unread)
    t.equal(renewed?.retired, true, 'the renewed session is retired')
    t.notOk(renewed?.superseded, 'not superseded')
    t.equal((await store.getSession(old))?.unclaimedSince, undefined, 'and its own claim ran: the old one lives out the grace')
  })

  t.test('deleting an unread replacement claims it: the sessions it retired do not outlive it', async (t) => {
    const { store, advance } = await setup(t)
    const userKey = unique('u')
    const [old, unread] = [sid(userKey), sid(userKey)]
    await store.putSession(old, sessionRecord(userKey, 'fp'), { id: userKey }, TTL, GRACE)
    await store.putSession(unread, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: old })
    t.ok((await store.getSession(old))?.unclaimedSince)
    t.equal(await store.deleteSession(unread), true)
    t.equal((await store.getSession(old))?.unclaimedSince, undefined, 'the old one is claimed')
    await advance(GRACE + 50)
    t.equal(await store.getSession(old), null, 'and dies after the grace')
  })

  t.test('rotating the token a rotation stored claims that rotation', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const token = sid(userKey)
    await store.putToken(token, tokenRecord(userKey, 'fp', { id: userKey }), TTL)
    const first = rotation(userKey, 'fp')
    t.equal(await store.rotateToken(token, Date.now(), first), 'rotated')
    t.equal((await store.getToken(token))?.unclaimed, true)
    // The browser dropped its session cookie before using the new session: the new token signs it in.
    const second = rotation(userKey, 'fp')
    t.equal(await store.rotateToken(first.tokenHash, Date.now(), second), 'rotated')
    t.notOk((await store.getToken(token))?.unclaimed, 'the first token is claimed')
    t.equal(await store.rotateToken(token, Date.now(), first), 'used', 'and no longer rotates')
    t.equal((await store.getToken(first.tokenHash))?.unclaimed, true, 'the second rotation is unclaimed')
  })

  t.test('rotateToken keeps newer stored credentials and fills in missing ones', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const [token, other] = [sid(userKey), sid(userKey)]
    await store.putToken(token, tokenRecord(userKey, 'fpA', { id: userKey, v: 'token' }), TTL)
    const first = rotation(userKey, 'fpA')
    t.equal(await store.rotateToken(token, Date.now(), first), 'rotated')
    t.same((await store.getSession(first.sidHash))?.user, { id: userKey, v: 'token' }, 'no credentials stored: the token\'s user')

    await store.updateUser(userKey, { id: userKey, v: 'newer' })
    await store.putToken(other, tokenRecord(userKey, 'fpB', { id: userKey, v: 'older' }), TTL)
    const second = rotation(userKey, 'fpB')
    t.equal(await store.rotateToken(other, Date.now(), second), 'rotated')
    t.same((await store.getSession(second.sidHash))?.user, { id: userKey, v: 'newer' }, 'a newer update wins')
    t.same((await store.getToken(second.tokenHash))?.user, { id: userKey, v: 'newer' }, 'in the new token too')
  })

  t.test('of concurrent rotations of one token exactly one rotates', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const token = sid(userKey)
    await store.putToken(token, tokenRecord(userKey, 'fp', { id: userKey }), TTL)
    const rotations = Array.from({ length: 20 }, () => rotation(userKey, 'fp'))
    const outcomes = await Promise.all(rotations.map((r) => store.rotateToken(token, Date.now(), r)))
    t.equal(outcomes.filter((o) => o === 'rotated').length, 1)
    t.equal(outcomes.filter((o) => o === 'used').length, 19)
    t.equal((await store.listSessions(userKey)).length, 1, 'one session')
  })

  t.test('a revoked token does not rotate', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const token = sid(userKey)
    await store.putToken(token, tokenRecord(userKey, 'fp', { id: userKey }), TTL)
    await store.revoke(userKey, { fingerprint: 'fp' })
    const next = rotation(userKey, 'fp')
    t.equal(await store.rotateToken(token, Date.now(), next), 'missing')
    t.equal(await store.getSession(next.sidHash), null)
    t.same(await store.listSessions(userKey), [])
  })

  t.test('tokens expire; touchToken extends an unused token only; deleteToken deletes', async (t) => {
    const { store, advance } = await setup(t)
    const userKey = unique('u')
    const [plain, touched, used, deleted] = [sid(userKey), sid(userKey), sid(userKey), sid(userKey)]
    for (const h of [plain, touched, used, deleted]) await store.putToken(h, tokenRecord(userKey, 'fp', { id: userKey }), TTL)
    await store.rotateToken(used, Date.now(), rotation(userKey, 'fp2'))
    await store.deleteToken(deleted)
    t.equal(await store.getToken(deleted), null)
    await advance(TTL / 2)
    await store.touchToken(touched, TTL)
    await store.touchToken(used, TTL)
    await store.touchToken(sid(userKey), TTL)
    await advance(TTL / 2 + 100)
    t.equal(await store.getToken(plain), null, 'an untouched token expired')
    t.equal(await store.getToken(used), null, 'a used token is not extended')
    t.ok(await store.getToken(touched), 'the touched token lives on')
  })

  t.test('lock: one of concurrent callers gets it, and it frees itself after its ttl', async (t) => {
    const { store, advance } = await setup(t)
    const key = unique('lock')
    const results = await Promise.all(Array.from({ length: 20 }, () => store.lock(key, GRACE)))
    t.equal(results.filter(Boolean).length, 1)
    t.equal(await store.lock(unique('lock'), GRACE), true, 'another key is free')
    await advance(GRACE + 50)
    t.equal(await store.lock(key, GRACE), true, 'free again after the ttl')
  })

  t.test('putToken with a condition writes only while the named session exists', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const [session, gone, token, blocked] = [sid(userKey), sid(userKey), sid(userKey), sid(userKey)]
    await store.putSession(session, sessionRecord(userKey, 'fp'), { id: userKey }, TTL, GRACE)
    t.equal(await store.putToken(token, tokenRecord(userKey, 'fp', { id: userKey }), TTL, { session }), true)
    t.ok(await store.getToken(token))
    t.equal(await store.putToken(blocked, tokenRecord(userKey, 'fp', { id: userKey }), TTL, { session: gone }), false)
    t.equal(await store.getToken(blocked), null, 'nothing written when the session is missing')
  })

  t.test('putSession with a condition writes only while the named session exists', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const [old, gone, renewed, blocked] = [sid(userKey), sid(userKey), sid(userKey), sid(userKey)]
    await store.putSession(old, sessionRecord(userKey, 'fp'), { id: userKey }, TTL, GRACE)
    t.equal(await store.putSession(renewed, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: old }), true)
    t.equal((await store.getSession(old))?.retired, true, 'the condition session was retired as usual')
    t.equal(await store.putSession(blocked, sessionRecord(userKey, 'fp'), undefined, TTL, GRACE, { session: gone }), false)
    t.equal(await store.getSession(blocked), null, 'nothing written when the session is missing')
    t.equal((await store.getSession(renewed))?.retired, false, 'and nothing retired')
  })

  t.test("a hash must carry its user's bucket", async (t) => {
    const { store } = await setup(t)
    const [alice, bob] = [unique('u'), unique('u')]
    await t.rejects(store.putSession(sid(bob), sessionRecord(alice, 'fp'), { id: alice }, TTL, GRACE), TypeError)
    await t.rejects(store.putToken(sid(bob), tokenRecord(alice, 'fp', { id: alice }), TTL), TypeError)
    const token = sid(alice)
    await store.putToken(token, tokenRecord(alice, 'fp', { id: alice }), TTL)
    await t.rejects(store.rotateToken(token, Date.now(), { ...rotation(alice, 'fp'), sidHash: sid(bob) }), TypeError)
    t.same(await store.listSessions(alice), [], 'nothing stored')
  })

  t.test('many concurrent puts for one user all land in the list', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const ids = Array.from({ length: 50 }, () => sid(userKey))
    await Promise.all(ids.map((h, i) => store.putSession(h, sessionRecord(userKey, `fp${i}`), { id: userKey }, TTL, GRACE)))
    t.same((await store.listSessions(userKey)).map((s) => s.sidHash).sort(), ids.sort())
  })
}
