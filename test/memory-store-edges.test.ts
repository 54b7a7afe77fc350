/*
 * MemoryStore and its off-heap columns at their edges: the cache of recently read records
 * across its generations, records too large for it, and StringColumn / StringIndex cases the
 * randomized tests of test/off-heap.test.ts reach rarely or never.
 */
import { test } from 'tap'
import { MemoryStore } from '../lib/index.js'
import { randomFingerprint, userBucket } from '../lib/crypto.js'
import { StringColumn, StringIndex } from '../lib/stores/off-heap.js'
import type { DeviceWrite } from '../lib/types.js'
import { fakeClock } from './helpers/clock.js'

const creds = (userKey: string): string => JSON.stringify({ id: userKey })
const record = (fingerprint: string, n: number, pad = 0): string => JSON.stringify({ device: fingerprint, n, pad: 'x'.repeat(pad) })

function write (fingerprint: string, n: number, fields: Partial<DeviceWrite> = {}): DeviceWrite {
  return { fingerprint, data: record(fingerprint, n), ttl: 60_000, usedAt: Date.now(), ...fields }
}

test('MemoryStore: reads stay exact across the generations of its cache of recent records', async (t) => {
  fakeClock(t)
  const store = new MemoryStore()
  const userKey = 'reader'
  const bucket = userBucket(userKey)
  // More devices than two generations of the cache (2 x 256) hold.
  const fingerprints = Array.from({ length: 600 }, () => randomFingerprint())
  await store.commit({ userKey, user: creds(userKey), devices: fingerprints.map((fp) => write(fp, 0)) })
  const latest = new Map(fingerprints.map((fp) => [fp, 0]))

  const check = async (fp: string, what: string): Promise<boolean> => {
    const found = await store.read(bucket, fp)
    if (found?.data === record(fp, latest.get(fp) as number)) return true
    t.fail(`${what}: ${fp} read ${found?.data}, expected n=${latest.get(fp)}`)
    return false
  }

  // A device read, then 256 others (the cache turns over a generation), then read again: the
  // older generation answers, with its own record.
  const [first, ...rest] = fingerprints
  t.ok(await check(first, 'first read'))
  for (const fp of rest.slice(0, 256)) if (!await check(fp, 'filling a generation')) return
  t.ok(await check(first, 'read again from the older generation'), 'a record read before a turnover reads the same')

  // Rewritten devices read their new record, whichever generation held the old one.
  for (const [i, fp] of fingerprints.entries()) {
    if (i % 3 !== 0) continue
    latest.set(fp, i + 1)
    await store.commit({ userKey, devices: [write(fp, i + 1)] })
  }
  for (let round = 0; round < 3; round++) {
    for (const fp of fingerprints) if (!await check(fp, `round ${round}`)) return
  }
  t.pass('every read of 600 devices over three rounds (cache turnovers included) gave its latest record')

  // The list, which reads records without the cache, agrees.
  const listed = await store.list(userKey)
  t.equal(listed.length, 600)
  t.ok(listed.every((d) => d.data === record(d.fingerprint, latest.get(d.fingerprint) as number)), 'list gives the latest records too')
})

test('MemoryStore: a record larger than the cache takes is read exactly, and its rewrite too', async (t) => {
  fakeClock(t)
  const store = new MemoryStore()
  const userKey = 'big'
  const bucket = userBucket(userKey)
  const fp = randomFingerprint()
  const big = (n: number): string => record(fp, n, 5000)
  await store.commit({ userKey, user: creds(userKey), devices: [write(fp, 1, { data: big(1) })] })
  t.equal((await store.read(bucket, fp))?.data, big(1))
  t.equal((await store.read(bucket, fp))?.data, big(1), 'read again')
  const { version } = await store.read(bucket, fp) as { version: number }
  await store.commit({ userKey, devices: [write(fp, 2, { data: big(2), version })] })
  const again = await store.read(bucket, fp)
  t.equal(again?.data, big(2), 'the rewrite reads back')
  t.not(again?.version, version)
})

