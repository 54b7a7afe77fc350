/*
 * PostgresStore at its edges: the arguments a commit refuses before it takes a connection, and
 * how a failed query is explained when the pool reported an error before it. The refusals are
 * checked on a pool that counts its connections (no server needed), the writes they let through
 * on the machine's PostgreSQL (test/helpers/postgres.ts).
 */
import { test } from 'tap'
import { PostgresStore, type PgClient, type PgPool } from '../lib/stores/postgres.js'
import { randomFingerprint, userBucket } from '../lib/crypto.js'
import type { DeviceWrite } from '../lib/types.js'
import { createDatabase, pgTest, postgresStore } from './helpers/postgres.js'

/**
 * A pool that never reaches a server: each connection's queries get `answer`'s error or rows.
 * `connections` counts the connections asked for; `emit` raises the pool's 'error' event.
 */
function fakePool (answer: (text: string) => { err?: Error, rows?: unknown[] } = () => ({ rows: [] })): PgPool & { connections: number, released: unknown[], emit: (err: Error) => void } {
  const listeners: Array<(err: Error) => void> = []
  const pool = {
    connections: 0,
    released: [] as unknown[],
    on: (_event: 'error', listener: (err: Error) => void) => { listeners.push(listener) },
    emit: (err: Error) => { for (const listener of listeners) listener(err) },
    connect: (callback: Parameters<PgPool['connect']>[0]) => {
      pool.connections++
      const client: PgClient = {
        query: (config, done) => {
          const { err, rows = [] } = answer(config.text)
          setImmediate(() => done(err, { rows, rowCount: rows.length }))
        },
        once: () => client,
        removeListener: () => client
      }
      setImmediate(() => callback(undefined, client, (err) => { pool.released.push(err) }))
    }
  }
  return pool
}

const USER = JSON.stringify({ id: 'edge' })

function write (fingerprint: string, fields: Partial<DeviceWrite> = {}): DeviceWrite {
  return { fingerprint, data: JSON.stringify({ device: fingerprint }), ttl: 60_000, usedAt: Date.now(), ...fields }
}

test('PostgresStore: a commit with a limit that is not a non-negative 32-bit integer is refused before any query', async (t) => {
  const pool = fakePool()
  const store = new PostgresStore(pool, { sweepInterval: 0 })
  for (const limit of [-1, 1.5, Number.NaN, Infinity, 2 ** 31, '3' as unknown as number]) {
    await t.rejects(store.commit({ userKey: 'u', user: USER, devices: [write('f')], limit }), {
      name: 'TypeError', message: /DeviceChange\.limit must be a non-negative integer/
    }, `limit ${String(limit)}`)
  }
  t.equal(pool.connections, 0, 'no connection was taken')
})

test('PostgresStore: a device write without a number ttl or a finite usedAt is refused before any query', async (t) => {
  const pool = fakePool()
  const store = new PostgresStore(pool, { sweepInterval: 0 })
  const bad: Array<[string, Partial<DeviceWrite>]> = [
    ['ttl NaN', { ttl: Number.NaN }],
    ['ttl missing', { ttl: undefined as unknown as number }],
    ['ttl a string', { ttl: '60000' as unknown as number }],
    ['usedAt Infinity', { usedAt: Infinity }],
    ['usedAt NaN', { usedAt: Number.NaN }]
  ]
  for (const [what, fields] of bad) {
    await t.rejects(store.commit({ userKey: 'u', user: USER, devices: [write('ok'), write('f', fields)] }), {
      name: 'TypeError', message: /a device write needs a ttl and a finite usedAt/
    }, what)
  }
  t.equal(pool.connections, 0, 'no connection was taken: nothing of the change was sent')
})

