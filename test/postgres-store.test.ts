import { setTimeout as sleep } from 'node:timers/promises'
import { createDatabase, pgTest, postgresStore } from './helpers/postgres.js'
import { storeContract } from './store-contract.js'

let prefixes = 0

pgTest('PostgresStore passes the store contract', { timeout: 120_000 }, async (t) => {
  const db = await createDatabase(t)
  const pool = db.pool()
  storeContract(t, async () => {
    // A table prefix per subtest: the subtests share the database, never their rows.
    const store = await postgresStore(db, { tablePrefix: `c${++prefixes}_` })
    return { store, advance: async (ms) => { await sleep(ms) }, close: async () => { await store.close() } }
  })
  void pool
})
