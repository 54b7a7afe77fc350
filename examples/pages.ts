import fastifyCsrf from '@fastify/csrf-protection'
import fastifyFormbody from '@fastify/formbody'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { SessionInfo } from '../lib/index.js'
import { limitedSignIn, type LoginLimiter } from './login-limits.js'
import { type OidcOptions, oidcRoutes } from './oidc.js'
import { deviceMetadata, readDeviceMetadata } from './user-agent.js'
import type { PublicUser, UserStore } from './users.js'

export interface PagesOptions {
  users: UserStore
  /** Failed sign-ins per IP and account, shared with the JSON login. */
  limiter: LoginLimiter
  /** A `__Host-` CSRF cookie, Secure. */
  production: boolean
  /** The HMAC key of the CSRF tokens. */
  csrfKey: Buffer
  /** "Sign in with OpenID Connect", and its CSP form-action origins. */
  oidc?: { options: OidcOptions, formActionOrigins: Set<string> } | undefined
}

/** The login page's notices, by `?error=`. */
const LOGIN_ERRORS: Record<string, string> = {
  1: 'Invalid email or password.',
  oidc: 'Signing in with your identity provider did not work. Try again.',
  'oidc-email-taken': 'An account with this email already exists: sign in with its password.',
  'oidc-email-unverified': 'Your identity provider did not confirm your email address, which this site needs.'
}

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml (value: unknown): string {
  return String(value)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;')
}

const STYLE = `
*, *::before, *::after { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: .75rem 1rem; display: flex; align-items: center; gap: 1rem; flex-wrap: wrap; }
header a { color: #fff; text-decoration: none; }
header .brand { font-weight: 600; margin-right: auto; }
main { max-width: 44rem; margin: 1.5rem auto; padding: 0 1rem; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 1.25rem; margin-bottom: 1rem; }
h1 { font-size: 1.5rem; margin: 0 0 1rem; }
label { display: block; font-weight: 600; margin: .75rem 0 .25rem; }
label.check { font-weight: normal; display: flex; align-items: center; gap: .5rem; }
input[type=email], input[type=password] { width: 100%; padding: .5rem .6rem; border: 1px solid #d0d7de; border-radius: 6px; font: inherit; }
button { font: inherit; padding: .45rem .9rem; border-radius: 6px; border: 1px solid #d0d7de; background: #f6f8fa; cursor: pointer; }
button.primary { background: #1f883d; border-color: #1a7f37; color: #fff; margin-top: 1rem; width: 100%; }
button.danger { color: #cf222e; }
.error { background: #ffebe9; border: 1px solid #ff8182; border-radius: 6px; padding: .5rem .75rem; }
.notice { background: #ddf4ff; border: 1px solid #54aeff; border-radius: 6px; padding: .5rem .75rem; }
.muted { color: #57606a; font-size: .9rem; }
ul.devices { list-style: none; margin: 0; padding: 0; }
ul.devices li { display: flex; justify-content: space-between; align-items: center; gap: .5rem 1rem; padding: .9rem 0; border-top: 1px solid #d8dee4; flex-wrap: wrap; }
ul.devices li > div { flex: 1 1 18rem; min-width: 0; }
ul.devices li:first-child { border-top: 0; }
.device-name { font-weight: 600; }
.badge { display: inline-block; font-size: .75rem; font-weight: 600; background: #dafbe1; color: #116329; border-radius: 2em; padding: 0 .5rem; margin-left: .25rem; }
.badge.remembered { background: #ddf4ff; color: #0a3069; }
form.inline { display: inline; margin: 0; }
form.provider { border-top: 1px solid #d8dee4; margin-top: 1.25rem; padding-top: .5rem; }
form.provider button.primary { background: #0969da; border-color: #0550ae; }
`

interface PageContent {
  title: string
  user?: PublicUser | null
  body: string
  csrf?: string
}

