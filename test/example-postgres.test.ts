/**
 * The example with DATABASE_URL: sessions in PostgreSQL through @fastify/postgres (app.pg), the
 * table created at start. Every JSON API test of example.test.ts runs again here, each on a
 * database of its own; and sessions survive a restart of the server.
 */
import { test } from 'tap'
import { buildApp } from '../examples/app.js'
import { survivesRestart } from './helpers/example-restart.js'
import { createDatabase, pgTest, postgresAvailable } from './helpers/postgres.js'

const SECRET = 'example-postgres-secret-0123456789-abcdef'

pgTest('the example with DATABASE_URL keeps sessions in PostgreSQL across a restart', {}, async (t) => {
  const db = await createDatabase(t)
  const again = await survivesRestart(t, async () => await buildApp({ secret: SECRET, databaseUrl: db.url }), async (jar) => {
    const { rows } = await db.query('SELECT fingerprint, user_key, data, user_data FROM pow_devices')
    t.equal(rows.length, 1, 'the device is a row of pow_devices, in the table created at start')
    t.equal(rows[0].fingerprint, (await jar.request('/api/me')).json().session.fingerprint)
    const row = JSON.stringify(rows[0])
    for (const name of ['pow_session', 'pow_persistent_session']) {
      const secret = jar.get(name)?.split('.')[0]
      t.equal(secret?.length, 69, `${name} holds a secret`)
      // The secret starts with the bucket and fingerprint (the row's address); its random part is what signs in.
      t.notOk(row.includes((secret ?? '').slice(26)), `the row holds no ${name} secret, only its hash`)
    }
  })
  again.cookies.delete('pow_session')
  t.equal((await again.request('/api/me')).statusCode, 200, 'and the remember-me cookie alone signs the browser back in')
})

if (postgresAvailable) {
  process.env.POW_EXAMPLE_TEST_STORE = 'postgres'
  await import('./example.test.js')
} else {
  test('the example JSON tests on PostgreSQL', { skip: 'PostgreSQL is not reachable (see the message above)' }, async () => {})
}
