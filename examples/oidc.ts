/**
 * "Sign in with OpenID Connect": the authorization code flow with PKCE, state and nonce, through
 * openid-client. The transaction is kept in a cookie signed by @fastify/cookie. The provider's tokens are read once, for the ID token's claims, and kept
 * nowhere: the browser ends up with fastify-pow's cookies only.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import * as client from 'openid-client'
import { deviceMetadata } from './user-agent.js'
import type { UserStore } from './users.js'

export interface OidcOptions {
  /** The provider's issuer URL; its discovery document is at `<issuer>/.well-known/openid-configuration`. */
  issuer: string
  clientId: string
  clientSecret: string
  /**
   * This app's callback as registered at the provider, `https://<site>/auth/oidc/callback`. The
   * app serves it at `/auth/oidc/callback`; a proxy in front may serve that under a prefix.
   */
  redirectUri: string
  /** The button's label. Default "OpenID Connect". */
  name?: string | undefined
}

export interface OidcRoutesOptions {
  oidc: OidcOptions
  users: UserStore
  production: boolean
  /** Called after a sign-in: the pages give the browser a new CSRF secret. */
  signedIn: (reply: FastifyReply) => void
  /**
   * Origins the login page's form may be redirected to (CSP form-action): the issuer's from the
   * start, and the authorization endpoint's once the provider's metadata is read.
   */
  formActionOrigins: Set<string>
}

/** What the browser keeps between the redirect to the provider and the callback. */
interface Transaction {
  state: string
  nonce: string
  verifier: string
  remember: boolean
  /** Milliseconds since the epoch after which the callback is refused. */
  expiresAt: number
}

const TRANSACTION_TTL_MS = 10 * 60_000
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]'])

/** A transaction as its cookie holds it (signed by @fastify/cookie), or null: missing, forged or expired. */
function readTransaction (request: FastifyRequest, cookieName: string): Transaction | null {
  const raw = request.cookies[cookieName]
  if (raw === undefined) return null
  const unsigned = request.unsignCookie(raw)
  if (!unsigned.valid || unsigned.value === null) return null
  try {
    const t = JSON.parse(Buffer.from(unsigned.value, 'base64url').toString()) as Transaction
    return typeof t.state === 'string' && typeof t.nonce === 'string' && typeof t.verifier === 'string' &&
      typeof t.remember === 'boolean' && typeof t.expiresAt === 'number' && t.expiresAt > Date.now()
      ? t
      : null
  } catch {
    return null
  }
}

