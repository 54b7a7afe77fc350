/**
 * A real OpenID Provider (the `oidc-provider` package) on a free loopback port, for tests of
 * "Sign in with OpenID Connect": plain http on 127.0.0.1, one confidential client (authorization
 * code, PKCE S256 required, scopes openid email profile), accounts by login name, and
 * oidc-provider's own development login and consent pages (test/helpers/oidc-login.ts walks them).
 *
 * oidc-provider ships no types, so the little used here is declared below. It is loaded on first
 * use, with its start-up notices dropped (it warns that Node.js 20 is unsupported, that the dev
 * interactions and the in-memory adapter are for development only); everything it would warn
 * about later (TTLs, findAccount, signing keys, the error page) is configured instead.
 */
import { generateKeyPair, randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

/** The part of an oidc-provider `Provider` (a Koa application) these tests use; the rest is there, untyped. */
export interface OidcProvider {
  readonly issuer: string
  callback: () => RequestListener
  on: (event: string, listener: (...args: any[]) => void) => unknown
  [member: string]: unknown
}

type ProviderConstructor = new (issuer: string, configuration: Record<string, unknown>) => OidcProvider

export interface ProviderAccount {
  email: string
  /** true unless told otherwise */
  email_verified?: boolean
  name: string
}

export interface StartProviderOptions {
  redirectUris: string[]
  clientId?: string
  clientSecret?: string
  /** By login name; any other login signs in as `<login>@idp.test`, verified, named `<login>`. */
  accounts?: Record<string, ProviderAccount>
}

export interface StartedProvider {
  /** `http://127.0.0.1:<port>`, the issuer identifier and the base of every endpoint */
  issuer: string
  clientId: string
  clientSecret: string
  provider: OidcProvider
  /** Closes the server (and any connection still open to it). */
  close: () => Promise<void>
}

/** Drops what oidc-provider prints through console.warn / console.info while `fn` runs. */
async function withoutProviderNotices<T> (fn: () => Promise<T> | T): Promise<T> {
  const { warn, info } = console
  const filter = (write: (...args: unknown[]) => void) => (...args: unknown[]): void => {
    if (typeof args[0] === 'string' && /oidc-provider (WARNING|NOTICE):/.test(args[0])) return
    write.apply(console, args)
  }
  console.warn = filter(warn)
  console.info = filter(info)
  try {
    return await fn()
  } finally {
    console.warn = warn
    console.info = info
  }
}

let loaded: Promise<ProviderConstructor> | undefined

function loadProvider (): Promise<ProviderConstructor> {
  // A specifier TypeScript does not resolve: the package has no types (see OidcProvider).
  const specifier: string = 'oidc-provider'
  loaded ??= withoutProviderNotices(async () => ((await import(specifier)) as { Provider: ProviderConstructor }).Provider)
  return loaded
}

/** A fresh RSA key for signing ID tokens (RS256, what clients expect by default). */
async function signingKey (): Promise<Record<string, unknown>> {
  return await new Promise((resolve, reject) => {
    generateKeyPair('rsa', { modulusLength: 2048 }, (err, _publicKey, privateKey) => {
      if (err !== null) reject(err)
      else resolve({ ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: randomBytes(8).toString('hex') })
    })
  })
}

const escapeHtml = (value: unknown): string => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

export async function startProvider (options: StartProviderOptions): Promise<StartedProvider> {
  const Provider = await loadProvider()
  const clientId = options.clientId ?? 'fastify-pow-test'
  const clientSecret = options.clientSecret ?? randomBytes(32).toString('base64url')
  const accounts = options.accounts ?? {}

  let handle: RequestListener = (_req, res) => { res.statusCode = 503; res.end() }
  const server = createServer((req: IncomingMessage, res: ServerResponse) => { handle(req, res) })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve() })
  })
  const close = async (): Promise<void> => {
    if (!server.listening) return
    await new Promise<void>((resolve, reject) => {
      server.close((err) => { if (err === undefined) resolve(); else reject(err) })
      server.closeAllConnections()
    })
  }

  try {
    const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    const jwk = await signingKey()
    const provider = await withoutProviderNotices(() => new Provider(issuer, {
      clients: [{
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: options.redirectUris,
        grant_types: ['authorization_code'],
        response_types: ['code'],
        // oidc-provider accepts client_secret_post for a client_secret_basic client and the other
        // way round, so either of openid-client's ClientSecretBasic / ClientSecretPost works.
        token_endpoint_auth_method: 'client_secret_basic'
      }],
      scopes: ['openid', 'email', 'profile'],
      claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
      // Put the scopes' claims in the ID token itself, not only at the userinfo endpoint.
      conformIdTokenClaims: false,
      pkce: { required: () => true },
      features: { devInteractions: { enabled: true } },
      async findAccount (_ctx: unknown, sub: string) {
        const account = accounts[sub] ?? { email: `${sub}@idp.test`, name: sub }
        return {
          accountId: sub,
          async claims () {
            return { sub, email: account.email, email_verified: account.email_verified ?? true, name: account.name }
          }
        }
      },
      jwks: { keys: [jwk] },
      cookies: { keys: [randomBytes(32).toString('base64url')] },
      ttl: { AuthorizationCode: 60, AccessToken: 600, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
      async renderError (ctx: { type: string, body: string }, out: Record<string, unknown>) {
        ctx.type = 'html'
        ctx.body = `<!DOCTYPE html><html><head><title>oidc-provider error</title></head><body>${
          Object.entries(out).map(([key, value]) => `<p>${escapeHtml(key)}: ${escapeHtml(value)}</p>`).join('')
        }</body></html>`
      }
    }))
    handle = provider.callback()
    return { issuer, clientId, clientSecret, provider, close }
  } catch (err) {
    await close()
    throw err
  }
}