function layout ({ title, user, body, csrf }: PageContent): string {
  const nav = user === undefined || user === null
    ? ''
    : `<a href="/">Account</a><a href="/sessions">Your devices</a>
       <form class="inline" method="post" action="/logout"><input type="hidden" name="_csrf" value="${escapeHtml(csrf)}"><button type="submit">Sign out</button></form>`
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} · fastify-pow example</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<header><a class="brand" href="/">fastify-pow example</a>${nav}</header>
<main>
${body}
</main>
</body>
</html>
`
}

const DATE_FORMAT = new Intl.DateTimeFormat('en-GB', { timeZone: 'UTC', dateStyle: 'medium', timeStyle: 'short' })
const time = (ms: number): string => `<time datetime="${new Date(ms).toISOString()}">${escapeHtml(DATE_FORMAT.format(ms))} UTC</time>`

function currentUser (request: FastifyRequest): PublicUser | null {
  return request.powSession.user as PublicUser | null
}

/** What the CSRF tokens are bound to: this browser's device, or 'signed-out' (never a fingerprint). */
function deviceOf (request: FastifyRequest): string {
  return request.powSession.metadata?.fingerprint ?? 'signed-out'
}

/** preHandler for pages: a page that needs a user sends the browser to the login page. */
async function requireUserPage (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> {
  if (request.powSession.user === null) return reply.redirect('/login', 303)
}

function deviceItem (session: SessionInfo, csrf: string): string {
  const { browser, os, ip } = readDeviceMetadata(session.metadata)
  const action = session.current
    ? ''
    : `<form class="inline" method="post" action="/sessions/${encodeURIComponent(session.fingerprint)}/delete">
        <input type="hidden" name="_csrf" value="${escapeHtml(csrf)}"><button class="danger" type="submit">Sign out</button></form>`
  const badges = (session.current ? ' <span class="badge">This device</span>' : '') +
    (session.remembered ? ' <span class="badge remembered">Remembered</span>' : '')
  // A remembered browser is listed even when its session idled out: its next visit signs it in
  // again without a password, so it is as signed in as the others, and must be signable out.
  const remembered = session.remembered
    ? '\n    <div class="muted">Stays signed in with “Remember me” until it is signed out.</div>'
    : ''
  return `<li data-fingerprint="${escapeHtml(session.fingerprint)}"${session.current ? ' data-current="true"' : ''}${session.remembered ? ' data-remembered="true"' : ''}>
  <div>
    <div class="device-name">${escapeHtml(browser)} on ${escapeHtml(os)}${badges}</div>
    <div class="muted">IP ${escapeHtml(ip ?? 'unknown')}</div>
    <div class="muted">Signed in ${time(session.signedInAt)} · last renewed ${time(session.insertedAt)}</div>${remembered}
  </div>
  ${action}
