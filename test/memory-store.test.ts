import { install } from '@sinonjs/fake-timers'
import { test } from 'tap'
import { MemoryStore } from '../lib/index.js'
import { randomFingerprint, userBucket } from '../lib/crypto.js'
import type { DeviceWrite } from '../lib/types.js'
import { fakeClock } from './helpers/clock.js'
import { storeContract } from './store-contract.js'

test('MemoryStore passes the store contract', async (t) => {
  storeContract(t, async () => {
    const clock = install({ now: Date.UTC(2026, 0, 1), toFake: ['Date'] })
    return {
      store: new MemoryStore(),
      advance: async (ms) => { clock.tick(ms) },
      close: async () => { clock.uninstall() }
    }
  })
})

/** A device write with a record naming the device, so that reads can be told apart. */
function write (fingerprint: string, ttl: number, fields: Partial<DeviceWrite> = {}): DeviceWrite {
  return { fingerprint, data: JSON.stringify({ device: fingerprint }), ttl, usedAt: Date.now(), ...fields }
}

const creds = (userKey: string): string => JSON.stringify({ id: userKey })

test('MemoryStore evicts expired devices on writes: memory follows live devices', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  for (let i = 0; i < 1000; i++) {
    const userKey = `u${i % 100}`
    // Half the devices live a minute, the other half two.
    await store.commit({ userKey, user: creds(userKey), devices: [write(randomFingerprint(), i % 2 === 0 ? 60_000 : 120_000)] })
  }
  t.same(store.size, { devices: 1000, users: 100, heap: 1000 })

  clock.tick(60_001)
  t.same(await store.users().then((users) => users.length), 50, 'an expired device is not read back...')
  t.same(store.size, { devices: 1000, users: 100, heap: 1000 }, '...but reads do not evict')
  await store.commit({ userKey: 'nobody', devices: [] })
  t.same(store.size, { devices: 500, users: 50, heap: 500 }, 'the devices of a minute are gone after one write, and the users left with none')

  clock.tick(60_000)
  await store.commit({ userKey: 'nobody', devices: [] })
  t.same(store.size, { devices: 0, users: 0, heap: 0 }, 'nothing is left')
  t.same(await store.users(), [])
})

test('MemoryStore: writing a device many times keeps the expiry heap at one entry for it', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const fingerprint = randomFingerprint()
  const other = randomFingerprint()
  await store.commit({ userKey: 'u', user: creds('u'), devices: [write(fingerprint, 10_000), write(other, 1_000_000)] })
  for (let i = 0; i < 100; i++) {
    clock.tick(5_000)
    // Shorter and longer ttls in turn: the device's entry moves up and down the heap.
    await store.commit({ userKey: 'u', devices: [write(fingerprint, i % 2 === 0 ? 10_000 : 20_000)] })
  }
  t.ok(await store.read(userBucket('u'), fingerprint), 'the device is still alive')
  t.same(store.size, { devices: 2, users: 1, heap: 2 }, 'one heap entry per device')
  clock.tick(20_001)
  await store.commit({ userKey: 'u', devices: [] })
  t.equal(await store.read(userBucket('u'), fingerprint), null, 'and the heap still finds its latest expiry')
  t.same(store.size, { devices: 1, users: 1, heap: 1 })
})

test('MemoryStore compacts its slots once most devices are gone, and the survivors stay intact', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const kept: Array<{ fingerprint: string, userKey: string, usedAt: number }> = []
  for (let i = 0; i < 2000; i++) {
    const userKey = `u${i % 300}`
    const fingerprint = randomFingerprint()
    // One in ten lives long; the rest expire together. usedAt runs backwards, so that list order is not slot order.
    const long = i % 10 === 0
    const usedAt = 10_000 - i
    await store.commit({ userKey, user: creds(userKey), devices: [write(fingerprint, long ? 600_000 : 60_000, { usedAt })] })
    if (long) kept.push({ fingerprint, userKey, usedAt })
  }
  t.same(store.slots, { devices: 2000, users: 300 })

  clock.tick(60_001)
  await store.commit({ userKey: 'nobody', devices: [] })
  t.same(store.size, { devices: 200, users: 30, heap: 200 })
  t.same(store.slots, { devices: 200, users: 30 }, 'compacted to the live devices and users')
  for (const { fingerprint, userKey } of kept) {
    const found = await store.read(userBucket(userKey), fingerprint)
    if (found?.data !== JSON.stringify({ device: fingerprint }) || found.user !== creds(userKey)) {
      t.fail(`device ${fingerprint} of ${userKey} after compaction: ${JSON.stringify(found)}`)
      return
    }
  }
  const userKey = kept[0].userKey
  const mine = kept.filter((k) => k.userKey === userKey).sort((a, b) => a.usedAt - b.usedAt).map((k) => k.fingerprint)
  t.same((await store.list(userKey)).map((d) => d.fingerprint), mine, 'user lists relinked, in usedAt order')
  const { evicted } = await store.commit({ userKey, devices: [], limit: mine.length - 1 })
  t.same(evicted, [mine[0]], 'the limit finds the least recently used through the relinked list')
  t.same(await store.users().then((users) => users.length), 30)

  clock.tick(600_000)
  await store.commit({ userKey: 'nobody', devices: [] })
  t.same(store.size, { devices: 0, users: 0, heap: 0 }, 'the expiry heap still finds every survivor')
  t.equal(store.slots.devices, 0, 'compacted again: no device slot left')
})

test('MemoryStore: fingerprints that start with one another are different devices', async (t) => {
  fakeClock(t)
  const store = new MemoryStore()
  const userKey = 'u"\\'
  const bucket = userBucket(userKey)
  const fingerprints = ['fp', 'fp2', 'fp"', 'fp\\', 'f']
  await store.commit({ userKey, user: creds(userKey), devices: fingerprints.map((fp) => write(fp, 60_000)) })
  for (const fp of fingerprints) t.equal((await store.read(bucket, fp))?.data, JSON.stringify({ device: fp }), `${fp} reads its own record`)
  t.equal(await store.read(bucket, ''), null, 'no device at the bare bucket')
  await store.commit({ userKey, devices: [write('fp', 0, { data: null })] })
  t.equal(await store.read(bucket, 'fp'), null)
  t.same((await store.list(userKey)).map((d) => d.fingerprint).sort(), ['f', 'fp"', 'fp2', 'fp\\'], 'deleting one deletes it only')
})
