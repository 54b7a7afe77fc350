import type { Test } from 'tap'
import type { CommitResult, DeviceChange, DeviceWrite, PowStore, StoredDevice } from '../lib/types.js'
import { randomFingerprint, userBucket } from '../lib/crypto.js'

/** What a store's test file hands the contract: a fresh, empty store and a way to let time pass. */
export interface ContractHarness {
  store: PowStore
  /** Lets `ms` pass for the store: a fake clock for MemoryStore, a real wait for a real server. */
  advance: (ms: number) => Promise<void>
  close: () => Promise<void>
}

// Short enough that a real server's expiry can be waited for; long enough to never race a round trip.
const TTL = 600

let counter = 0
function unique (prefix: string): string {
  return `${prefix}-${process.pid}-${++counter}-${randomFingerprint().slice(0, 6)}`
}

/** A user key whose bucket differs from `userKey`'s (a 24-bit bucket: the first try almost always). */
function otherBucket (userKey: string): string {
  for (;;) {
    const other = userBucket(unique('b'))
    if (other !== userBucket(userKey)) return other
  }
}

/**
 * Two user keys in one bucket: a sharded store keeps them in one slot and must still tell them
 * apart. The bucket has 24 bits, so a collision takes some 5000 hashes.
 */
function sameBucket (): [string, string] {
  const seen = new Map<string, string>()
  const base = unique('s')
  for (let i = 0; ; i++) {
    const key = `${base}-${i}`
    const first = seen.get(userBucket(key))
    if (first !== undefined) return [first, key]
    seen.set(userBucket(key), key)
  }
}

// The store never parses data or user, so any JSON text will do.
const data = (n: number, meta = 'x'): string => JSON.stringify({ n, meta })
const creds = (userKey: string, v = 1): string => JSON.stringify({ id: userKey, v })

/** A device write with the defaults most subtests want: the ttl, a usedAt, no precondition. */
function write (fingerprint: string, fields: Partial<DeviceWrite> = {}): DeviceWrite {
  return { fingerprint, data: data(1), ttl: TTL, usedAt: Date.now(), ...fields }
}

const fingerprints = (n: number): string[] => Array.from({ length: n }, () => randomFingerprint())
const sorted = (values: string[]): string[] => [...values].sort()
/** A result to compare whole: evicted sorted, since its order is not part of the contract. */
const outcome = (result: CommitResult): CommitResult => ({ ok: result.ok, evicted: sorted(result.evicted) })
const OK = { ok: true, evicted: [] }
const REFUSED = { ok: false, evicted: [] }
/** What a device holds, without its version (which the store picks). */
const held = (device: StoredDevice | null): { data: string, user: string } | null =>
  device === null ? null : { data: device.data, user: device.user }

/**
 * The store contract: every `PowStore` must pass it. Each subtest gets a fresh harness and its
 * own user keys, so none depends on another's order or leftovers.
 */
