/**
 * The OpenID Provider harness (test/helpers/oidc-provider.ts) and its sign-in driver
 * (test/helpers/oidc-login.ts), driven with openid-client directly: what the example's
 * "Sign in with OpenID Connect" does, without the app.
 */
import * as client from 'openid-client'
import { test, type Test } from 'tap'
import { signInAtProvider } from './helpers/oidc-login.js'
import { startProvider, type StartedProvider, type StartProviderOptions } from './helpers/oidc-provider.js'

const REDIRECT_URI = 'http://app.test/auth/oidc/callback'
const SCOPE = 'openid email profile'

async function setup (t: Test, options: Partial<StartProviderOptions> = {}): Promise<StartedProvider> {
  const provider = await startProvider({ redirectUris: [REDIRECT_URI], ...options })
  t.teardown(() => provider.close())
  return provider
}

async function discover (provider: StartedProvider, auth?: client.ClientAuth): Promise<client.Configuration> {
  return await client.discovery(new URL(provider.issuer), provider.clientId, provider.clientSecret, auth, {
    execute: [client.allowInsecureRequests]
  })
}

interface Attempt { url: URL, verifier: string, state: string, nonce: string }

/** An authorization URL as the app builds it: PKCE S256, state, nonce. */
async function authorize (config: client.Configuration): Promise<Attempt> {
  const verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT_URI,
    scope: SCOPE,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce
  })
  return { url, verifier, state, nonce }
}

/** Signs `login` in at the provider: the callback URL it sends the browser to. */
async function callbackFor (config: client.Configuration, login: string): Promise<{ attempt: Attempt, callback: URL }> {
  const attempt = await authorize(config)
  return { attempt, callback: new URL(await signInAtProvider(attempt.url.href, login)) }
}

const checks = (attempt: Attempt): client.AuthorizationCodeGrantChecks =>
  ({ expectedState: attempt.state, expectedNonce: attempt.nonce, pkceCodeVerifier: attempt.verifier })

test('startProvider: an http issuer on loopback, discovered with allowInsecureRequests', async (t) => {
  const provider = await setup(t, { clientId: 'my-client', clientSecret: 'my-secret-0123456789-abcdefghijklmnop' })
  t.match(provider.issuer, /^http:\/\/127\.0\.0\.1:\d+$/)
  t.not(provider.issuer, 'http://127.0.0.1:0')
  t.equal(provider.clientId, 'my-client')
  t.equal(provider.clientSecret, 'my-secret-0123456789-abcdefghijklmnop')
  t.equal(provider.provider.issuer, provider.issuer)

  await t.rejects(client.discovery(new URL(provider.issuer), provider.clientId, provider.clientSecret), 'plain http is refused without allowInsecureRequests')
  const metadata = (await discover(provider)).serverMetadata()
  t.equal(metadata.issuer, provider.issuer)
  t.equal(metadata.authorization_endpoint, `${provider.issuer}/auth`)
  t.equal(metadata.token_endpoint, `${provider.issuer}/token`)
  t.same(metadata.code_challenge_methods_supported, ['S256'])
  t.ok(metadata.supportsPKCE())
  for (const scope of ['openid', 'email', 'profile']) t.ok(metadata.scopes_supported?.includes(scope), `scope ${scope}`)
  for (const claim of ['sub', 'email', 'email_verified', 'name']) t.ok(metadata.claims_supported?.includes(claim), `claim ${claim}`)
  t.ok(metadata.authorization_response_iss_parameter_supported)
})

test('startProvider: random client secret and a fresh provider each time', async (t) => {
  const [a, b] = await Promise.all([setup(t), setup(t)])
  t.not(a.issuer, b.issuer)
  t.not(a.clientSecret, b.clientSecret)
  t.ok(a.clientSecret.length >= 32)
  t.equal(a.clientId, b.clientId)
})

for (const [method, auth] of [
  ['client_secret_basic', client.ClientSecretBasic],
  ['client_secret_post', client.ClientSecretPost]
] as const) {
  test(`sign in with ${method}: ID token claims, then the code is single-use`, async (t) => {
    const provider = await setup(t, {
      accounts: { alice: { email: 'alice@example.com', email_verified: true, name: 'Alice Liddell' } }
    })
    const config = await discover(provider, auth(provider.clientSecret))
    const { attempt, callback } = await callbackFor(config, 'alice')
    t.equal(attempt.url.searchParams.get('code_challenge_method'), 'S256')

    t.equal(callback.origin + callback.pathname, REDIRECT_URI, 'back at the redirect_uri')
    t.match(callback.searchParams.get('code'), /^[\w-]{20,}$/)
    t.equal(callback.searchParams.get('state'), attempt.state)
    t.equal(callback.searchParams.get('iss'), provider.issuer)

    const tokens = await client.authorizationCodeGrant(config, callback, checks(attempt))
    t.equal(tokens.token_type.toLowerCase(), 'bearer')
    t.type(tokens.access_token, 'string')
    const claims = tokens.claims()
    t.match(claims, {
      iss: provider.issuer,
      aud: provider.clientId,
      sub: 'alice',
      email: 'alice@example.com',
      email_verified: true,
      name: 'Alice Liddell',
      nonce: attempt.nonce
    })

    await t.rejects(client.authorizationCodeGrant(config, callback, checks(attempt)), {
      code: 'OAUTH_RESPONSE_BODY_ERROR',
      error: 'invalid_grant'
    }, 'the same code a second time is rejected')
  })
}

