import { once } from 'node:events'
import { test, type Test } from 'tap'
import { MemoryStore, type PowStore, RedisStore } from '../lib/index.js'
import { copyMetadata, ParsedRecords } from '../lib/parsed.js'
import type { SessionRecord } from '../lib/types.js'
import { buildApp } from './helpers/app.js'
import { CookieJar } from './helpers/jar.js'
import { startRedis } from './helpers/redis.js'

const recordText = (i: number): string =>
  JSON.stringify({ userKey: String(i), fingerprint: `fp${i}`, insertedAt: i, signedInAt: i, metadata: { i } })

test('ParsedRecords: one parse per JSON text while it is cached, equal to JSON.parse', async (t) => {
  const records = new ParsedRecords()
  const first = records.get(recordText(1))
  t.same(first, JSON.parse(recordText(1)))
  t.equal(records.get(recordText(1)), first, 'the same text read again: the cached object')
  t.equal(records.get(recordText(1)), first, 'an equal string built anew (as a Redis reply is) hits too')

  records.forget(recordText(1))
  const again = records.get(recordText(1))
  t.not(again, first, 'forgotten: parsed again')
  t.same(again, first)
})

test('ParsedRecords: bounded; the oldest entries go first, a re-read keeps one', async (t) => {
  const records = new ParsedRecords()
  const kept = records.get(recordText(0))
  const dropped = records.get(recordText(1))
  for (let i = 2; i < 2000; i++) {
    records.get(recordText(i))
    if (i % 100 === 0) t.equal(records.get(recordText(0)), kept, `a record read now and then stays (after ${i})`)
  }
  t.not(records.get(recordText(1)), dropped, 'a record not read for 2000 others was let go')
})

test('ParsedRecords: a record of more than 2 kB of JSON is parsed on every read, not kept', async (t) => {
  const records = new ParsedRecords()
  const big = JSON.stringify({ userKey: '1', fingerprint: 'fp', insertedAt: 1, signedInAt: 1, metadata: { note: 'x'.repeat(2100) } })
  const first = records.get(big)
  t.same(first, JSON.parse(big))
  t.not(records.get(big), first, 'parsed again')
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

async function stores (t: Test): Promise<Array<[string, () => Promise<PowStore>]>> {
  return [
    ['MemoryStore', async () => new MemoryStore()],
    ['RedisStore', async () => {
      const server = await startRedis(t)
      const client = server.client()
      await once(client, 'ready')
      return new RedisStore(client)
    }]
  ]
}

test('a handler that changes the user or the metadata it was given changes nothing stored or cached', async (t) => {
  for (const [name, make] of await stores(t)) {
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

test('a session deleted from MemoryStore leaves nothing in its parsed cache', async (t) => {
  const store = new MemoryStore()
  const app = await buildApp(t, { store })
  const jar = new CookieJar(app)
  await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  const sid = (await app.pow.rawStore.listSessions('1'))[0]
  const before = (await store.getSession(sid.sidHash))?.record as SessionRecord
  t.equal((await store.getSession(sid.sidHash))?.record, before, 'read twice: parsed once')
  await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })
  await store.putSession(sid.sidHash, before, undefined, 60_000, 1000)
  t.not((await store.getSession(sid.sidHash))?.record, before, 'stored again after its delete: parsed anew')
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
