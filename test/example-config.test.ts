// Forked with this test's own execArgv (tap's TypeScript loader), not tsx: coverage stays right.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { test } from 'tap'
import { configFromEnv } from '../examples/config.js'

const random = (): string => 'r'.repeat(48)

test('the example server reads its settings from the environment', async (t) => {
  const config = configFromEnv({
    PORT: '8080',
    HOST: '0.0.0.0',
    POW_SECRET: 's'.repeat(40),
    POW_SESSION_TTL_MS: '600000',
    POW_PERSISTENT_TTL_MS: '86400000',
    LOGIN_MAX_FAILURES_PER_IP: '50',
    LOGIN_MAX_FAILURES_PER_ACCOUNT: '5',
    LOGIN_FAILURE_WINDOW_MS: '60000',
    REDIS_URL: 'redis://127.0.0.1:6380'
  }, random)
  t.match(config, { port: 8080, host: '0.0.0.0', generatedSecret: false })
  t.match(config.options, {
    secret: 's'.repeat(40),
    production: false,
    session: { ttl: 600000 },
    persistentSession: { ttl: 86400000 },
    loginLimits: { perIp: 50, perAccount: 5, windowMs: 60000 },
    redisUrl: 'redis://127.0.0.1:6380'
  })
  t.same(Object.keys(config.options.session ?? {}), ['ttl'], 'unset durations stay unset')
  t.equal('databaseUrl' in config.options, false)
})

test('defaults: port 3000 on 127.0.0.1, a random secret, no limits of its own', async (t) => {
  const config = configFromEnv({ REDIS_URL: '' }, random)
  t.match(config, { port: 3000, host: '127.0.0.1', generatedSecret: true, options: { secret: random(), loginLimits: {}, session: {} } })
  t.equal('redisUrl' in config.options, false, 'an empty variable is unset')
})

test('bad values fail with the name of the variable', async (t) => {
  const bad: Array<[Record<string, string>, RegExp]> = [
    [{ PORT: '99999' }, /^PORT must be an integer/],
    [{ POW_SESSION_TTL_MS: '-1' }, /^POW_SESSION_TTL_MS must be a positive number/],
    [{ LOGIN_MAX_FAILURES_PER_IP: '2.5' }, /^LOGIN_MAX_FAILURES_PER_IP must be a positive integer/],
    [{ LOGIN_MAX_FAILURES_PER_ACCOUNT: '0' }, /^LOGIN_MAX_FAILURES_PER_ACCOUNT must be a positive integer/],
    [{ LOGIN_FAILURE_WINDOW_MS: 'soon' }, /^LOGIN_FAILURE_WINDOW_MS must be a positive number/],
    [{ NODE_ENV: 'production' }, /^POW_SECRET must be set in production/]
  ]
  for (const [env, message] of bad) t.throws(() => configFromEnv(env, random), message, JSON.stringify(env))
})

test('OIDC_* variables: all three or none; the redirect URI defaults to this server', async (t) => {
  const config = configFromEnv({ PORT: '4000', OIDC_ISSUER: 'https://idp.example.com', OIDC_CLIENT_ID: 'app', OIDC_CLIENT_SECRET: 'shh' }, random)
  t.same(config.options.oidc, { issuer: 'https://idp.example.com', clientId: 'app', clientSecret: 'shh', redirectUri: 'http://127.0.0.1:4000/auth/oidc/callback', name: undefined })
  const named = configFromEnv({ HOST: '0.0.0.0', OIDC_ISSUER: 'https://idp.example.com', OIDC_CLIENT_ID: 'app', OIDC_CLIENT_SECRET: 'shh', OIDC_NAME: 'Acme', OIDC_REDIRECT_URI: 'https://app.example.com/auth/oidc/callback' }, random)
  t.match(named.options.oidc, { name: 'Acme', redirectUri: 'https://app.example.com/auth/oidc/callback' })
  t.equal(configFromEnv({}, random).options.oidc, undefined)
  t.throws(() => configFromEnv({ OIDC_ISSUER: 'https://idp.example.com' }, random), /^OIDC_CLIENT_ID, OIDC_CLIENT_SECRET must be set with the other OIDC_ variables/)
  t.throws(() => configFromEnv({ OIDC_ISSUER: 'idp', OIDC_CLIENT_ID: 'app', OIDC_CLIENT_SECRET: 'shh' }, random), /OIDC_ISSUER must be a URL/)
  t.throws(() => configFromEnv({ NODE_ENV: 'production', POW_SECRET: 's'.repeat(40), OIDC_ISSUER: 'https://idp.example.com', OIDC_CLIENT_ID: 'app', OIDC_CLIENT_SECRET: 'shh' }, random),
    /^OIDC_REDIRECT_URI must be set in production/, 'no plain-http default in production')
})

test('TRUST_PROXY: the proxies, or true', async (t) => {
  t.equal(configFromEnv({ TRUST_PROXY: '10.0.0.0/8, 127.0.0.1' }, random).options.trustProxy, '10.0.0.0/8, 127.0.0.1')
  t.equal(configFromEnv({ TRUST_PROXY: 'true' }, random).options.trustProxy, true)
  t.equal('trustProxy' in configFromEnv({}, random).options, false)
})

test('npm start: the server listens, and a bad variable stops it with a message', async (t) => {
  const server = spawn(process.execPath, [...process.execArgv, 'examples/server.ts'], {
    env: { ...process.env, PORT: '0', NODE_ENV: 'development', LOGIN_MAX_FAILURES_PER_IP: '3' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { server.kill('SIGKILL') })
  let out = ''
  const address = await new Promise<string>((resolve, reject) => {
    server.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      const match = /listening at (http:\/\/[^"\s]+)/.exec(out)
      if (match !== null) resolve(match[1])
    })
    server.once('exit', (code) => { reject(new Error(`the server exited (${String(code)}): ${out}`)) })
  })
  const login = async (): Promise<number> => (await fetch(`${address}/api/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: 'alice@example.com', password: 'wrong' })
  })).status
  t.same([await login(), await login(), await login(), await login()], [401, 401, 401, 429], 'LOGIN_MAX_FAILURES_PER_IP=3 applies')
  server.kill('SIGTERM')
  const [code] = await once(server, 'exit')
  t.equal(code, 0, 'SIGTERM closes it cleanly')

  const bad = spawn(process.execPath, [...process.execArgv, 'examples/server.ts'], { env: { ...process.env, PORT: '0', LOGIN_FAILURE_WINDOW_MS: '-5' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  bad.stderr.on('data', (chunk: Buffer) => { err += chunk.toString() })
  const [badCode] = await once(bad, 'exit')
  t.equal(badCode, 1)
  t.match(err, /LOGIN_FAILURE_WINDOW_MS must be a positive number of milliseconds/)
})
