import { test } from 'tap'
import { secretDevice } from '../lib/crypto.js'
import { MemoryStore } from '../lib/index.js'
import type { Device } from '../lib/lifecycle.js'
import { copyMetadata, ParsedRecords, ParsedUsers } from '../lib/parsed.js'
import { buildApp } from './helpers/app.js'
import { fakeClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { allStores } from './helpers/stores.js'

// Records as a store keeps them: without the fingerprint, which is the store's address.
const recordText = (i: number): string =>
  JSON.stringify({ userKey: String(i), signedInAt: i, metadata: { i }, session: null })

interface CachedRecord { fingerprint: string, userKey: string, metadata: { i: number } }

/** A cache whose decoder counts its calls: each call is a parse. */
function counted (): { records: ParsedRecords<CachedRecord>, parses: () => number } {
  let parses = 0
  const records = new ParsedRecords<CachedRecord>((json, fingerprint) => {
    parses++
    return { ...JSON.parse(json), fingerprint }
  })
  return { records, parses: () => parses }
}

test('ParsedRecords: one parse per JSON text while it is cached, equal to decoding it', async (t) => {
  const { records, parses } = counted()
  const first = records.get(recordText(1), 'fp1')
  t.same(first, { ...JSON.parse(recordText(1)), fingerprint: 'fp1' }, 'the decoded record, with its fingerprint')
  t.equal(records.get(recordText(1), 'fp1'), first, 'the same text read again: the cached object')
  t.equal(records.get([recordText(1).slice(0, 10), recordText(1).slice(10)].join(''), 'fp1'), first, 'an equal string built anew (as a Redis reply is) hits too')
  t.equal(parses(), 1, 'parsed once')
  const changed = records.get(recordText(1).replace('"i":1', '"i":2'), 'fp1')
  t.not(changed, first, 'another text is another record: a device written again is parsed anew')
  t.same(changed.metadata, { i: 2 })
  t.equal(parses(), 2)
  t.same(records.get(recordText(1), 'fp1'), first, 'the first text again: equal to what it was')
  t.equal(parses(), 3, 'parsed anew: one record is kept per device, the one read last')
})

test('ParsedRecords: the same text at another fingerprint is never the cached record', async (t) => {
  const { records, parses } = counted()
  const a = records.get(recordText(1), 'fpA')
  const b = records.get(recordText(1), 'fpB')
  t.equal(a.fingerprint, 'fpA')
  t.equal(b.fingerprint, 'fpB', 'decoded again for the other fingerprint')
  t.equal(a.fingerprint, 'fpA', 'without changing the record given before')
  t.equal(parses(), 2)
})

test('ParsedRecords: bounded; the oldest entries go first, a re-read keeps one', async (t) => {
  const { records } = counted()
  const kept = records.get(recordText(0), 'fp0')
  const dropped = records.get(recordText(1), 'fp1')
  for (let i = 2; i < 2000; i++) {
    records.get(recordText(i), `fp${i}`)
    if (i % 100 === 0) t.equal(records.get(recordText(0), 'fp0'), kept, `a record read now and then stays (after ${i})`)
  }
  t.not(records.get(recordText(1), 'fp1'), dropped, 'a record not read for 2000 others was let go')
  t.same(records.get(recordText(1), 'fp1'), dropped, 'and is parsed again, equal')
})

test('ParsedRecords: a record of more than 4 kB of JSON is parsed on every read, not kept', async (t) => {
  const { records, parses } = counted()
  const sized = (length: number): string => {
    const json = JSON.stringify({ note: '' })
    return JSON.stringify({ note: 'x'.repeat(length - json.length) })
  }
  t.equal(sized(4096).length, 4096)
  const atLimit = records.get(sized(4096), 'fp')
  t.equal(records.get(sized(4096), 'fp'), atLimit, '4096 characters: cached')
  t.equal(parses(), 1)
  const big = sized(4097)
  const first = records.get(big, 'fp')
  t.same(first, { ...JSON.parse(big), fingerprint: 'fp' })
  t.not(records.get(big, 'fp'), first, '4097 characters: parsed again')
  t.equal(parses(), 3)
})

test('copyMetadata: a deep copy, exactly what parsing the JSON again gives', async (t) => {
  const json = '{"a":{"b":[1,{"c":"d"}]},"__proto__":{"polluted":true},"n":null,"s":"x"}'
  const original = JSON.parse(json)
  const copy = copyMetadata(original)
  t.same(copy, JSON.parse(json))
  t.equal(Object.getPrototypeOf(copy), Object.prototype, '"__proto__" stays an own property, not the prototype')
  t.ok(Object.hasOwn(copy, '__proto__'))
  t.equal((copy as { polluted?: boolean }).polluted, undefined)
  t.equal(({} as { polluted?: boolean }).polluted, undefined, 'Object.prototype untouched')
  ;((copy.a as { b: unknown[] }).b[1] as { c: string }).c = 'changed'
  ;(copy.a as { b: unknown[] }).b.push(3)
  t.same(original, JSON.parse(json), 'changing the copy leaves the original alone')
})

test('ParsedUsers: every read a fresh object, exactly what JSON.parse gives, nested values included', async (t) => {
  const users = new ParsedUsers()
  const json = '{"id":7,"roles":["admin",{"scope":"x"}],"profile":{"name":"Alice","tags":[]},"__proto__":{"polluted":true},"none":null}'
  const first = users.get(json) as Record<string, unknown>
  const second = users.get(json) as Record<string, unknown>
  for (const user of [first, second]) {
    t.same(user, JSON.parse(json))
    t.same(Object.keys(user), Object.keys(JSON.parse(json)), 'the same keys in the same order')
    t.equal(Object.getPrototypeOf(user), Object.prototype, '"__proto__" stays an own property, not the prototype')
    t.ok(Object.hasOwn(user, '__proto__'))
  }
  t.not(first, second, 'two reads, two objects')
  t.not(first.roles, second.roles, 'nested arrays are copies')
  t.not(first.profile, second.profile, 'nested objects are copies')
  ;(first.roles as unknown[]).push('root')
  ;((first.roles as unknown[])[1] as { scope: string }).scope = 'all'
  ;(first.profile as { name: string }).name = 'Mallory'
  first.id = 8
  t.same(users.get(json), JSON.parse(json), 'changing what one read gave changes no later read')
  t.equal(({} as { polluted?: boolean }).polluted, undefined, 'Object.prototype untouched')
  for (const text of ['null', '"alice"', '42', '[1,{"a":2}]']) {
    t.same(users.get(text), JSON.parse(text), `${text}: as JSON.parse gives it`)
  }
  const list = users.get('[1,{"a":2}]') as unknown[]
  t.not(users.get('[1,{"a":2}]'), list, 'an array user is a fresh array each read')
  t.throws(() => users.get('{"id":'), SyntaxError, 'bad JSON throws as JSON.parse does')
})

test('a handler that changes the user or the metadata it was given changes nothing stored or cached', async (t) => {
  for (const [name, make] of allStores(t)) {
    await t.test(name, async (t) => {
      const store = await make()
      const app = await buildApp(t, { store }, (app) => {
        app.get('/meddle', async (request) => {
          const user = request.powSession.user as unknown as { name: string }
          user.name = 'Mallory'
          const metadata = request.powSession.metadata as unknown as { device: { name: string, tags: string[] } }
          metadata.device.name = 'changed'
          metadata.device.tags.push('changed')
          return { metadata: request.powSession.metadata }
        })
      })
      const jar = new CookieJar(app)
      await jar.request({ method: 'POST', url: '/login', payload: { id: 1, name: 'Alice', metadata: { device: { name: 'laptop', tags: ['a'] } } } })
      const meddled = await jar.request('/meddle')
      t.equal(meddled.statusCode, 200)
      t.same(meddled.json().metadata.device, { name: 'laptop', tags: ['a'] }, 'each read of metadata is a fresh copy')
      for (let i = 0; i < 3; i++) {
        const body = (await jar.request('/me')).json()
        t.same(body.user, { id: 1, name: 'Alice' }, `read ${i + 1}: the stored user`)
        t.same(body.metadata.device, { name: 'laptop', tags: ['a'] }, `read ${i + 1}: the stored metadata`)
      }
    })
  }
})

test('a cached device record is never changed by a step: renewals, claims and rotations copy it', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const app = await buildApp(t, { store })
  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })
  const { bucket, fingerprint } = secretDevice((jar.get('pow_session') as string).split('.')[0])
  const read = async (): Promise<Device> => (await app.pow.devices.read(bucket, fingerprint))?.device as Device
  const before = await read()
  t.equal(await read(), before, 'read twice: parsed once')
  const snapshot = JSON.stringify(before)

  clock.tick(16 * 60_000)
  t.equal((await jar.request('/me')).statusCode, 200, 'a renewal')
  t.equal((await jar.request('/me')).statusCode, 200, 'its claim')
  jar.delete('pow_session')
  t.equal((await jar.request('/me')).statusCode, 200, 'a remember-me sign-in')
  t.equal(JSON.stringify(before), snapshot, 'the record parsed before them is as it was')
  const after = await read()
  t.not(after, before, 'the device written since is parsed anew')
  t.not(after.session?.hash, before.session?.hash)
  t.equal(after.signedInAt, before.signedInAt)
})