test('MemoryStore: a device deleted and written again is a new device, with a version never used before', async (t) => {
  fakeClock(t)
  const store = new MemoryStore()
  const userKey = 'again'
  const bucket = userBucket(userKey)
  const fp = randomFingerprint()
  await store.commit({ userKey, user: creds(userKey), devices: [write(fp, 1)] })
  const first = await store.read(bucket, fp)
  await store.commit({ userKey, devices: [write(fp, 0, { data: null })] })
  t.equal(await store.read(bucket, fp), null)
  t.same(store.size, { devices: 0, users: 0, heap: 0 }, 'the user went with its last device')
  t.same((await store.commit({ userKey, user: creds(userKey), devices: [write(fp, 2, { version: 0 })] })).ok, true, 'version 0 creates it again')
  const second = await store.read(bucket, fp)
  t.equal(second?.data, record(fp, 2), 'with its new record, not the cached old one')
  t.not(second?.version, first?.version, 'under a new version')
  t.same((await store.commit({ userKey, devices: [write(fp, 3, { version: first?.version })] })).ok, false, 'the old version no longer applies')
})

test('StringColumn: an empty string is a value, not an empty slot; clearing a cleared slot is harmless', async (t) => {
  const column = new StringColumn(4)
  column.set(0, '')
  t.equal(column.has(0), true, 'an empty string is held')
  t.equal(column.get(0), '')
  t.equal(column.equals(0, ''), true)
  t.equal(column.equals(0, 'a'), false)
  t.equal(column.startsWith(0, new Uint8Array(0)), true, 'every string starts with no bytes')
  t.equal(column.startsWith(0, Buffer.from('a')), false, 'but not with a byte it lacks')
  column.set(0, undefined)
  column.set(0, undefined)
  t.equal(column.has(0), false)
  t.equal(column.get(0), undefined)
  t.equal(column.bytes, 0, 'nothing held')
})

test('StringColumn: a string beyond ASCII equals only itself, whatever its length in bytes', async (t) => {
  const column = new StringColumn(4)
  // 'é' is two bytes: the same length in bytes as the two-character 'Ã©' read as latin1 codes.
  column.set(0, 'é')
  t.equal(column.equals(0, 'é'), true)
  t.equal(column.equals(0, '\u00c3\u00a9'), false, 'the bytes read as characters are another string')
  t.equal(column.equals(0, 'e'), false, 'one character shorter than its bytes, and not it')
  column.set(1, '\u00c3')
  t.equal(column.equals(1, '\u00c3'), true, 'a character of one byte in latin1 but two in UTF-8')
  t.equal(column.equals(1, '\u00c4'), false, 'and another such character is not it')
})

test('StringIndex: deleting a missing key is false and changes nothing; shrinking keeps every key', async (t) => {
  const column = new StringColumn(1024)
  const index = new StringIndex(column)
  t.equal(index.delete('nobody'), false, 'nothing to delete in an empty index')
  for (let slot = 0; slot < 600; slot++) {
    column.set(slot, `key-${slot}`)
    index.set(`key-${slot}`, slot)
  }
  t.equal(index.delete('key-600'), false, 'a key never set')
  t.equal(index.size, 600)
  for (let slot = 0; slot < 590; slot++) {
    t.equal(index.delete(`key-${slot}`), true)
    column.set(slot, undefined)
  }
  t.equal(index.delete('key-0'), false, 'deleted already')
  t.equal(index.size, 10)
  t.same(index.slots().sort((a, b) => a - b), Array.from({ length: 10 }, (_, i) => 590 + i), 'the keys left after the table shrank')
  for (let slot = 590; slot < 600; slot++) t.equal(index.get(`key-${slot}`), slot)
  t.equal(index.get('key-5'), undefined)
})
