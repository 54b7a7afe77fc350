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