test('metadata given to create() reads back as JSON: in the same request, later, and after a remember-me sign-in', async (t) => {
  const app = await buildApp(t, {}, (app) => {
    app.post('/login-dated', async (request) => {
      const metadata = { since: new Date(0), nested: { at: new Date(1000) }, gone: undefined }
      await request.powSession.create({ id: 1, name: 'Alice' }, { persistent: true, metadata: metadata as unknown as Record<string, string> })
      return { metadata: request.powSession.metadata }
    })
  })
  const jar = new CookieJar(app)
  const expected = { since: '1970-01-01T00:00:00.000Z', nested: { at: '1970-01-01T00:00:01.000Z' } }
  const login = await jar.request({ method: 'POST', url: '/login-dated' })
  t.match(login.json().metadata, expected, 'the request that signed in sees what the store will give back')
  t.notOk('gone' in login.json().metadata, 'undefined values go, as in JSON')
  t.match((await jar.request('/me')).json().metadata, expected, 'a later request')
  jar.delete('pow_session')
  const remembered = await jar.request('/me')
  t.equal(remembered.statusCode, 200, 'signed in again by the remember-me token')
  t.match(remembered.json().metadata, expected, 'the token carried the same metadata')
})

test('ParsedUsers: a user of more than 4 kB of JSON is parsed on every read, each a fresh object', async (t) => {
  const users = new ParsedUsers()
  const json = JSON.stringify({ id: 1, bio: 'x'.repeat(5000), nested: { tags: ['a'] } })
  const first = users.get(json) as { nested: { tags: string[] } }
  t.same(first, JSON.parse(json))
  first.nested.tags.push('changed')
  const second = users.get(json)
  t.not(second, first)
  t.same(second, JSON.parse(json), 'what the first read changed is not in the second')
})