test('accounts: an unknown login is <login>@idp.test, verified; email_verified false is kept', async (t) => {
  const provider = await setup(t, { accounts: { dave: { email: 'dave@example.com', email_verified: false, name: 'Dave' } } })
  const config = await discover(provider)

  const first = await callbackFor(config, 'carol')
  t.match((await client.authorizationCodeGrant(config, first.callback, checks(first.attempt))).claims(), {
    sub: 'carol', email: 'carol@idp.test', email_verified: true, name: 'carol'
  })

  const second = await callbackFor(config, 'dave')
  t.match((await client.authorizationCodeGrant(config, second.callback, checks(second.attempt))).claims(), {
    sub: 'dave', email: 'dave@example.com', email_verified: false, name: 'Dave'
  })
})

test('a wrong expectedState is rejected before the code is spent', async (t) => {
  const provider = await setup(t)
  const config = await discover(provider)
  const { attempt, callback } = await callbackFor(config, 'alice')

  const wrong = client.randomState()
  await t.rejects(client.authorizationCodeGrant(config, callback, { ...checks(attempt), expectedState: wrong }), {
    code: 'OAUTH_INVALID_RESPONSE',
    cause: { message: 'unexpected "state" response parameter value', cause: { expected: wrong } }
  })
  const tokens = await client.authorizationCodeGrant(config, callback, checks(attempt))
  t.equal(tokens.claims()?.sub, 'alice', 'the right state still redeems the code')
})

test('a wrong expectedNonce is rejected', async (t) => {
  const provider = await setup(t)
  const config = await discover(provider)
  const { attempt, callback } = await callbackFor(config, 'alice')

  const wrong = client.randomNonce()
  await t.rejects(client.authorizationCodeGrant(config, callback, { ...checks(attempt), expectedNonce: wrong }), {
    code: 'OAUTH_JWT_CLAIM_COMPARISON_FAILED',
    cause: { message: 'unexpected ID Token "nonce" claim value', cause: { expected: wrong, claims: { nonce: attempt.nonce } } }
  })
})

test('a wrong PKCE verifier is rejected by the provider', async (t) => {
  const provider = await setup(t)
  const config = await discover(provider)
  const { attempt, callback } = await callbackFor(config, 'alice')

  await t.rejects(client.authorizationCodeGrant(config, callback, { ...checks(attempt), pkceCodeVerifier: client.randomPKCECodeVerifier() }), {
    code: 'OAUTH_RESPONSE_BODY_ERROR',
    error: 'invalid_grant'
  })
  const tokens = await client.authorizationCodeGrant(config, callback, checks(attempt))
  t.equal(tokens.claims()?.sub, 'alice', 'the right verifier still redeems the code')
})

test('PKCE is required: without a code_challenge the provider answers with an error', async (t) => {
  const provider = await setup(t)
  const config = await discover(provider)
  const url = client.buildAuthorizationUrl(config, { redirect_uri: REDIRECT_URI, scope: SCOPE, state: 'some-state', nonce: 'some-nonce' })
  const callback = new URL(await signInAtProvider(url.href, 'alice'))
  t.equal(callback.origin + callback.pathname, REDIRECT_URI)
  t.equal(callback.searchParams.get('error'), 'invalid_request')
  t.match(callback.searchParams.get('error_description'), /requires PKCE/)
  t.notOk(callback.searchParams.has('code'))
})

test('signInAtProvider: an unregistered redirect_uri stops at the error page, with status and body', async (t) => {
  const provider = await setup(t)
  const config = await discover(provider)
  const url = (await authorize(config)).url
  url.searchParams.set('redirect_uri', 'http://elsewhere.test/callback')
  await t.rejects(signInAtProvider(url.href, 'alice'), { message: /GET \/auth: expected .* got 400 .*redirect_uri/ })
})

test('close() stops the server', async (t) => {
  const provider = await setup(t)
  const discovery = `${provider.issuer}/.well-known/openid-configuration`
  t.equal((await fetch(discovery)).status, 200)
  await provider.close()
  await t.rejects(fetch(discovery), TypeError)
  await provider.close()
})