export function storeContract (t: Test, makeHarness: () => Promise<ContractHarness>): void {
  async function setup (t: Test): Promise<ContractHarness> {
    const harness = await makeHarness()
    t.teardown(() => harness.close())
    return harness
  }

  t.test('commit then read round-trips data and user exactly; the version changes with every write', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const bucket = userBucket(userKey)
    const fingerprint = randomFingerprint()
    // Quotes, backslashes, escapes and multi-byte text: what a store that builds strings or counts bytes gets wrong.
    const samples = [
      data(1),
      JSON.stringify({ meta: 'héllo ✓ 日本語 🎉', quote: '"\'\\', escaped: 'a\nb\tc\u0000' }),
      JSON.stringify({ big: 'x'.repeat(2048) + 'ü🎉'.repeat(512) })
    ]
    const user = JSON.stringify({ id: userKey, name: 'Zoë Łukasz 🦊', note: '"}{\\' })
    const versions: number[] = []
    for (const [i, sample] of samples.entries()) {
      t.same(outcome(await store.commit({ userKey, user, devices: [write(fingerprint, { data: sample })] })), OK, `write ${i}`)
      const found = await store.read(bucket, fingerprint)
      t.equal(found?.data, sample, `data ${i} reads back exactly`)
      t.equal(found?.user, user, `user reads back exactly after write ${i}`)
      t.type(found?.version, 'number', 'the version is a number')
      t.ok((found?.version ?? 0) > 0, `the version is positive: ${found?.version}`)
      versions.push(found?.version ?? 0)
    }
    t.equal(new Set(versions).size, versions.length, `a new version with every write: ${versions.join(', ')}`)
    t.equal(await store.read(bucket, randomFingerprint()), null, 'an unknown fingerprint is null')
    t.equal(await store.read(otherBucket(userKey), fingerprint), null, 'a fingerprint in the wrong bucket is null')
  })

  t.test('versions: 0 creates only, a stale version is refused, a change is all or nothing, undefined always applies', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const bucket = userBucket(userKey)
    const [a, b, c] = fingerprints(3)
    const user = creds(userKey)

    t.same(outcome(await store.commit({ userKey, user, devices: [write(a, { version: 0, data: data(1) })] })), OK, 'version 0 creates a missing device')
    const created = await store.read(bucket, a)
    t.same(outcome(await store.commit({ userKey, devices: [write(a, { version: 0, data: data(2) })] })), REFUSED, 'version 0 on an existing device is refused')
    t.same(await store.read(bucket, a), created, 'and changes neither data nor version')

    t.same(outcome(await store.commit({ userKey, devices: [write(b, { version: 12345, data: data(1) })] })), REFUSED, 'a version on a missing device is refused')
    t.equal(await store.read(bucket, b), null, 'and creates nothing')

    const read = created?.version ?? 0
    t.same(outcome(await store.commit({ userKey, devices: [write(a, { version: read, data: data(3) })] })), OK, 'the version read applies')
    const after = await store.read(bucket, a)
    t.same(outcome(await store.commit({ userKey, devices: [write(a, { version: read, data: data(4) })] })), REFUSED, 'the same version again is stale')
    t.same(await store.read(bucket, a), after, 'the first write stands')

    // Two devices, one precondition stale: neither is written, nor the user, nor the limit applied.
    await store.commit({ userKey, devices: [write(b, { version: 0, data: data(1) })] })
    const stale = (await store.read(bucket, b))?.version
    await store.commit({ userKey, devices: [write(b, { data: data(2) })] })
    const before = [await store.read(bucket, a), await store.read(bucket, b)]
    const change: DeviceChange = {
      userKey,
      user: creds(userKey, 2),
      limit: 1,
      devices: [write(a, { version: after?.version, data: data(5) }), write(b, { version: stale, data: data(5) }), write(c, { version: 0 })]
    }
    t.same(outcome(await store.commit(change)), REFUSED, 'one stale version refuses the whole change')
    t.same([await store.read(bucket, a), await store.read(bucket, b)], before, 'neither device was written, nor the user changed')
    t.equal(await store.read(bucket, c), null, 'the new device in the refused change was not created')
    t.equal((await store.list(userKey)).length, 2, 'the limit did not run')

    t.same(outcome(await store.commit({ userKey, devices: [write(a, { data: data(6) }), write(c, { data: data(6) })] })), OK, 'without a version a write applies')
    t.equal((await store.read(bucket, a))?.data, data(6), 'to an existing device')
    t.equal((await store.read(bucket, c))?.data, data(6), 'and to a missing one, creating it')
  })

  t.test('a write with data null deletes the device, with or without a version; a missing device deletes fine', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const bucket = userBucket(userKey)
    const [a, b, kept] = fingerprints(3)
    await store.commit({ userKey, user: creds(userKey), devices: [write(a), write(b), write(kept)] })
    const version = (await store.read(bucket, a))?.version
    t.same(outcome(await store.commit({ userKey, devices: [write(a, { version: (version ?? 0) + 1000, data: null })] })), REFUSED, 'a delete at a wrong version is refused')
    t.ok(await store.read(bucket, a), 'and the device stays')
    t.same(outcome(await store.commit({ userKey, devices: [write(a, { version, data: null })] })), OK, 'a delete at the version read')
    t.same(outcome(await store.commit({ userKey, devices: [write(b, { data: null })] })), OK, 'a delete without a version')
    t.equal(await store.read(bucket, a), null, 'the first is gone')
    t.equal(await store.read(bucket, b), null, 'the second is gone')
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [kept], 'neither is listed; the other device stays')
    t.same(outcome(await store.commit({ userKey, devices: [write(a, { data: null }), write(randomFingerprint(), { data: null })] })), OK, 'deleting missing devices is fine')
  })

  t.test('a device lives for the ttl of its latest write; expired devices are not listed, not counted, and can be created again', async (t) => {
    const { store, advance } = await setup(t)
    const userKey = unique('u')
    const bucket = userBucket(userKey)
    const [plain, shortened, extended, added] = fingerprints(4)
    await store.commit({
      userKey,
      user: creds(userKey),
      devices: [write(plain, { usedAt: 1 }), write(shortened, { ttl: TTL * 3, usedAt: 2 }), write(extended, { ttl: TTL / 2, usedAt: 3 })]
    })
    // The latest write's ttl counts, whether it is shorter or longer than the one before.
    await store.commit({ userKey, devices: [write(shortened, { ttl: TTL / 2, usedAt: 2 }), write(extended, { ttl: TTL * 2, usedAt: 3 })] })
    for (const fp of [plain, shortened, extended]) t.ok(await store.read(bucket, fp), 'every device is readable before its ttl')

    await advance(TTL / 2 + 100)
    t.equal(await store.read(bucket, shortened), null, 'a shortened ttl ends the device sooner')
    t.ok(await store.read(bucket, extended), 'an extended ttl outlives the first one')
    t.ok(await store.read(bucket, plain), 'a device within its ttl lives')
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [plain, extended], 'the list leaves the expired device out')

    await advance(TTL / 2)
    t.equal(await store.read(bucket, plain), null, 'a device is gone after its ttl')
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [extended])
    // Two expired devices and one live: a limit of 2 leaves room for a new one, and expired ones are no eviction.
    t.same(outcome(await store.commit({ userKey, devices: [write(added, { usedAt: 4 })], limit: 2 })), OK, 'expired devices do not count toward the limit')
    t.same(outcome(await store.commit({ userKey, devices: [write(plain, { version: 0, usedAt: 5 })], limit: 3 })), OK, 'version 0 creates a device that expired')
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [extended, added, plain])
  })

  t.test('list: every live device of the user, with what read gives, ordered by usedAt; never another user\'s', async (t) => {
    const { store } = await setup(t)
    const [userKey, neighbour] = sameBucket()
    const stranger = unique('u')
    const bucket = userBucket(userKey)
    const fps = fingerprints(4)
    // Written out of usedAt order, in separate changes and in one.
    await store.commit({ userKey, user: creds(userKey), devices: [write(fps[0], { usedAt: 300, data: data(0) })] })
    await store.commit({ userKey, devices: [write(fps[1], { usedAt: 100, data: data(1) }), write(fps[2], { usedAt: 400, data: data(2) })] })
    await store.commit({ userKey, devices: [write(fps[3], { usedAt: 200, data: data(3) })] })
    await store.commit({ userKey: neighbour, user: creds(neighbour), devices: [write(randomFingerprint(), { usedAt: 250 })] })
    await store.commit({ userKey: stranger, user: creds(stranger), devices: [write(randomFingerprint(), { usedAt: 150 })] })

    const listed = await store.list(userKey)
    t.same(listed.map((d) => d.fingerprint), [fps[1], fps[3], fps[0], fps[2]], 'ordered by usedAt ascending, the user\'s devices only')
    for (const device of listed) {
      const read = await store.read(bucket, device.fingerprint)
      t.same({ ...held(device), version: device.version }, { ...held(read), version: read?.version }, `the listed ${device.fingerprint} is what read gives: data, user, version`)
    }
    // A rewrite moves the device in the order: the index follows usedAt, not the first write.
    await store.commit({ userKey, devices: [write(fps[1], { usedAt: 500, data: data(1) })] })
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [fps[3], fps[0], fps[2], fps[1]], 'a new usedAt reorders')
    t.equal((await store.list(neighbour)).length, 1, 'a user in the same bucket lists only its own device')
    t.same(await store.list(unique('u')), [], 'an unknown user lists nothing')
  })

  t.test('user credentials: a change with user sets them for every device of the user, one without keeps them', async (t) => {
    const { store } = await setup(t)
    const [userKey, neighbour] = sameBucket()
    const bucket = userBucket(userKey)
    const [a, b, c, d, n] = fingerprints(5)
    const users = async (): Promise<string[]> => [
      ...await Promise.all([a, b, c, d].map(async (fp) => (await store.read(bucket, fp))?.user ?? 'missing')),
      ...(await store.list(userKey)).map((device) => device.user)
    ]

    await store.commit({ userKey, user: creds(userKey, 1), devices: [write(a)] })
    await store.commit({ userKey: neighbour, user: creds(neighbour, 1), devices: [write(n)] })
    await store.commit({ userKey, devices: [write(b)] })
    t.equal((await store.read(bucket, b))?.user, creds(userKey, 1), 'a new device written without user reads the user\'s credentials')
    await store.commit({ userKey, user: creds(userKey, 2), devices: [write(c)] })
    t.equal((await store.read(bucket, a))?.user, creds(userKey, 2), 'a device written earlier reads the new credentials')
    t.equal((await store.read(bucket, b))?.user, creds(userKey, 2), 'so does one written without them')
    await store.commit({ userKey, devices: [write(d)] })
    t.same(await users(), Array(8).fill(creds(userKey, 2)), 'a change without user keeps them, for read and list')

    // An update: new credentials and no device written.
    t.same(outcome(await store.commit({ userKey, user: creds(userKey, 3), devices: [] })), OK, 'an update without devices')
    t.same(await users(), Array(8).fill(creds(userKey, 3)), 'every device of the user reads the update')
    t.equal((await store.read(userBucket(neighbour), n))?.user, creds(neighbour, 1), 'a user in the same bucket keeps its own')
    t.same((await store.list(neighbour)).map((device) => device.user), [creds(neighbour, 1)])
  })

  t.test('limit: the devices with the lowest usedAt go, and evicted names exactly them', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const other = unique('u')
    const bucket = userBucket(userKey)
    const fps = fingerprints(5)
    const rewritten = fps[0]
    const [added, next, last, low, high] = fingerprints(5)
    await store.commit({ userKey: other, user: creds(other), devices: [write(randomFingerprint(), { usedAt: 0 })] })
    // Devices at usedAt 1..5; the first is rewritten below with a later usedAt.
    for (const [i, fp] of fps.entries()) await store.commit({ userKey, user: creds(userKey), devices: [write(fp, { usedAt: i + 1 })] })

    t.same(outcome(await store.commit({ userKey, devices: [write(added, { usedAt: 10 }), write(rewritten, { usedAt: 9 })], limit: 3 })), { ok: true, evicted: sorted([fps[1], fps[2], fps[3]]) }, 'the lowest usedAt go; a rewrite\'s usedAt counts, not the first')
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [fps[4], rewritten, added], 'the rest stay')
    for (const fp of fps.slice(1, 4)) t.equal(await store.read(bucket, fp), null, 'an evicted device is gone')
    t.equal((await store.list(other)).length, 1, 'another user\'s older device is not the user\'s limit')

    t.same(outcome(await store.commit({ userKey, devices: [write(next, { usedAt: 11 })], limit: 10 })), OK, 'below the limit, nothing is evicted')
    t.same(outcome(await store.commit({ userKey, devices: [write(last, { usedAt: 20 })], limit: 1 })), { ok: true, evicted: sorted([fps[4], rewritten, added, next]) }, 'limit 1 keeps only the written device')
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [last])
    // A device the change writes is never its own eviction, whatever its usedAt (another
    // instance's clock may be behind, and usedAt may tie): only the others go.
    t.same(outcome(await store.commit({ userKey, devices: [write(low, { usedAt: 15 }), write(high, { usedAt: 30 })], limit: 1 })), { ok: true, evicted: [last] }, 'the devices the change writes stay, even with a low usedAt')
    t.same((await store.list(userKey)).map((d) => d.fingerprint), [low, high], 'and only they')
    const tie = randomFingerprint()
    t.same(outcome(await store.commit({ userKey, devices: [write(tie, { usedAt: 15 })], limit: 2 })), { ok: true, evicted: [low] }, 'a tie in usedAt never evicts the written device')
    t.ok(await store.read(bucket, tie), 'the written device is there')
  })

  t.test('users: the credentials of every user with a live device, once each', async (t) => {
    const { store, advance } = await setup(t)
    const [two, updated, deleted, expired, neverStored] = [unique('two'), unique('upd'), unique('del'), unique('exp'), unique('none')]
    await store.commit({ userKey: two, user: creds(two), devices: [write(randomFingerprint()), write(randomFingerprint())] })
    await store.commit({ userKey: updated, user: creds(updated, 1), devices: [write(randomFingerprint())] })
    await store.commit({ userKey: updated, user: creds(updated, 2), devices: [] })
    const gone = randomFingerprint()
    await store.commit({ userKey: deleted, user: creds(deleted), devices: [write(gone)] })
    await store.commit({ userKey: deleted, devices: [write(gone, { data: null })] })
    await store.commit({ userKey: expired, user: creds(expired), devices: [write(randomFingerprint(), { ttl: TTL / 2 })] })
    // Credentials alone are no user: an update for a user without devices lists nobody.
    await store.commit({ userKey: neverStored, user: creds(neverStored), devices: [] })
    t.same(sorted(await store.users()), sorted([creds(two), creds(updated, 2), creds(expired)]), 'one entry per user, the latest credentials')
    await advance(TTL / 2 + 100)
    t.same(sorted(await store.users()), sorted([creds(two), creds(updated, 2)]), 'a user whose devices all expired is gone')
  })

  t.test('concurrent commits under one version: exactly one applies', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const bucket = userBucket(userKey)
    const fingerprint = randomFingerprint()
    await store.commit({ userKey, user: creds(userKey), devices: [write(fingerprint, { data: data(-1) })] })
    const version = (await store.read(bucket, fingerprint))?.version
    const results = await Promise.all(Array.from({ length: 20 }, async (_, i) =>
      await store.commit({ userKey, devices: [write(fingerprint, { version, data: data(i) })] })))
    const winners = results.flatMap((result, i) => result.ok ? [i] : [])
    t.equal(winners.length, 1, `exactly one commit applies, not ${winners.length}`)
    t.equal((await store.read(bucket, fingerprint))?.data, data(winners[0]), 'and the device holds its data')
  })

  t.test('concurrent creates under a limit: every device is kept or reported evicted, once', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const fps = fingerprints(20)
    const results = await Promise.all(fps.map(async (fp, i) =>
      await store.commit({ userKey, user: creds(userKey), devices: [write(fp, { version: 0, usedAt: i + 1 })], limit: 5 })))
    t.equal(results.filter((result) => result.ok).length, 20, 'every create applies')
    for (const [i, result] of results.entries()) {
      if (result.evicted.includes(fps[i])) t.fail(`the commit of ${fps[i]} evicted its own device`)
    }
    const evicted = results.flatMap((result) => result.evicted)
    const kept = (await store.list(userKey)).map((d) => d.fingerprint)
    t.equal(kept.length, 5, 'the limit holds')
    t.equal(new Set(evicted).size, evicted.length, `no device reported evicted twice: ${evicted.length} reports`)
    t.same(sorted([...kept, ...evicted]), sorted(fps), 'every device is kept or reported evicted, and nothing else')
  })

  t.test('what a store returns or was given is not its state: changing it later changes nothing stored', async (t) => {
    const { store } = await setup(t)
    const userKey = unique('u')
    const bucket = userBucket(userKey)
    const fingerprint = randomFingerprint()
    const change: DeviceChange = { userKey, user: creds(userKey), devices: [write(fingerprint, { data: data(1) })] }
    await store.commit(change)
    const version = (await store.read(bucket, fingerprint))?.version
    // An in-process store that kept these objects would now hold what the caller did to them.
    change.devices[0].data = data(2)
    change.user = creds(userKey, 2)
    change.devices.push(write(randomFingerprint()))
    // A frozen result refuses the edit: as good as a copy.
    const tamper = (value: object): void => {
      try { Object.assign(value, { data: data(3), user: 'tampered', version: -1, fingerprint: 'tampered' }) } catch {}
    }
    tamper(await store.read(bucket, fingerprint) ?? {})
    const listed = await store.list(userKey)
    listed.forEach(tamper)
    try { listed.length = 0 } catch {}
    const expected = { data: data(1), user: creds(userKey) }
    const read = await store.read(bucket, fingerprint)
    t.same(held(read), expected, 'read after the edits')
    t.equal(read?.version, version, 'at the same version')
    t.same((await store.list(userKey)).map((d) => ({ fingerprint: d.fingerprint, ...held(d) })), [{ fingerprint, ...expected }], 'list after the edits')
  })
}