/** The OIDC routes: `GET /auth/oidc` (to the provider) and `GET /auth/oidc/callback`. */
export async function oidcRoutes (app: FastifyInstance, options: OidcRoutesOptions): Promise<void> {
  const { oidc, users } = options
  const issuer = new URL(oidc.issuer)
  const redirectUri = new URL(oidc.redirectUri)
  // Plain http only to a provider on this machine (development, the tests).
  const insecure = issuer.protocol === 'http:' && LOOPBACK.has(issuer.hostname)
  const cookieName = options.production ? '__Host-pow_oidc' : 'pow_oidc'
  // Lax: the cookie must come back on the provider's top-level redirect to the callback.
  const cookieOptions = { httpOnly: true, sameSite: 'lax', path: '/', secure: options.production } as const

  // Discovered on first use, and again after a failure: the app starts while the provider is down.
  let discovered: Promise<client.Configuration> | undefined
  const configuration = async (): Promise<client.Configuration> => {
    discovered ??= client.discovery(issuer, oidc.clientId, { redirect_uris: [redirectUri.href] }, client.ClientSecretBasic(oidc.clientSecret),
      insecure ? { execute: [client.allowInsecureRequests] } : undefined)
    try {
      const config = await discovered
      options.formActionOrigins.add(new URL(config.serverMetadata().authorization_endpoint as string).origin)
      return config
    } catch (err) {
      discovered = undefined
      throw err
    }
  }
  // Read once at start, without holding the start up: the login page's CSP then names the
  // provider's authorization endpoint, which may be on another origin than the issuer.
  app.addHook('onReady', async () => {
    configuration().catch((err: unknown) => { app.log.warn({ err }, 'the OpenID provider could not be reached at start; sign-in with it will try again') })
  })
  /** The provider cannot be reached: a 503. */
  const unavailable = (request: FastifyRequest, err: unknown): never => {
    request.log.error({ err }, 'the OpenID provider is unavailable')
    throw Object.assign(new Error('The identity provider is unavailable'), { statusCode: 503 })
  }
  /** The provider's configuration for a request, or a 503. */
  const configured = async (request: FastifyRequest): Promise<client.Configuration> =>
    await configuration().catch((err: unknown) => unavailable(request, err))

  app.get<{ Querystring: { remember?: string } }>('/auth/oidc', {
    schema: { querystring: { type: 'object', properties: { remember: { type: 'string', enum: ['on'] } } } }
  }, async (request, reply) => {
    const config = await configured(request)
    const transaction: Transaction = {
      state: client.randomState(),
      nonce: client.randomNonce(),
      verifier: client.randomPKCECodeVerifier(),
      remember: request.query.remember === 'on',
      expiresAt: Date.now() + TRANSACTION_TTL_MS
    }
    const url = client.buildAuthorizationUrl(config, {
      redirect_uri: redirectUri.href,
      scope: 'openid email profile',
      state: transaction.state,
      nonce: transaction.nonce,
      code_challenge: await client.calculatePKCECodeChallenge(transaction.verifier),
      code_challenge_method: 'S256'
    })
    const value = Buffer.from(JSON.stringify(transaction)).toString('base64url')
    reply.setCookie(cookieName, value, { ...cookieOptions, signed: true, maxAge: TRANSACTION_TTL_MS / 1000 })
    return reply.redirect(url.href, 303)
  })

  app.get('/auth/oidc/callback', async (request, reply) => {
    // One use: whatever happens next, this browser's transaction is over.
    const transaction = readTransaction(request, cookieName)
    reply.clearCookie(cookieName, cookieOptions)
    const failed = (reason: string, error = 'oidc'): FastifyReply => {
      request.log.info({ reason }, 'OpenID Connect sign-in refused')
      return reply.redirect(`/login?error=${error}`, 303)
    }
    if (transaction === null) return failed('no transaction cookie, or a forged or expired one')
    const config = await configured(request)
    let claims: client.IDToken
    try {
      // Checks the state and the issuer of the answer, redeems the code with the PKCE verifier
      // and the client secret, and checks the ID token: signature, issuer, audience, expiry, nonce.
      // The answer's parameters on the registered redirect URI, which the token request repeats.
      const current = new URL(redirectUri)
      current.search = new URL(request.url, redirectUri).search
      const tokens = await client.authorizationCodeGrant(config, current, {
        pkceCodeVerifier: transaction.verifier,
        expectedState: transaction.state,
        expectedNonce: transaction.nonce,
        idTokenExpected: true
      })
      claims = tokens.claims() as client.IDToken
    } catch (err) {
      // The provider's refusals (a denied consent, a used code) and failed checks (state, nonce,
      // issuer): the sign-in fails. Anything else (the provider unreachable) is a 503.
      if (err instanceof client.ClientError || err instanceof client.AuthorizationResponseError || err instanceof client.ResponseBodyError) {
        // The check that failed, or the provider's OAuth error (`invalid_grant` for a used code).
        const details = err instanceof client.ResponseBodyError || err instanceof client.AuthorizationResponseError
          ? `${err.error}${err.error_description === undefined ? '' : ` (${err.error_description})`}`
          : err.cause instanceof Error ? err.cause.message : ''
        return failed(`${err.message}: ${details}`)
      }
      return unavailable(request, err)
    }
    const user = users.signInWithIdentity(claims.iss, claims.sub, {
      email: typeof claims.email === 'string' ? claims.email : undefined,
      emailVerified: claims.email_verified === true,
      name: typeof claims.name === 'string' ? claims.name : undefined
    })
    if (typeof user === 'string') return failed(user, `oidc-${user}`)
    await request.powSession.create(user, {
      persistent: transaction.remember && request.powPersistentSession !== null,
      metadata: deviceMetadata(request.headers['user-agent'], request.ip)
    })
    options.signedIn(reply)
    return reply.redirect('/', 303)
  })
}