</li>`
}

/** What an error page says. */
function errorMessage (status: number, code: string | undefined): string {
  if (code === 'CROSS_SITE_FORM') return 'This form was sent from another site. Go to this site, reload the page and try again.'
  if (code === 'POW_ERR_SIGN_IN_REVOKED') return 'Another of your devices signed everyone else out while you were signing in. Sign in again.'
  if (status === 403) return 'Your form expired. Go back, reload the page and try again.'
  if (status === 429) return 'Too many failed sign-ins. Wait a few minutes and try again.'
  if (status === 503) return 'Sign-in is unavailable right now. Try again in a moment.'
  return status >= 500 ? 'Something went wrong.' : 'That request was not understood.'
}

/**
 * The example's HTML pages: login, account, devices. Form posts are same-origin and
 * CSRF-protected, and answer with 303 redirects; failed sign-ins are limited (login-limits.ts).
 */
export async function pages (app: FastifyInstance, options: PagesOptions): Promise<void> {
  const { users, limiter } = options
  await app.register(fastifyFormbody)
  // The CSRF secret is in a cookie, and each token is an HMAC (with a server key) of that secret
  // and of this browser's device fingerprint ('signed-out' when signed out): a token made before
  // sign-in, or for another device, does not verify, nor does a signed-in form posted with a
  // secret another subdomain planted. Sign-in and sign-out also replace the secret. In production
  // the cookie is `__Host-`: Secure, and no other subdomain can set or shadow it.
  const csrfCookie = options.production ? '__Host-csrf' : '_csrf'
  const csrfCookieOptions = { httpOnly: true, sameSite: 'strict', path: '/', secure: options.production } as const
  await app.register(fastifyCsrf, {
    cookieKey: csrfCookie,
    cookieOpts: csrfCookieOptions,
    csrfOpts: { hmacKey: options.csrfKey },
    getUserInfo: deviceOf
  })
  const csrfToken = (request: FastifyRequest, reply: FastifyReply): string => reply.generateCsrf({ userInfo: deviceOf(request) })
  /** After a sign-in or sign-out: the next page makes a new CSRF secret. */
  const renewCsrf = (reply: FastifyReply): void => { reply.clearCookie(csrfCookie, csrfCookieOptions) }
  const oidc = options.oidc
  // Fetch metadata: a browser says where a form post comes from. Only this origin posts these
  // forms; a sibling subdomain is "same-site", and refused too. Clients that send no
  // Sec-Fetch-Site (not a browser, or an old one) rely on the CSRF token alone.
  app.addHook('onRequest', async (request) => {
    const site = request.headers['sec-fetch-site']
    if (request.method === 'POST' && site !== undefined && site !== 'same-origin') {
      throw Object.assign(new Error(`a form post from ${site === 'same-site' ? 'another subdomain' : 'another site'}`), { statusCode: 403, code: 'CROSS_SITE_FORM' })
    }
  })

  app.setErrorHandler(async (err: Error & { statusCode?: number, code?: string, retryAfter?: number }, request, reply) => {
    const status = err.statusCode ?? 500
    if (status >= 500) request.log.error({ err }, 'page failed')
    if (status === 429 && err.retryAfter !== undefined) reply.header('retry-after', String(err.retryAfter))
    const message = errorMessage(status, err.code)
    return reply.code(status).type('text/html; charset=utf-8').send(layout({
      title: 'Error',
      body: `<div class="card"><h1>${status === 429 ? 'Slow down' : 'Sorry'}</h1><p class="error">${escapeHtml(message)}</p><p><a href="/">Back</a></p></div>`
    }))
  })

  // After setErrorHandler: a plugin takes the error handler its parent has when it is registered.
  if (oidc !== undefined) {
    await app.register(oidcRoutes, { oidc: oidc.options, users, production: options.production, signedIn: renewCsrf, formActionOrigins: oidc.formActionOrigins })
  }

  app.get('/style.css', async (_request, reply) => reply.type('text/css; charset=utf-8').header('cache-control', 'public, max-age=300').send(STYLE))

  app.get<{ Querystring: { error?: string, signedOut?: string } }>('/login', {
    schema: {
      querystring: {
        type: 'object',
        properties: { error: { type: 'string', maxLength: 40 }, signedOut: { type: 'string', maxLength: 20 } }
      }
    }
  }, async (request, reply) => {
    if (currentUser(request) !== null) return reply.redirect('/', 303)
    const csrf = csrfToken(request, reply)
    const error = request.query.error === undefined ? undefined : LOGIN_ERRORS[request.query.error] ?? LOGIN_ERRORS[1]
    const notice = error !== undefined
      ? `<p class="error" role="alert">${escapeHtml(error)}</p>`
      : request.query.signedOut !== undefined ? '<p class="notice" role="status">You are signed out.</p>' : ''
    const provider = oidc === undefined
      ? ''
      : `<form method="get" action="/auth/oidc" class="provider">
  <p class="muted">Or sign in at your identity provider:</p>
  <label class="check"><input id="oidc-remember" name="remember" type="checkbox" value="on"> Remember me</label>
  <button class="primary" type="submit" id="oidc">Sign in with ${escapeHtml(oidc.options.name ?? 'OpenID Connect')}</button>
</form>`
    return reply.type('text/html; charset=utf-8').send(layout({
      title: 'Sign in',
      body: `<div class="card">
<h1>Sign in</h1>
${notice}
<form method="post" action="/login">
  <input type="hidden" name="_csrf" value="${escapeHtml(csrf)}">
  <label for="email">Email</label>
  <input id="email" name="email" type="email" autocomplete="username" required maxlength="254">
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password" required maxlength="1024">
  <label class="check"><input id="remember" name="remember" type="checkbox" value="on"> Remember me</label>
  <button class="primary" type="submit">Sign in</button>