pgTest('PostgresStore: what the checks let through works: the largest limit, a delete without ttl, a ttl beyond any date', {}, async (t) => {
  const db = await createDatabase(t)
  const store = await postgresStore(db)
  const userKey = 'edges'
  const bucket = userBucket(userKey)
  const [a, b, c] = [randomFingerprint(), randomFingerprint(), randomFingerprint()]
  t.same(await store.commit({ userKey, user: USER, devices: [write(a, { usedAt: 1 }), write(b, { usedAt: 2 })], limit: 2 ** 31 - 1 }), { ok: true, evicted: [] }, 'a limit of 2^31 - 1 is taken, and evicts nothing')

  // A delete needs neither ttl nor usedAt.
  t.same(await store.commit({ userKey, devices: [{ fingerprint: a, data: null, ttl: Number.NaN, usedAt: Number.NaN }] }), { ok: true, evicted: [] }, 'a delete without a ttl or usedAt applies')
  t.equal(await store.read(bucket, a), null, 'and deleted the device')

  // A ttl past what a timestamp holds is capped (about 317 years), not an error of the database.
  t.same(await store.commit({ userKey, devices: [write(c, { ttl: Number.MAX_VALUE, usedAt: 3 })] }), { ok: true, evicted: [] }, 'a ttl of Number.MAX_VALUE applies')
  const { rows } = await db.query('SELECT extract(epoch FROM expires_at - now()) / (365.25 * 86400) AS years FROM pow_devices WHERE fingerprint = $1', [c])
  t.ok(Number(rows[0].years) > 316 && Number(rows[0].years) < 318, `it expires in ${Number(rows[0].years).toFixed(1)} years`)
  t.equal((await store.read(bucket, c))?.data, JSON.stringify({ device: c }), 'and reads back')

  t.same(await store.commit({ userKey, devices: [], limit: 0 }), { ok: true, evicted: [b, c] }, 'a limit of 0 evicts every device, least recently used first')
  t.same(await store.list(userKey), [], 'none is left')
})

test('PostgresStore: a query that fails after the pool reported an error says so; other failures are given as they are', async (t) => {
  let failure: Error | undefined
  const pool = fakePool(() => (failure === undefined ? { rows: [] } : { err: failure }))
  const store = new PostgresStore(pool, { sweepInterval: 0 })
  const bucket = userBucket('u')

  failure = new Error('Connection terminated unexpectedly')
  await t.rejects(store.read(bucket, 'f'), { message: 'Connection terminated unexpectedly' }, 'before any pool error: the error as it came')

  // An idle connection broke (the database restarted): the pool emits 'error', and the next
  // query on a dead connection fails with a message that alone says little.
  const idle = new Error('read ECONNRESET')
  pool.emit(idle)
  const terminated = new Error('Connection terminated unexpectedly')
  failure = terminated
  const err = await store.read(bucket, 'f').then(() => undefined, (e: Error) => e)
  t.equal(err?.message, "Connection terminated unexpectedly (the pool's last error: read ECONNRESET)", 'the message carries the pool\'s last error')
  t.equal(err?.cause, terminated, 'with the query\'s error as its cause')

  failure = new Error('connect ECONNREFUSED 127.0.0.1:5432')
  t.match((await store.read(bucket, 'f').then(() => undefined, (e: Error) => e))?.message, /^connect ECONNREFUSED 127\.0\.0\.1:5432 \(the pool's last error: read ECONNRESET\)$/, 'a refused connection too')

  failure = idle
  t.equal(await store.read(bucket, 'f').then(() => undefined, (e: Error) => e), idle, 'the pool\'s error itself is not wrapped in itself')

  const syntax = Object.assign(new Error('syntax error at or near "x"'), { severity: 'ERROR', code: '42601' })
  failure = syntax
  t.equal(await store.read(bucket, 'f').then(() => undefined, (e: Error) => e), syntax, 'an error the server answered with is given as it is')

  failure = undefined
  t.equal(await store.read(bucket, 'f'), null, 'and a query that works answers')
  t.ok(pool.released.every((e) => e === undefined), 'every connection went back to the pool (an error answer leaves it usable)')
  await store.close()
})
