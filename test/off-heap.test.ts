// MemoryStore's off-heap parts (lib/stores/off-heap.ts): the string column and the hash index,
// each against a plain Array / Map doing the same operations; then the point of them, a
// MemoryStore whose devices take (almost) no V8 heap.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { test } from 'tap'
import { StringColumn, StringIndex } from '../lib/stores/off-heap.js'
import { MemoryStore } from '../lib/index.js'
import { randomFingerprint, userBucket } from '../lib/crypto.js'
import { deviceWrite, minter } from '../lib/devices.js'
import { signIn as signInDevice, type Device } from '../lib/lifecycle.js'

/** A deterministic pseudo-random sequence (mulberry32), so that a failure can be replayed. */
function random (seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const ALPHABET = ['a', 'b', 'z', '0', '.', '"', '\\', 'é', 'Ã', '©', '€', '😀', '\u0000']

function word (next: () => number, max: number): string {
  let value = ''
  const length = Math.floor(next() * max)
  for (let i = 0; i < length; i++) value += ALPHABET[Math.floor(next() * ALPHABET.length)]
  return value
}

test('StringColumn: strings by slot, set, replaced and cleared', async (t) => {
  const column = new StringColumn(4)
  t.equal(column.get(0), undefined, 'an empty slot has no string')
  t.notOk(column.has(0))
  column.set(0, 'hello')
  column.set(1, '')
  column.set(2, 'naïve €10 😀')
  t.equal(column.get(0), 'hello')
  t.equal(column.get(1), '', 'an empty string is a string')
  t.ok(column.has(1))
  t.equal(column.get(2), 'naïve €10 😀', 'characters beyond ASCII come back as they went in')
  t.equal(column.bytes, 5 + 0 + Buffer.byteLength('naïve €10 😀'), 'bytes counts the live strings as UTF-8')
  column.set(0, 'bye')
  t.equal(column.get(0), 'bye', 'a string set again replaces the old one')
  column.set(2, undefined)
  t.notOk(column.has(2), 'undefined clears a slot')
  t.equal(column.bytes, 3, 'and the bytes of replaced and cleared strings no longer count')
})

test('StringColumn: equals and startsWith compare as stored', async (t) => {
  const column = new StringColumn(8)
  column.set(0, 'é')
  t.ok(column.equals(0, 'é'))
  // The UTF-8 bytes of "é" are C3 A9: a string whose characters have those codes is not "é".
  t.notOk(column.equals(0, '\u00c3\u00a9'), 'characters with the codes of the bytes are a different string')
  column.set(1, '\u00c3\u00a9')
  t.notOk(column.equals(1, 'é'), 'and the other way round')
  column.set(2, 'abc')
  t.ok(column.equals(2, 'abc'))
  for (const [head, tail] of [['a', 'bc'], ['', 'abc'], ['abc', ''], ['ab', 'c']]) t.ok(column.equals(2, head, tail), `${head} + ${tail}`)
  for (const [head, tail] of [['a', 'bx'], ['x', 'bc'], ['ab', ''], ['ab', 'cd'], ['', '']]) t.notOk(column.equals(2, head, tail), `not ${head} + ${tail}`)
  t.ok(column.equals(1, '\u00c3', '\u00a9'), 'beyond ASCII in two parts too')
  t.notOk(column.equals(0, '\u00c3', '\u00a9'), 'and the bytes of "é" are still not those two characters')
  t.ok(column.equals(0, '', 'é'))
  t.notOk(column.equals(2, 'abd'))
  t.notOk(column.equals(2, 'ab'), 'a prefix is not equal')
  t.notOk(column.equals(2, 'abcd'), 'nor a longer string')
  column.set(3, 'x\ud800y')
  t.equal(column.get(3), 'x\ufffdy', 'a lone surrogate is stored as U+FFFD (UTF-8 has none), as Redis stores it')
  t.ok(column.equals(3, 'x\ud800y'), 'and the string it came from equals what is stored')
  column.set(4, '{"userKey":"1","fingerprint":"ab"}')
  t.ok(column.startsWith(4, Buffer.from('{"userKey":"1","fingerprint":"ab"')))
  t.notOk(column.startsWith(4, Buffer.from('{"userKey":"1","fingerprint":"abc"')))
  t.notOk(column.startsWith(4, Buffer.from('{"userKey":"1","fingerprint":"ab"}, and more')), 'a prefix longer than the string')
  t.ok(column.startsWith(4, Buffer.from('')), 'every string starts with the empty prefix')
  t.notOk(column.startsWith(5, Buffer.from('')), 'an empty slot has no string to start with anything')
})

for (const keepReads of [false, true]) {
  test(`StringColumn${keepReads ? ' keeping reads' : ''} against an array: random sets, clears, growth, reclaims and moves`, async (t) => {
    const next = random(1)
    let capacity = 16
    let column = new StringColumn(capacity, { keepReads })
    let model: Array<string | undefined> = new Array(capacity).fill(undefined)
    let checks = 0
    const check = (when: string): void => {
      for (let slot = 0; slot < capacity; slot++) {
        if (column.get(slot) !== model[slot]) {
          t.fail(`${when}: slot ${slot} holds ${JSON.stringify(column.get(slot))}, not ${JSON.stringify(model[slot])}`)
          return
        }
      }
      const bytes = model.reduce((sum, value) => sum + (value === undefined ? 0 : Buffer.byteLength(value)), 0)
      if (column.bytes !== bytes) t.fail(`${when}: bytes ${column.bytes}, not ${bytes}`)
      checks++
    }
    for (let op = 0; op < 20_000; op++) {
      const roll = next()
      const slot = Math.floor(next() * capacity)
      if (roll < 0.6) {
        const value = word(next, next() < 0.05 ? 2000 : 40)
        column.set(slot, value)
        model[slot] = value
      } else if (roll < 0.85) {
        column.set(slot, undefined)
        model[slot] = undefined
      } else if (roll < 0.9 && capacity < 4096) {
        capacity *= 2
        column.resize(capacity)
        model.length = capacity
        model.fill(undefined, capacity / 2)
      } else if (roll < 0.93) {
        // A compaction as MemoryStore's: the live slots move down, in order, into `capacity` slots.
        const moved = new Int32Array(capacity).fill(-1)
        let live = 0
        for (let s = 0; s < capacity; s++) if (model[s] !== undefined) moved[s] = live++
        const nextCapacity = Math.max(16, live * 2)
        column.move(moved, capacity, nextCapacity)
        model = model.filter((value) => value !== undefined)
        model.length = nextCapacity
        model.fill(undefined, live)
        capacity = nextCapacity
      } else if (roll < 0.94) {
        // Now and then a fresh column filled from the model, so that both start small again.
        column = new StringColumn(capacity, { keepReads })
        model.forEach((value, s) => { column.set(s, value) })
      }
      // Reads between writes too, so that kept reads meet every later change.
      if (op % 97 === 0 || (keepReads && op % 7 === 0)) check(`after operation ${op}`)
    }
    check('at the end')
    t.ok(checks > 200, `${checks} full comparisons, all equal`)
  })
}

test('StringColumn keeping reads: a string read again is the same string until its slot is written', async (t) => {
  const column = new StringColumn(16, { keepReads: true })
  column.set(1, '{"id":1,"name":"Alice"}')
  t.equal(column.get(1), '{"id":1,"name":"Alice"}')
  t.equal(column.get(1), '{"id":1,"name":"Alice"}', 'read again from the kept string')
  column.set(1, '{"id":1,"name":"Alicia"}')
  t.equal(column.get(1), '{"id":1,"name":"Alicia"}', 'a write is read at once')
  column.set(1, undefined)
  t.equal(column.get(1), undefined, 'and a clear')
  const plain = new StringColumn(16)
  plain.set(1, 'x')
  t.equal(plain.get(1), 'x')
})

test('StringIndex against a Map: random inserts, updates and deletes through growth and shrinking', async (t) => {
  const next = random(2)
  const capacity = 40_000
  const keys = new StringColumn(capacity)
  const index = new StringIndex(keys)
  const model = new Map<string, number>()
  const bySlot = new Map<number, string>()
  /** The model's keys, to pick one at random. */
  const present: string[] = []
  let free: number[] = Array.from({ length: capacity }, (_, i) => capacity - 1 - i)
  let checks = 0
  const check = (when: string): void => {
    if (index.size !== model.size) t.fail(`${when}: size ${index.size}, not ${model.size}`)
    for (const [key, slot] of model) {
      if (index.get(key) !== slot) {
        t.fail(`${when}: ${JSON.stringify(key)} -> ${index.get(key)}, not ${slot}`)
        return
      }
      // Found by any split of the key in two, as a store read asks for it.
      const cut = key.length === 0 ? 0 : checks % (key.length + 1)
      if (index.get(key.slice(0, cut), key.slice(cut)) !== slot) {
        t.fail(`${when}: ${JSON.stringify(key)} split at ${cut} -> ${index.get(key.slice(0, cut), key.slice(cut))}, not ${slot}`)
        return
      }
    }
    const slots = index.slots().sort((a, b) => a - b)
    t.same(slots, [...model.values()].sort((a, b) => a - b), `${when}: slots() lists every indexed slot once`)
    checks++
  }
  for (let round = 0; round < 4; round++) {
    // Grow to many keys, then delete most of them (the table shrinks), keeping a few.
    const target = round % 2 === 0 ? 30_000 : 500
    let guard = 0
    while ((round % 2 === 0 ? model.size < target : model.size > target) && guard++ < 200_000) {
      const roll = next()
      if (round % 2 === 0 ? roll < 0.8 : roll < 0.1) {
        // Short keys from a small alphabet, so that equal hashes' neighbours and clusters are common.
        const key = next() < 0.5 ? word(next, 6) : `${Math.floor(next() * 1e9)}`
        if (!model.has(key)) present.push(key)
        const slot = model.get(key) ?? free.pop() as number
        keys.set(slot, key)
        index.set(key, slot)
        model.set(key, slot)
        bySlot.set(slot, key)
      } else if (model.size > 0) {
        const at = Math.floor(next() * present.length)
        const victim = present[at]
        present[at] = present[present.length - 1]
        present.pop()
        const slot = model.get(victim) as number
        if (!index.delete(victim)) t.fail(`${JSON.stringify(victim)} was not found to delete`)
        model.delete(victim)
        bySlot.delete(slot)
        keys.set(slot, undefined)
        free.push(slot)
      }
      if (guard % 5000 === 0) check(`round ${round}, operation ${guard}, ${model.size} keys`)
    }
    check(`end of round ${round}`)
    t.notOk(index.delete(`not a key ${round}`), 'deleting a missing key finds nothing')
    t.equal(index.get(`not a key ${round}`), undefined, 'and looking it up neither')
    t.equal(index.get('not a key', ` ${round}`), undefined, 'nor in two parts')
    const some = present[0]
    if (some !== undefined) t.equal(index.get(some, 'x'), undefined, 'a key with more after it is another key')
  }
  t.ok(checks >= 8, `${checks} full comparisons`)

  // Renumbering, as after a compaction: every slot moves.
  const moved = new Int32Array(capacity).fill(-1)
  let live = 0
  for (let slot = 0; slot < capacity; slot++) if (bySlot.has(slot)) moved[slot] = live++
  keys.move(moved, capacity, capacity)
  index.renumber(moved)
  for (const [key, slot] of model) model.set(key, moved[slot])
  free = []
  check('after renumbering')
})

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void
/** The V8 heap and the ArrayBuffers in use, after full collections. */
function memory (): { heap: number, buffers: number } {
  gc()
  gc()
  const { heapUsed, arrayBuffers } = process.memoryUsage()
  return { heap: heapUsed, buffers: arrayBuffers }
}

const RULES = { ttl: 60_000, renewAfter: 30_000, grace: 10_000, absoluteTtl: undefined, tokenTtl: 30 * 86_400_000, tokenAbsoluteTtl: undefined }

/** Stores a new device of user `userKey`, as a sign-in writes it (a session id and a token); its fingerprint. */
async function signIn (store: MemoryStore, userKey: string, i: number): Promise<string> {
  const now = Date.now()
  const fingerprint = randomFingerprint()
  const step = signInDevice(userKey, fingerprint, {}, { session: true, token: true }, now, RULES, minter(userBucket(userKey), fingerprint))
  await store.commit({
    userKey,
    user: JSON.stringify({ id: userKey, email: `user${i}@example.com`, name: `User ${i}` }),
    devices: [deviceWrite(step.device as Device, 0, now, RULES)]
  })
  return fingerprint
}

/** Ends a device of `userKey`. */
async function signOut (store: MemoryStore, userKey: string, fingerprint: string): Promise<void> {
  await store.commit({ userKey, devices: [{ fingerprint, data: null, ttl: 0, usedAt: Date.now() }] })
}

test('a MemoryStore keeps its devices off the V8 heap', async (t) => {
  const store = new MemoryStore()
  const before = memory()
  const n = 50_000
  for (let i = 0; i < n; i++) await signIn(store, String(1000 + i), i)
  const after = memory()
  const heapPerDevice = (after.heap - before.heap) / n
  const buffersPerDevice = (after.buffers - before.buffers) / n
  // Kept on the heap, each session was about 560 bytes (its hash, record and user as strings,
  // Map entries): that is what made every scavenge slower as sessions grew.
  t.ok(heapPerDevice < 40, `V8 heap: ${heapPerDevice.toFixed(1)} B per device`)
  t.ok(buffersPerDevice > 300, `buffers: ${buffersPerDevice.toFixed(1)} B per device hold them`)
  t.same(store.size, { devices: n, users: n, heap: n })
})

test('a MemoryStore gives its buffers back once most devices are gone', async (t) => {
  const store = new MemoryStore()
  const before = memory()
  const devices: Array<[string, string]> = []
  for (let i = 0; i < 50_000; i++) {
    const userKey = String(1000 + i)
    devices.push([userKey, await signIn(store, userKey, i)])
  }
  const full = memory().buffers - before.buffers
  for (const [userKey, fingerprint] of devices.slice(10)) await signOut(store, userKey, fingerprint)
  // A write evicts and compacts.
  await signIn(store, 'one more', 0)
  const left = memory().buffers - before.buffers
  t.same(store.size, { devices: 11, users: 11, heap: 11 })
  t.ok(store.slots.devices < 64 && store.slots.users < 64, `slots compacted: ${JSON.stringify(store.slots)}`)
  t.ok(full > 10_000_000, `50k devices: ${(full / 1e6).toFixed(1)} MB of buffers`)
  t.ok(left < full / 20, `11 devices after the compaction: ${(left / 1e6).toFixed(2)} MB`)
})

test('user keys with lone surrogates: stored as UTF-8 (U+FFFD), found and let go of as the same key', async (t) => {
  const keys = new StringColumn(4)
  const index = new StringIndex(keys)
  keys.set(0, 'u\ud800')
  index.set('u\ud800', 0)
  t.equal(index.get('u\ud800'), 0, 'found by the key it was indexed under')
  t.equal(index.get(keys.get(0) as string), 0, 'and by the key read back from the column')
  t.equal(index.get('u', '\ud800'), 0, 'and in two parts')
  t.equal(index.get('u', '\ufffd'), 0, 'and in two parts as read back')
  keys.set(1, 'é-ü')
  index.set('é-ü', 1)
  t.equal(index.get('é-', 'ü'), 1, 'a key beyond ASCII is found in two parts')
  t.equal(index.get('é-', 'u'), undefined, 'and not by another key of as many characters')
  index.delete('é-ü')
  keys.set(1, undefined)
  t.ok(index.delete(keys.get(0) as string), 'deleted by the key read back')
  t.equal(index.size, 0)

  const store = new MemoryStore()
  const bad = 'user\ud800'
  const fingerprint = await signIn(store, bad, 1)
  const stored = await store.read(userBucket(bad), fingerprint)
  t.equal(JSON.parse(stored?.data as string).userKey, bad, 'the record keeps the key as JSON (escaped), exactly')
  t.equal(JSON.parse(stored?.user as string).id, bad, 'and so do the credentials')
  t.equal((await store.list(bad)).length, 1, 'the user is found by the key')
  await signOut(store, bad, fingerprint)
  t.equal(store.size.users, 0, 'the user goes with its last device')
  // Many such users come and go, with others staying, across compactions: every staying user
  // is still found (a stale index entry would become a hole in a probe run at a compaction).
  const staying = new Map<string, string>()
  for (let i = 0; i < 600; i++) {
    const key = i % 3 === 0 ? `bad${i}\udc00` : `user${i}`
    const fp = await signIn(store, key, i)
    if (i % 3 !== 0 && i % 10 === 1) staying.set(key, fp)
    else if (i % 7 !== 0) await signOut(store, key, fp)
  }
  for (const [key, fp] of staying) {
    await signOut(store, key, fp)
    staying.set(key, await signIn(store, key, 0))
  }
  let found = 0
  for (const [key, fp] of staying) if ((await store.list(key)).map((d) => d.fingerprint).join() === fp) found++
  t.equal(found, staying.size, `all ${staying.size} staying users' devices are listed`)
  const users = (await store.users()).map((json) => JSON.parse(json) as { id: string })
  t.equal(new Set(users.map((u) => u.id)).size, users.length, 'users() lists each user once')
  t.equal(users.length, store.size.users, 'every user with a device')
})