</form>
${provider}
</div>
<p class="muted">Try alice@example.com / alice-password or bob@example.com / bob-password.</p>`
    }))
  })

  app.post<{ Body: { email: string, password: string, remember?: 'on', _csrf: string } }>('/login', {
    preHandler: app.csrfProtection,
    schema: {
      body: {
        type: 'object',
        additionalProperties: false,
        required: ['email', 'password', '_csrf'],
        properties: {
          email: { type: 'string', maxLength: 254 },
          password: { type: 'string', maxLength: 1024 },
          remember: { type: 'string', enum: ['on'] },
          _csrf: { type: 'string', maxLength: 200 }
        }
      }
    }
  }, async (request, reply) => {
    const { email, password, remember } = request.body
    // A 429 page with Retry-After once this IP or account failed too often, as the JSON login.
    const user = await limitedSignIn(limiter, request.ip, email, async () => await users.authenticate(email, password))
    // The same answer whether the email exists or the password is wrong.
    if (user === null) return reply.redirect('/login?error=1', 303)
    await request.powSession.create(user, {
      persistent: remember === 'on' && request.powPersistentSession !== null,
      // Parsed and cut, as the JSON login does: the raw header is whatever the client sends.
      metadata: deviceMetadata(request.headers['user-agent'], request.ip)
    })
    renewCsrf(reply)
    return reply.redirect('/', 303)
  })

  app.post('/logout', { preHandler: app.csrfProtection }, async (request, reply) => {
    await request.powSession.delete()
    renewCsrf(reply)
    return reply.redirect('/login?signedOut=1', 303)
  })

  app.get('/', { preHandler: requireUserPage }, async (request, reply) => {
    const user = currentUser(request) as PublicUser
    const metadata = request.powSession.metadata
    const csrf = csrfToken(request, reply)
    return reply.type('text/html; charset=utf-8').send(layout({
      title: 'Account',
      user,
      csrf,
      body: `<div class="card">
<h1>Hello, <span id="name">${escapeHtml(user.name)}</span></h1>
<p>You are signed in as <strong id="email">${escapeHtml(user.email)}</strong>.</p>
<p class="muted">This browser has been signed in since ${metadata === null ? 'now' : time(metadata.signedInAt)}.</p>
<p><a href="/sessions">See and sign out your devices</a></p>
<form method="post" action="/logout"><input type="hidden" name="_csrf" value="${escapeHtml(csrf)}"><button type="submit">Sign out</button></form>
</div>`
    }))
  })

  app.get('/sessions', { preHandler: requireUserPage }, async (request, reply) => {
    const user = currentUser(request) as PublicUser
    const sessions = await request.powSession.sessions()
    const csrf = csrfToken(request, reply)
    const others = sessions.filter((s) => !s.current).length
    return reply.type('text/html; charset=utf-8').send(layout({
      title: 'Your devices',
      user,
      csrf,
      body: `<div class="card">
<h1>Your devices</h1>
<p class="muted">Browsers signed in to ${escapeHtml(user.email)}, including those that “Remember me” signs back in after a pause. Signing a device out also ends its “Remember me”.</p>
<ul class="devices">
${sessions.map((session) => deviceItem(session, csrf)).join('\n')}
</ul>
${others > 0
  ? `<form method="post" action="/sessions/delete-others"><input type="hidden" name="_csrf" value="${escapeHtml(csrf)}"><button class="danger" type="submit">Sign out all other devices</button></form>`
  : '<p class="muted">No other device is signed in.</p>'}
</div>`
    }))
  })

  app.post<{ Params: { fingerprint: string } }>('/sessions/:fingerprint/delete', {
    preHandler: [requireUserPage, app.csrfProtection],
    schema: { params: { type: 'object', required: ['fingerprint'], properties: { fingerprint: { type: 'string', maxLength: 64 } } } }
  }, async (request, reply) => {
    await request.powSession.deleteSession(request.params.fingerprint)
    return reply.redirect('/sessions', 303)
  })

  app.post('/sessions/delete-others', { preHandler: [requireUserPage, app.csrfProtection] }, async (request, reply) => {
    await request.powSession.deleteOtherSessions()
    return reply.redirect('/sessions', 303)
  })
}
