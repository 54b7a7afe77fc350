import { install } from '@sinonjs/fake-timers'
import { test } from 'tap'
import { MemoryStore } from '../lib/index.js'
import { hashToken, randomToken, userBucket } from '../lib/crypto.js'
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

test('MemoryStore evicts expired entries on writes: memory follows live sessions', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const now = Date.now()
  for (let i = 0; i < 1000; i++) {
    const userKey = `u${i % 100}`
    await store.putSession(hashToken(randomToken(userBucket(userKey))), { userKey, fingerprint: `f${i}`, insertedAt: now, signedInAt: now, metadata: {} }, { id: userKey }, 60_000, 1000)
    await store.putToken(hashToken(randomToken(userBucket(userKey))), { userKey, fingerprint: `f${i}`, user: { id: userKey }, metadata: {} }, 120_000)
  }
  await store.lock('l', 1000)
  t.match(store.size, { sessions: 1000, tokens: 1000, users: 100, locks: 1 })

  clock.tick(60_001)
  await store.lock('other', 1)
  t.match(store.size, { sessions: 0, tokens: 1000, users: 100, locks: 1 }, 'sessions and the old lock are gone after one write')

  clock.tick(60_000)
  await store.lock('last', 1)
  t.same(store.size, { sessions: 0, tokens: 0, users: 0, locks: 1, heap: 1 }, 'nothing but the newest lock is left')
})

test('MemoryStore: extending a token many times keeps the expiry heap small', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const t1 = hashToken(randomToken(userBucket('u')))
  await store.putToken(t1, { userKey: 'u', fingerprint: 'f', user: { id: 'u' }, metadata: {} }, 10_000)
  for (let i = 0; i < 100; i++) {
    clock.tick(5_000)
    await store.touchToken(t1, 10_000)
  }
  t.ok(await store.getToken(t1), 'the token is still alive')
  t.ok(store.size.heap <= 2, `heap holds ${store.size.heap} node(s) for one token`)
})

test('MemoryStore compacts its slots once most entries are gone, and the survivors stay intact', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryStore()
  const now = Date.now()
  const kept: Array<{ sid: string, token: string, userKey: string, fingerprint: string }> = []
  for (let i = 0; i < 2000; i++) {
    const userKey = `u${i % 300}`
    const sid = hashToken(randomToken(userBucket(userKey)))
    const token = hashToken(randomToken(userBucket(userKey)))
    const fingerprint = `f${i}`
    // One in ten lives long; the rest expire together.
    const ttl = i % 10 === 0 ? 600_000 : 60_000
    await store.putSession(sid, { userKey, fingerprint, insertedAt: now, signedInAt: now, metadata: { i } }, { id: userKey, i }, ttl, 1000)
    await store.putToken(token, { userKey, fingerprint, user: { id: userKey }, metadata: { i } }, ttl)
    if (i % 10 === 0) kept.push({ sid, token, userKey, fingerprint })
  }
  t.equal(store.slots.entries, 4000)
  t.equal(store.slots.users, 300)

  clock.tick(60_001)
  await store.lock('evict', 1)
  t.match(store.size, { sessions: 200, tokens: 200, users: 30, locks: 1, heap: 401 })
  t.ok(store.slots.entries <= 401 && store.slots.users <= 30, `compacted to ${JSON.stringify(store.slots)}`)
  for (const { sid, token, userKey, fingerprint } of kept) {
    const found = await store.getSession(sid)
    if (found?.record.fingerprint !== fingerprint || (found.user as { id: string }).id !== userKey) {
      t.fail(`session ${fingerprint} after compaction: ${JSON.stringify(found)}`)
      return
    }
    if ((await store.getToken(token))?.fingerprint !== fingerprint) {
      t.fail(`token ${fingerprint} after compaction`)
      return
    }
  }
  const listed = await store.listSessions(kept[0].userKey)
  t.same(listed.map((s) => s.sidHash).sort(), kept.filter((k) => k.userKey === kept[0].userKey).map((k) => k.sid).sort(), 'user lists relinked')
  t.same(await store.revoke(kept[0].userKey, { fingerprint: kept[0].fingerprint }), [kept[0].fingerprint])
  t.equal(await store.getToken(kept[0].token), null, 'revoke finds the token through the relinked list')

  clock.tick(600_000)
  await store.lock('last', 1)
  t.same(store.size, { sessions: 0, tokens: 0, users: 0, locks: 1, heap: 1 }, 'the expiry heap still finds every survivor')
  t.equal(store.slots.entries, 1, 'compacted again: only the lock\'s slot')
})

test('MemoryStore: a fingerprint that another one starts with is a different fingerprint', async (t) => {
  fakeClock(t)
  const store = new MemoryStore()
  const now = Date.now()
  const userKey = 'u"\\'
  const put = async (fingerprint: string): Promise<string> => {
    const sid = hashToken(randomToken(userBucket(userKey)))
    await store.putSession(sid, { userKey, fingerprint, insertedAt: now, signedInAt: now, metadata: {} }, { id: userKey }, 60_000, 1000)
    return sid
  }
  const fingerprints = ['fp', 'fp2', 'fp"', 'fp\\', '']
  const sids = []
  for (const fingerprint of fingerprints) sids.push(await put(fingerprint))
  for (const fingerprint of fingerprints) await put(fingerprint)
  for (const sid of sids) t.equal((await store.getSession(sid))?.retired, true, 'each retired by its own fingerprint only')
  t.equal((await store.listSessions(userKey)).length, fingerprints.length)
  t.same((await store.revoke(userKey, { fingerprint: 'fp' })), ['fp'])
  t.same((await store.revoke(userKey, { except: 'fp2' })).sort(), ['', 'fp"', 'fp\\'].sort())
  t.same((await store.listSessions(userKey)).map((s) => s.record.fingerprint), ['fp2'])
})
