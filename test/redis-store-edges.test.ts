/*
 * RedisStore at its edges, on a client that never reaches a server: a command that throws as it
 * is sent, and buckets that cannot come from userBucket().
 */
import { EventEmitter } from 'node:events'
import type { Redis } from 'ioredis'
import { test } from 'tap'
import { randomFingerprint, userBucket } from '../lib/crypto.js'
import { RedisStore } from '../lib/stores/redis.js'

/** The part of an ioredis client the store uses, ready, with HMGET as `hmget` answers. */
function fakeClient (hmget: (...args: string[]) => Promise<Array<string | null>>): Redis & { sent: string[][] } {
  const client = Object.assign(new EventEmitter(), {
    status: 'ready',
    options: {},
    sent: [] as string[][],
    evalsha: async () => { throw new Error('not used here') },
    hmget: (...args: string[]) => {
      client.sent.push(args)
      return hmget(...args)
    }
  })
  return client as unknown as Redis & { sent: string[][] }
}

test('RedisStore: a command that throws as it is sent rejects the call with its error, and the store goes on', async (t) => {
  let thrown: Error | undefined = new Error('ERR wrong number of arguments')
  const client = fakeClient(async () => ['{"device":1}', '{"id":1}', '3'])
  const hmget = client.hmget as unknown as (...args: string[]) => Promise<Array<string | null>>
  client.hmget = ((...args: string[]) => {
    if (thrown !== undefined) throw thrown
    return hmget(...args)
  }) as unknown as typeof client.hmget
  const store = new RedisStore(client, { commandTimeout: 50 })
  const bucket = userBucket('u')
  const fp = randomFingerprint()

  let settled = false
  const call = store.read(bucket, fp).finally(() => { settled = true })
  t.type(call, Promise, 'read returns a promise, even when the client throws')
  await t.rejects(call, thrown, 'which rejects with the error the client threw')
  t.ok(settled, 'settled at once, not at the timeout')

  thrown = undefined
  // Longer than commandTimeout: a command that threw left no timer that could fail later ones.
  await new Promise((resolve) => setTimeout(resolve, 80))
  t.same(await store.read(bucket, fp), { data: '{"device":1}', user: '{"id":1}', version: 3 }, 'the next command answers')
  t.same(client.sent, [[`pow:{${bucket}}:d:${fp}`, 'data', 'user', 'v']], 'one HMGET reached the client: the one that did not throw')
})

test('RedisStore: a bucket userBucket() cannot make names no device, and costs no command', async (t) => {
  const client = fakeClient(async () => ['{}', '{}', '1'])
  const store = new RedisStore(client)
  const fp = randomFingerprint()
  // Glob characters, hash-tag braces and the key separator would name other keys, or other slots.
  for (const bucket of ['', 'abc', 'abcde', 'a*b?', '{ab}', 'ab}c', 'a:bc', 'ab c', 'éabc'.slice(0, 4)]) {
    t.equal(await store.read(bucket, fp), null, `bucket ${JSON.stringify(bucket)}`)
  }
  t.same(client.sent, [], 'no command was sent')
  t.same(await store.read(userBucket('someone'), fp), { data: '{}', user: '{}', version: 1 }, 'a real bucket is read')
  t.equal(client.sent.length, 1)
})

test('RedisStore: an HMGET answer that is not a list of fields rejects the read, at once', async (t) => {
  const client = fakeClient(async () => null as unknown as Array<string | null>)
  const store = new RedisStore(client, { commandTimeout: 5000 })
  const started = Date.now()
  await t.rejects(store.read(userBucket('u'), randomFingerprint()), TypeError, 'the answer could not be read as a device')
  t.ok(Date.now() - started < 1000, 'rejected when the answer came, not at the command timeout')
  const answered = fakeClient(async () => [null, null, null])
  t.equal(await new RedisStore(answered).read(userBucket('u'), randomFingerprint()), null, 'no fields: no device')
})
