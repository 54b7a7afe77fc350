import { Signer } from '@fastify/cookie'
import fc from 'fast-check'
import { BUCKET_LENGTH, FINGERPRINT_LENGTH, isSecret, SECRET_LENGTH } from '../../lib/crypto.js'
import { normalizeEmail } from '../../examples/users.js'

/**
 * Generators and oracles for test/fuzz.test.ts: cookie headers (arbitrary, and valid signed
 * cookies mutated), and request bodies for the example app's routes.
 */

export const SESSION = 'pow_session'
export const PERSISTENT = 'pow_persistent_session'

/**
 * How many inputs each property tries, as a share of the full run (about 100,000 inputs): npm test
 * runs test/fuzz.test.ts at 0.05, the stress tier (test/stress/fuzz.test.ts) at FUZZ_SCALE=1;
 * FUZZ_SCALE=10 for a long local run.
 */
export const SCALE = Number(process.env.FUZZ_SCALE ?? 0.05)
export const runs = (n: number): number => Math.max(1, Math.round(n * SCALE))

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

/** A signed cookie value: the secret, a dot, and 43 characters of base64 HMAC-SHA256 (113 characters). */
export const SIGNED_LENGTH = SECRET_LENGTH + 44
/** `<bucket><fingerprint>`: the part of a secret that names the device the store reads. */
const DEVICE_LENGTH = BUCKET_LENGTH + FINGERPRINT_LENGTH

// ---------------------------------------------------------------------------------------------
// Cookie values and headers

/** Characters that matter to cookie parsing, signatures and percent-decoding. */
const SPECIAL_CHARS = [
  '.', '..', ';', ',', '=', '"', '\\', ' ', '\t', '%', '%2', '%2E', '%3B', '%25', '%zz', '%C3', '%E0%A4%A', '+', '/', '-', '_',
  'é', '€', '😀', '\ud800', '\udc00', '\u0000', '\n', '\r\n', '\u00ff', '\u2028', '\ufeff'
]

export const char = fc.oneof(
  { arbitrary: fc.constantFrom(...BASE64.split(''), '-', '_', '='), weight: 4 },
  { arbitrary: fc.constantFrom(...SPECIAL_CHARS), weight: 2 },
  { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), weight: 1 }
)

/** The bytes a real HTTP server would hand over for a unicode string: its UTF-8 read as latin1. */
export const latin1OfUtf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1')

/** Arbitrary cookie values: random text, percent-encoding (valid and broken), look-alikes of signed values. */
export const cookieValue: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.string({ maxLength: 40 }), weight: 3 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 40 }), weight: 2 },
  { arbitrary: fc.string({ unit: 'grapheme', maxLength: 20 }).map(latin1OfUtf8), weight: 1 },
  { arbitrary: fc.string({ unit: 'grapheme', maxLength: 20 }).map(encodeURIComponent), weight: 1 },
  { arbitrary: fc.array(char, { maxLength: 30 }).map((a) => a.join('')), weight: 3 },
  // The shape the plugin accepts: `<69 base64url chars>.<43 base64 chars>` (113 characters), but forged.
  {
    arbitrary: fc.tuple(
      fc.string({ unit: fc.constantFrom(...BASE64URL.split('')), minLength: SECRET_LENGTH, maxLength: SECRET_LENGTH }),
      fc.string({ unit: fc.constantFrom(...BASE64.split('')), minLength: 43, maxLength: 43 })
    ).map(([id, sig]) => `${id}.${sig}`),
    weight: 3
  },
  { arbitrary: fc.string({ unit: fc.constantFrom(...BASE64URL.split(''), '.'), minLength: SIGNED_LENGTH - 6, maxLength: SIGNED_LENGTH + 6 }), weight: 1 }
)

/** Huge values: up to the 16 KiB a Node.js server accepts for all headers together. */
export const hugeValue: fc.Arbitrary<string> = fc.tuple(fc.array(char, { minLength: 1, maxLength: 4 }), fc.integer({ min: 1000, max: 16_000 }))
  .map(([unit, n]) => unit.join('').repeat(Math.ceil(n / unit.join('').length)).slice(0, n))

export const cookieName: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.constantFrom(SESSION, PERSISTENT), weight: 4 },
  {
    arbitrary: fc.constantFrom(
      'POW_SESSION', 'Pow_Session', ' pow_session', 'pow_session ', '\tpow_session', 'pow_session\u0000', 'pow%5Fsession',
      'pow_persistent_session ', '"pow_session"', '__Host-pow_session', '_csrf', 'sid', '', '=', 'a'
    ),
    weight: 2
  },
  { arbitrary: fc.string({ maxLength: 12 }), weight: 2 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 12 }), weight: 1 }
)

const separator = fc.constantFrom('; ', ';', ' ; ', ';;', '; ;', ', ', ';\t')

export const cookiePairs = (maxLength: number): fc.Arbitrary<Array<[string, string]>> =>
  fc.array(fc.tuple(cookieName, cookieValue), { maxLength })

/** `name=value` pairs joined with a separator; sometimes a pair without `=`. */
export const joinPairs = (pairs: Array<[string, string]>, sep: string, bare: boolean): string =>
  pairs.map(([n, v], i) => (bare && i === 0 ? n + v : `${n}=${v}`)).join(sep)

/** Node.js refuses requests whose headers pass 16 KiB (431) before any application code runs. */
export const HEADER_LIMIT = 16 * 1024 - 100

/** Whole cookie headers: arbitrary text, or lists of (often duplicated) cookies, up to hundreds of them and the header limit. */
export const cookieHeader: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.string({ maxLength: 200 }), weight: 1 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 200 }), weight: 1 },
  { arbitrary: fc.string({ unit: 'grapheme', maxLength: 100 }).map(latin1OfUtf8), weight: 1 },
  { arbitrary: fc.tuple(cookiePairs(8), separator, fc.boolean()).map(([p, s, b]) => joinPairs(p, s, b)), weight: 10 },
  // Many cookies: up to 400, names repeated.
  {
    arbitrary: fc.tuple(cookiePairs(4), fc.integer({ min: 20, max: 400 }), separator).map(([pairs, n, sep]) => {
      const many = Array.from({ length: n }, (_, i) => (pairs.length === 0 ? [`c${i}`, String(i)] : pairs[i % pairs.length]))
      return joinPairs(many as Array<[string, string]>, sep, false)
    }),
    weight: 1
  },
  // A huge value among others.
  {
    arbitrary: fc.tuple(cookiePairs(2), cookieName, hugeValue, cookiePairs(2), separator)
      .map(([before, name, value, after, sep]) => joinPairs([...before, [name, value], ...after], sep, false)),
    weight: 1
  }
).map((header) => header.slice(0, HEADER_LIMIT))

// ---------------------------------------------------------------------------------------------
// Mutations of a valid signed cookie value `<id>.<signature>`

export type Mutation =
  | { op: 'truncate', at: number }
  | { op: 'flip', at: number, ch: string }
  | { op: 'insert', at: number, ch: string }
  | { op: 'delete', at: number }
  | { op: 'encode', how: 'uri' | 'every' | 'one', at: number, lower: boolean }
  | { op: 'case', how: 'upper' | 'lower' | 'one' | 'sig' }
  | { op: 'case-at', at: number }
  | { op: 'alphabet', how: 'sig-to-url' | 'id-to-std' | 'all-to-url' | 'all-to-std' }
  | { op: 'swap-id', other: number }
  | { op: 'swap-sig', other: number }
  | { op: 'wrong-secret', secret: number }
  | { op: 'resign-length', delta: number }
  | { op: 'resign-charset', at: number, ch: string }
  | { op: 'resign-unknown', keep: 'bucket' | 'device', tail: string }
  | { op: 'pad', n: number }
  | { op: 'noncanonical', k: number }
  | { op: 'quote' }
  | { op: 'space', before: string, after: string }
  | { op: 'double-sig' }
  | { op: 'drop-sig' }
  | { op: 'identity' }

export const WRONG_SECRETS = [
  'an-attackers-secret-of-enough-length-0000',
  'test-secret-that-is-long-enough-012345678', // the real one but one character short
  ' test-secret-that-is-long-enough-0123456789'
]

const at = fc.nat({ max: 200 })

export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('truncate' as const), at }),
  fc.record({ op: fc.constant('flip' as const), at, ch: char }),
  fc.record({ op: fc.constant('insert' as const), at, ch: char }),
  fc.record({ op: fc.constant('delete' as const), at }),
  fc.record({ op: fc.constant('encode' as const), how: fc.constantFrom('uri' as const, 'every' as const, 'one' as const), at, lower: fc.boolean() }),
  fc.record({ op: fc.constant('case' as const), how: fc.constantFrom('upper' as const, 'lower' as const, 'one' as const, 'sig' as const) }),
  fc.record({ op: fc.constant('case-at' as const), at }),
  fc.record({ op: fc.constant('alphabet' as const), how: fc.constantFrom('sig-to-url' as const, 'id-to-std' as const, 'all-to-url' as const, 'all-to-std' as const) }),
  fc.record({ op: fc.constant('swap-id' as const), other: fc.nat({ max: 10 }) }),
  fc.record({ op: fc.constant('swap-sig' as const), other: fc.nat({ max: 10 }) }),
  fc.record({ op: fc.constant('wrong-secret' as const), secret: fc.nat({ max: WRONG_SECRETS.length - 1 }) }),
  fc.record({ op: fc.constant('resign-length' as const), delta: fc.integer({ min: -SECRET_LENGTH, max: 60 }).filter((d) => d !== 0) }),
  fc.record({ op: fc.constant('resign-charset' as const), at, ch: fc.constantFrom('+', '/', '=', '.', ' ', 'é', '%', ';', '😀'.slice(0, 1)) }),
  fc.record({
    op: fc.constant('resign-unknown' as const),
    keep: fc.constantFrom('bucket' as const, 'device' as const),
    tail: fc.string({ unit: fc.constantFrom(...BASE64URL.split('')), minLength: SECRET_LENGTH - BUCKET_LENGTH, maxLength: SECRET_LENGTH - BUCKET_LENGTH })
  }),
  fc.record({ op: fc.constant('pad' as const), n: fc.integer({ min: 1, max: 2 }) }),
  fc.record({ op: fc.constant('noncanonical' as const), k: fc.integer({ min: 1, max: 3 }) }),
  fc.record({ op: fc.constant('quote' as const) }),
  fc.record({ op: fc.constant('space' as const), before: fc.constantFrom('', ' ', '\t', '  '), after: fc.constantFrom('', ' ', '\t') }),
  fc.record({ op: fc.constant('double-sig' as const) }),
  fc.record({ op: fc.constant('drop-sig' as const) }),
  fc.record({ op: fc.constant('identity' as const) })
)

function splitSigned (value: string): [string, string] {
  const dot = value.lastIndexOf('.')
  return dot === -1 ? [value, ''] : [value.slice(0, dot), value.slice(dot + 1)]
}

function replaceAt (s: string, i: number, ch: string): string {
  if (s.length === 0) return ch
  const k = i % s.length
  return s.slice(0, k) + ch + s.slice(k + 1)
}

/** Lone surrogates replaced with U+FFFD, as any UTF-8 encoder does. */
export const wellFormed = (s: string): string =>
  s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd')

/** encodeURIComponent that does not throw on lone surrogates. */
export const encodeComponent = (s: string): string => encodeURIComponent(wellFormed(s))

const percent = (ch: string, lower: boolean): string => {
  const hex = Buffer.from(ch, 'utf8').toString('hex').replace(/../g, '%$&')
  return lower ? hex.toLowerCase() : hex.toUpperCase()
}

export interface MutationContext {
  /** Valid values of the same cookie (other browsers), for swaps. */
  others: string[]
  secret: string
}

/** Applies one mutation to a cookie value (valid, or already mutated). */
export function applyMutation (value: string, m: Mutation, ctx: MutationContext): string {
  const [id, sig] = splitSigned(value)
  const len = Math.max(value.length, 1)
  switch (m.op) {
    case 'truncate': return value.slice(0, m.at % len)
    case 'flip': return replaceAt(value, m.at, m.ch)
    case 'insert': { const k = m.at % (value.length + 1); return value.slice(0, k) + m.ch + value.slice(k) }
    case 'delete': return value.length === 0 ? value : replaceAt(value, m.at, '')
    case 'encode':
      if (m.how === 'uri') return encodeComponent(value)
      if (m.how === 'every') return [...value].map((c) => percent(c, m.lower)).join('')
      return value.length === 0 ? value : replaceAt(value, m.at, percent(value[m.at % value.length], m.lower))
    case 'case':
      if (m.how === 'upper') return value.toUpperCase()
      if (m.how === 'lower') return value.toLowerCase()
      if (m.how === 'sig') return `${id}.${sig.toLowerCase()}`
      return value.replace(/[A-Za-z]/, (c) => (c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase()))
    case 'case-at': {
      if (value.length === 0) return value
      const c = value[m.at % value.length]
      return replaceAt(value, m.at, c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase())
    }
    case 'alphabet':
      if (m.how === 'sig-to-url') return `${id}.${sig.replace(/\+/g, '-').replace(/\//g, '_')}`
      if (m.how === 'id-to-std') return `${id.replace(/-/g, '+').replace(/_/g, '/')}.${sig}`
      if (m.how === 'all-to-url') return value.replace(/\+/g, '-').replace(/\//g, '_')
      return value.replace(/-/g, '+').replace(/_/g, '/')
    case 'swap-id': {
      if (ctx.others.length === 0) return value
      return `${splitSigned(ctx.others[m.other % ctx.others.length])[0]}.${sig}`
    }
    case 'swap-sig': {
      if (ctx.others.length === 0) return value
      return `${id}.${splitSigned(ctx.others[m.other % ctx.others.length])[1]}`
    }
    case 'wrong-secret': return new Signer(WRONG_SECRETS[m.secret]).sign(id)
    case 'resign-length':
      return new Signer(ctx.secret).sign(m.delta > 0 ? id + id.repeat(2).slice(0, m.delta) : id.slice(0, Math.max(0, id.length + m.delta)))
    case 'resign-charset': return new Signer(ctx.secret).sign(replaceAt(id, m.at, m.ch))
    // Correctly signed, correctly shaped, but no session id or token is this secret: either its
    // device does not exist (a new fingerprint), or the device exists and does not know the secret.
    case 'resign-unknown': {
      const kept = m.keep === 'bucket' ? BUCKET_LENGTH : DEVICE_LENGTH
      return new Signer(ctx.secret).sign(id.slice(0, kept) + m.tail.slice(0, SECRET_LENGTH - kept))
    }
    case 'pad': return value + '='.repeat(m.n)
    case 'noncanonical': {
      // The last base64 character of a 32-byte HMAC carries 2 unused bits: other characters decode to the same bytes.
      if (sig.length === 0) return value
      const v = BASE64.indexOf(sig[sig.length - 1])
      if (v === -1) return value
      return `${id}.${sig.slice(0, -1)}${BASE64[(v & ~3) | ((v + m.k) & 3)]}`
    }
    case 'quote': return `"${value}"`
    case 'space': return m.before + value + m.after
    case 'double-sig': return `${value}.${sig}`
    case 'drop-sig': return id
    case 'identity': return value
  }
}

/** Verifies a cookie value the way the plugin does, with `secret`: `<secret>.<HMAC>`, 113 characters. */
export function wellSigned (value: string | undefined, secret: string): boolean {
  if (value === undefined || value.length !== SIGNED_LENGTH) return false
  const result = new Signer(secret).unsign(value)
  return result.valid && result.value !== null && isSecret(result.value)
}

export interface HeaderSpec {
  /** Which cookie of the browser is mutated. */
  kind: 'session' | 'persistent'
  browser: number
  mutations: Mutation[]
  /** A valid cookie of the other kind: none, the same browser's, or another browser's. */
  other: 'none' | 'same' | 'another'
  otherFirst: boolean
  /** The valid original of the mutated cookie too, before or after the mutated one. */
  dup: 'none' | 'before' | 'after'
  noiseBefore: Array<[string, string]>
  noiseAfter: Array<[string, string]>
  sep: string
}

export const headerSpec = (browsers: number): fc.Arbitrary<HeaderSpec> => fc.record({
  kind: fc.constantFrom('session' as const, 'persistent' as const),
  browser: fc.nat({ max: browsers - 1 }),
  mutations: fc.array(mutation, { minLength: 1, maxLength: 3 }),
  other: fc.constantFrom('none' as const, 'none' as const, 'same' as const, 'another' as const),
  otherFirst: fc.boolean(),
  dup: fc.constantFrom('none' as const, 'none' as const, 'none' as const, 'before' as const, 'after' as const),
  noiseBefore: fc.oneof({ arbitrary: fc.constant([] as Array<[string, string]>), weight: 3 }, { arbitrary: cookiePairs(3), weight: 1 }),
  noiseAfter: fc.oneof({ arbitrary: fc.constant([] as Array<[string, string]>), weight: 3 }, { arbitrary: cookiePairs(3), weight: 1 }),
  sep: fc.oneof({ arbitrary: fc.constant('; '), weight: 4 }, { arbitrary: separator, weight: 1 })
})

export interface Browser { sid: string, tok: string, userId: number | string }

/** The cookie header of a spec against the browsers' current cookies, and the mutated value in it. */
export function buildHeader (spec: HeaderSpec, browsers: Browser[], secret: string): { header: string, original: string, mutated: string } {
  const self = browsers[spec.browser]
  const pick = (b: Browser, kind: 'session' | 'persistent') => (kind === 'session' ? b.sid : b.tok)
  const name = (kind: 'session' | 'persistent') => (kind === 'session' ? SESSION : PERSISTENT)
  const original = pick(self, spec.kind)
  const others = browsers.filter((b) => b !== self).map((b) => pick(b, spec.kind))
  let value = original
  for (const m of spec.mutations) value = applyMutation(value, m, { others, secret })
  const pairs: Array<[string, string]> = [[name(spec.kind), value]]
  if (spec.dup === 'before') pairs.unshift([name(spec.kind), original])
  if (spec.dup === 'after') pairs.push([name(spec.kind), original])
  if (spec.other !== 'none') {
    const otherBrowser = spec.other === 'same' ? self : browsers[(spec.browser + 1) % browsers.length]
    const otherKind = spec.kind === 'session' ? 'persistent' : 'session'
    const pair: [string, string] = [name(otherKind), pick(otherBrowser, otherKind)]
    if (spec.otherFirst) pairs.unshift(pair)
    else pairs.push(pair)
  }
  return { header: joinPairs([...spec.noiseBefore, ...pairs, ...spec.noiseAfter], spec.sep, false), original, mutated: value }
}

/** Store calls that change nothing. Every other call (`commit`, or one a future store interface adds) counts as a write. */
const READS = new Set(['read', 'list', 'users'])

/** The calls in `calls` that may write. */
export const writesOf = (calls: string[]): string[] => calls.filter((c) => !READS.has(c))

export type Expectation =
  | { auth: 'session', browser: Browser }
  | { auth: 'remember', browser: Browser }
  | { auth: 'anonymous', calls: string[] }

/**
 * What the plugin must do with a cookie header, judged on the values the cookie parser yields
 * (so a re-encoding that decodes to the same value is the same cookie): the session cookie of a
 * browser authenticates as that browser with one store read; otherwise a browser's remember-me
 * cookie signs it in; otherwise the request is anonymous, and the store sees a `read` of the
 * device a value names only for a correctly signed, correctly shaped value (one read per cookie;
 * it points at nothing, so nothing is written).
 */
export function expectation (cookies: Record<string, string | undefined>, browsers: Browser[], secret: string): Expectation {
  const sid = cookies[SESSION]
  const tok = cookies[PERSISTENT]
  const bySession = sid === undefined ? undefined : browsers.find((b) => b.sid === sid)
  if (bySession !== undefined) return { auth: 'session', browser: bySession }
  const calls: string[] = wellSigned(sid, secret) ? ['read'] : []
  const byToken = tok === undefined ? undefined : browsers.find((b) => b.tok === tok)
  if (byToken !== undefined) return { auth: 'remember', browser: byToken }
  if (wellSigned(tok, secret)) calls.push('read')
  return { auth: 'anonymous', calls }
}

/** The value of a Set-Cookie for `name` in an inject response, undefined when none. */
export function setCookie (cookies: Array<{ name: string, value: string }>, name: string): string | undefined {
  return cookies.find((c) => c.name === name)?.value
}

/** Counts of outcomes, printed with the input counts. */
export class Tally {
  #counts = new Map<string, number>()
  add (key: string): void { this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1) }
  toString (): string { return [...this.#counts].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k} ${v}`).join(', ') }
}

// ---------------------------------------------------------------------------------------------
// Requests to the example app (examples/app.ts): every route, arbitrary and near-valid bodies

export const ROUTES = [
  'api-login', 'api-logout', 'api-me-get', 'api-me-patch', 'api-sessions-get', 'api-session-delete', 'api-sessions-delete',
  'login-get', 'login-post', 'logout-post', 'home', 'sessions-get', 'session-delete-post', 'sessions-delete-others-post',
  'style', 'random'
] as const
export type Route = typeof ROUTES[number]

export const JSON_CT = 'application/json'
export const FORM_CT = 'application/x-www-form-urlencoded'

export type BodySpec =
  | { kind: 'none' }
  /** A JS value sent as JSON text. */
  | { kind: 'json', value: unknown, contentType: string | undefined }
  /** Raw text (arbitrary JSON text, broken JSON, broken form encoding...). */
  | { kind: 'text', text: string, contentType: string | undefined }
  /** Form fields, URL-encoded; the CSRF token field is added when the request spec says so. */
  | { kind: 'form', fields: Array<[string, string]>, contentType: string | undefined }
  /** Over Fastify's 1 MiB body limit. */
  | { kind: 'huge', contentType: string | undefined }

export interface FingerprintSpec { which: 'own' | 'other' | 'random', raw: string, encode: boolean }

export interface RequestSpec {
  route: Route
  /** For `random`: a method and path that may match nothing. */
  method: string
  path: string
  fp: FingerprintSpec
  query: string
  body: BodySpec
  /** Where the CSRF token goes: the `_csrf` body field, a header, nowhere, or garbage. */
  csrf: 'body' | 'header' | 'x-header' | 'none' | 'garbage-body' | 'garbage-header'
  /** The `_csrf` secret cookie that @fastify/csrf-protection keeps. */
  csrfCookie: 'valid' | 'none' | 'garbage'
  noise: Array<[string, string]>
}

/** Content types: mostly the right one for the body, sometimes any other. */
const contentType = (right: string): fc.Arbitrary<string | undefined> => fc.oneof(
  { arbitrary: fc.constant(right), weight: 12 },
  {
    arbitrary: fc.constantFrom<string | undefined>(
      undefined, '', JSON_CT, FORM_CT, 'text/plain', 'text/html', 'application/xml', 'application/octet-stream',
      'multipart/form-data; boundary=x', 'multipart/form-data', 'application/json; charset=utf-8', 'application/json; charset=utf-16',
      'APPLICATION/JSON', 'application/json;', 'application/json ; charset="utf-8"', 'application/jsonx', 'application/vnd.api+json',
      'application/x-www-form-urlencoded; charset=iso-8859-1', 'text/plain; charset=utf-8', ';', '/', 'json', '*/*', 'application/*'
    ),
    weight: 3
  },
  { arbitrary: fc.string({ maxLength: 40 }), weight: 1 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 20 }), weight: 1 }
)

/** Strings: short, empty, long past the schemas' limits, unicode. */
const text = (max: number): fc.Arbitrary<string> => fc.oneof(
  { arbitrary: fc.string({ maxLength: 30 }), weight: 4 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 30 }), weight: 2 },
  { arbitrary: fc.emailAddress(), weight: 1 },
  { arbitrary: fc.constantFrom('alice@example.com', 'bob@example.com', ' ALICE@example.com ', 'alice-password', ''), weight: 1 },
  { arbitrary: fc.integer({ min: max - 2, max: max + 3 }).map((n) => 'a'.repeat(n)), weight: 1 },
  { arbitrary: fc.integer({ min: max - 2, max: max + 3 }).map((n) => '😀'.repeat(n)), weight: 1 }
)

const notString = fc.oneof(fc.integer(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 2 }), fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 2 }))

const jsonField = (valid: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> => fc.oneof(
  { arbitrary: fc.constant(undefined), weight: 1 },
  { arbitrary: valid, weight: 4 },
  { arbitrary: notString, weight: 2 }
)

const extraKeys = fc.oneof(
  { arbitrary: fc.constant({}), weight: 3 },
  { arbitrary: fc.dictionary(fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('__proto__', 'constructor', 'prototype', 'id', 'user', '_csrf')), fc.jsonValue({ maxDepth: 2 }), { minKeys: 1, maxKeys: 3 }), weight: 1 },
  { arbitrary: fc.constant(JSON.parse('{"__proto__":{"admin":true}}')), weight: 1 },
  { arbitrary: fc.constant({ constructor: { prototype: { admin: true } } }), weight: 1 }
)

const withoutUndefined = (o: Record<string, unknown>): Record<string, unknown> =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined))

/** `{ email, password, remember? }` near the schema: each field right, missing or of the wrong type, plus extra keys. */
export const loginJson: fc.Arbitrary<unknown> = fc.tuple(
  jsonField(text(254)), jsonField(text(1024)),
  fc.oneof({ arbitrary: fc.constant(undefined), weight: 2 }, { arbitrary: fc.boolean(), weight: 2 }, { arbitrary: fc.constantFrom('true', 1, 'on', null), weight: 1 }),
  extraKeys
).map(([email, password, remember, extra]) => {
  // Spread, not Object.assign: an own `__proto__` key must stay an own key.
  return { ...(extra as Record<string, unknown>), ...withoutUndefined({ email, password, remember }) }
})

/** `{ name }` near PATCH /api/me's schema. */
export const nameJson: fc.Arbitrary<unknown> = fc.tuple(jsonField(text(100)), extraKeys)
  .map(([name, extra]) => ({ ...(extra as Record<string, unknown>), ...withoutUndefined({ name }) }))

/** Login form fields near POST /login's schema; `_csrf` is added by the request spec. */
export const loginForm: fc.Arbitrary<Array<[string, string]>> = fc.tuple(
  fc.option(text(254), { freq: 6 }), fc.option(text(1024), { freq: 6 }),
  fc.oneof({ arbitrary: fc.constant(null), weight: 3 }, { arbitrary: fc.constant('on'), weight: 3 }, { arbitrary: fc.constantFrom('off', 'true', 'ON', ''), weight: 1 }),
  fc.oneof(
    { arbitrary: fc.constant([] as Array<[string, string]>), weight: 6 },
    { arbitrary: fc.array(fc.tuple(fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('email', 'password', 'remember', '_csrf', '__proto__', 'constructor', 'a[b]', 'email[]')), fc.string({ maxLength: 10 })), { minLength: 1, maxLength: 3 }), weight: 1 }
  )
).map(([email, password, remember, extra]) => {
  const fields: Array<[string, string]> = []
  if (email !== null) fields.push(['email', email])
  if (password !== null) fields.push(['password', password])
  if (remember !== null) fields.push(['remember', remember])
  return [...fields, ...extra]
})

/** Any body, whatever the route. */
const anyBody: fc.Arbitrary<BodySpec> = fc.oneof(
  { arbitrary: fc.constant({ kind: 'none' } as BodySpec), weight: 6 },
  { arbitrary: fc.record({ kind: fc.constant('json' as const), value: fc.jsonValue({ maxDepth: 3 }), contentType: contentType(JSON_CT) }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant('text' as const), text: fc.json({ maxDepth: 3 }), contentType: contentType(JSON_CT) }), weight: 1 },
  {
    arbitrary: fc.record({
      kind: fc.constant('text' as const),
      text: fc.oneof(fc.string({ maxLength: 60 }), fc.string({ unit: 'binary', maxLength: 60 }), fc.constantFrom('', ' ', '{', '{"a":', '[1,]', 'null', '"x"', '\ufeff{}', '{"__proto__":1}', '{"a":1}{"b":2}', 'a=%zz&b', '%', '&&&=', 'a=1&a=2')),
      contentType: fc.oneof(contentType(JSON_CT), contentType(FORM_CT), contentType('text/plain'))
    }),
    weight: 3
  },
  { arbitrary: fc.record({ kind: fc.constant('form' as const), fields: fc.array(fc.tuple(fc.string({ maxLength: 10 }), fc.string({ maxLength: 20 })), { maxLength: 4 }), contentType: contentType(FORM_CT) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('huge' as const), contentType: contentType(JSON_CT) }), weight: 1 }
)

const bodyFor = (route: Route): fc.Arbitrary<BodySpec> => {
  switch (route) {
    case 'api-login':
      return fc.oneof(
        { arbitrary: fc.record({ kind: fc.constant('json' as const), value: loginJson, contentType: contentType(JSON_CT) }), weight: 3 },
        { arbitrary: anyBody, weight: 2 }
      )
    case 'api-me-patch':
      return fc.oneof(
        { arbitrary: fc.record({ kind: fc.constant('json' as const), value: nameJson, contentType: contentType(JSON_CT) }), weight: 3 },
        { arbitrary: anyBody, weight: 2 }
      )
    case 'login-post':
      return fc.oneof(
        { arbitrary: fc.record({ kind: fc.constant('form' as const), fields: loginForm, contentType: contentType(FORM_CT) }), weight: 3 },
        { arbitrary: fc.record({ kind: fc.constant('json' as const), value: loginJson, contentType: contentType(JSON_CT) }), weight: 1 },
        { arbitrary: anyBody, weight: 2 }
      )
    default:
      return anyBody
  }
}

const fingerprint: fc.Arbitrary<FingerprintSpec> = fc.record({
  which: fc.constantFrom('own' as const, 'other' as const, 'random' as const, 'random' as const, 'random' as const),
  raw: fc.oneof(
    fc.string({ unit: fc.constantFrom(...BASE64URL.split('')), minLength: 22, maxLength: 22 }),
    fc.string({ maxLength: 70 }),
    fc.string({ unit: 'binary', maxLength: 70 }),
    fc.constantFrom('', '.', '..', '%', '%zz', '%00', 'delete-others', 'a/b', 'a?b=c', '#', ' ', '😀', 'x'.repeat(64), 'x'.repeat(65))
  ),
  encode: fc.boolean()
})

const ROUTE_WEIGHTS: Record<Route, number> = {
  'api-login': 6,
  'api-logout': 2,
  'api-me-get': 2,
  'api-me-patch': 4,
  'api-sessions-get': 1,
  'api-session-delete': 3,
  'api-sessions-delete': 2,
  'login-get': 2,
  'login-post': 6,
  'logout-post': 3,
  home: 1,
  'sessions-get': 1,
  'session-delete-post': 3,
  'sessions-delete-others-post': 2,
  style: 1,
  random: 3
}

const PATHS = fc.oneof(
  fc.constantFrom('/api', '/api/', '/api/me/', '/api/sessions/', '/api/login/x', '/sessions/x', '/sessions//delete', '/login/', '//', '/%', '/%zz', '/api/%2e%2e/me', '/..', '/style.css/x', '/favicon.ico'),
  fc.webPath(),
  fc.string({ maxLength: 30 })
).map((p) => '/' + p.replace(/^[/\\]+/, '')) // (`//x` and `/\\x` are protocol-relative URLs to light-my-request, not paths)

const QUERIES = fc.oneof(
  fc.constant(''),
  fc.constantFrom('?error=1', '?signedOut=1', '?error=1&error=2', '?error=' + 'x'.repeat(21), '?signedOut=', '?error[]=1', '?a=%zz', '?%', '?error=%E0%A4%A'),
  fc.webQueryParameters().map((q) => '?' + q)
)

/** Requests to every route of the example, with bodies, content types, CSRF tokens (valid, garbage, none) and stray cookies. */
export const requestSpec = (noise: fc.Arbitrary<Array<[string, string]>>): fc.Arbitrary<RequestSpec> =>
  // One record per route, built once: arbitraries built inside a `chain` cost more than the requests.
  fc.oneof(...ROUTES.map((route) => ({
    weight: ROUTE_WEIGHTS[route],
    arbitrary: fc.record({
      route: fc.constant(route),
      method: fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'),
      path: PATHS,
      fp: fingerprint,
      query: QUERIES,
      body: bodyFor(route),
      csrf: fc.constantFrom('body' as const, 'body' as const, 'header' as const, 'x-header' as const, 'none' as const, 'garbage-body' as const, 'garbage-header' as const),
      csrfCookie: fc.constantFrom('valid' as const, 'valid' as const, 'valid' as const, 'none' as const, 'garbage' as const),
      noise
    })
  })))

export interface RequestContext {
  csrfToken: string
  csrfSecret: string
  /** The device the CSRF token is bound to: a fingerprint, or 'signed-out'. */
  csrfDevice: string
  ownFingerprint: string
  otherFingerprint: string
  /** Cookies that come first in the header (the session cookie in authenticated runs). */
  leadingCookies: Array<[string, string]>
}

const ROUTE_TARGET: Record<Exclude<Route, 'random'>, { method: string, url: (fp: string, query: string) => string }> = {
  'api-login': { method: 'POST', url: () => '/api/login' },
  'api-logout': { method: 'POST', url: () => '/api/logout' },
  'api-me-get': { method: 'GET', url: () => '/api/me' },
  'api-me-patch': { method: 'PATCH', url: () => '/api/me' },
  'api-sessions-get': { method: 'GET', url: () => '/api/sessions' },
  'api-session-delete': { method: 'DELETE', url: (fp) => `/api/sessions/${fp}` },
  'api-sessions-delete': { method: 'DELETE', url: () => '/api/sessions' },
  'login-get': { method: 'GET', url: (_fp, query) => `/login${query}` },
  'login-post': { method: 'POST', url: () => '/login' },
  'logout-post': { method: 'POST', url: () => '/logout' },
  home: { method: 'GET', url: () => '/' },
  'sessions-get': { method: 'GET', url: () => '/sessions' },
  'session-delete-post': { method: 'POST', url: (fp) => `/sessions/${fp}/delete` },
  'sessions-delete-others-post': { method: 'POST', url: () => '/sessions/delete-others' },
  style: { method: 'GET', url: () => '/style.css' }
}

export interface BuiltRequest {
  method: string
  url: string
  headers: Record<string, string>
  payload: string | undefined
  /** The fingerprint the URL names, when the route has one. */
  fingerprint: string
}

const HUGE = 'x'.repeat(1024 * 1024 + 10)

/** Turns a spec into an inject request, with the context's CSRF token, fingerprints and cookies. */
export function buildRequest (spec: RequestSpec, ctx: RequestContext): BuiltRequest {
  const fingerprint = spec.fp.which === 'own' ? ctx.ownFingerprint : spec.fp.which === 'other' ? ctx.otherFingerprint : wellFormed(spec.fp.raw)
  const fpInUrl = spec.fp.which !== 'random' || spec.fp.encode ? encodeComponent(fingerprint) : fingerprint
  const target = spec.route === 'random' ? { method: spec.method, url: () => spec.path + spec.query } : ROUTE_TARGET[spec.route]
  const headers: Record<string, string> = {}
  if (spec.csrf === 'header') headers['csrf-token'] = ctx.csrfToken
  if (spec.csrf === 'x-header') headers['x-csrf-token'] = ctx.csrfToken
  if (spec.csrf === 'garbage-header') headers['csrf-token'] = ctx.csrfToken.slice(1) + 'x'
  const bodyToken = spec.csrf === 'body' ? ctx.csrfToken : spec.csrf === 'garbage-body' ? ctx.csrfToken.slice(0, -2) : undefined

  let payload: string | undefined
  const body = spec.body
  switch (body.kind) {
    case 'none': break
    case 'json': {
      let value = body.value
      if (bodyToken !== undefined && typeof value === 'object' && value !== null && !Array.isArray(value)) value = { ...value, _csrf: bodyToken }
      payload = JSON.stringify(value) ?? ''
      break
    }
    case 'text': payload = body.text; break
    case 'form':
      payload = new URLSearchParams(bodyToken === undefined ? body.fields : [...body.fields, ['_csrf', bodyToken]]).toString()
      break
    case 'huge': payload = HUGE; break
  }
  if (body.kind !== 'none' && body.contentType !== undefined) headers['content-type'] = body.contentType

  const cookies: Array<[string, string]> = [...ctx.leadingCookies]
  if (spec.csrfCookie === 'valid') cookies.push(['_csrf', ctx.csrfSecret])
  if (spec.csrfCookie === 'garbage') cookies.push(['_csrf', ctx.csrfSecret.slice(0, -3)])
  cookies.push(...spec.noise)
  if (cookies.length > 0) headers.cookie = joinPairs(cookies, '; ', false)
  return { method: target.method, url: target.url(fpInUrl, spec.query), headers, payload, fingerprint }
}

/** Code points, as Ajv counts `maxLength`. */
const codePoints = (s: string): number => [...s].length

/** A `__proto__` key, or a `constructor` key holding a `prototype`: Fastify's JSON parser rejects both (400). */
export function hasPoison (value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false
  for (const key of Object.keys(value)) {
    const child = (value as Record<string, unknown>)[key]
    if (key === '__proto__') return true
    if (key === 'constructor' && typeof child === 'object' && child !== null && Object.hasOwn(child, 'prototype')) return true
    if (hasPoison(child)) return true
  }
  return false
}

/**
 * The body Fastify hands to validation, for requests whose outcome this oracle can tell:
 * `{ ok: true, body }`, `{ ok: false }` when Fastify must reject it with a 4xx, or undefined
 * when it depends on content-type details this oracle does not model.
 */
export function parsedBody (spec: RequestSpec, built: BuiltRequest, formParser: boolean): { ok: true, body: unknown } | { ok: false } | undefined {
  if (built.method === 'GET' || built.method === 'HEAD') return { ok: true, body: undefined }
  if (built.payload === undefined) return { ok: true, body: undefined }
  if (spec.body.kind === 'huge') return { ok: false }
  const ct = built.headers['content-type']
  if (ct === JSON_CT) {
    // The JSON API's own parser takes an empty body as no body; the pages keep Fastify's (a 400).
    if (built.payload === '' && !formParser) return { ok: true, body: undefined }
    try {
      const body = JSON.parse(built.payload.replace(/^\ufeff/, ''))
      return hasPoison(body) ? { ok: false } : { ok: true, body }
    } catch {
      return { ok: false }
    }
  }
  if (ct === 'text/plain') return { ok: true, body: built.payload }
  // @fastify/formbody is registered for the pages only (encapsulated): the JSON API answers 415.
  if (ct === FORM_CT && !formParser) return { ok: false }
  if (ct === FORM_CT && spec.body.kind === 'form') {
    // Fields URL-encoded by us: fast-querystring reads them back as URLSearchParams does, repeated keys as arrays.
    const body: Record<string, string | string[]> = Object.create(null)
    for (const [k, v] of new URLSearchParams(built.payload)) {
      const seen = body[k]
      body[k] = seen === undefined ? v : Array.isArray(seen) ? [...seen, v] : [seen, v]
    }
    return { ok: true, body }
  }
  return undefined
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

const PASSWORDS: Record<string, string> = { 'alice@example.com': 'alice-password', 'bob@example.com': 'bob-password' }

/** Whether a body that passed the login schema signs in (the email normalised as examples/users.ts does). */
export function rightCredentials (body: unknown): boolean {
  const { email, password } = body as { email: string, password: string }
  const key = normalizeEmail(email)
  return Object.hasOwn(PASSWORDS, key) && PASSWORDS[key] === password
}

/** POST /api/login's body schema. */
export function validLoginJson (body: unknown): boolean {
  if (!isPlainObject(body)) return false
  if (Object.keys(body).some((k) => !['email', 'password', 'remember'].includes(k))) return false
  return typeof body.email === 'string' && codePoints(body.email) <= 254 &&
    typeof body.password === 'string' && codePoints(body.password) <= 1024 &&
    (body.remember === undefined || typeof body.remember === 'boolean')
}

/** PATCH /api/me's body schema. */
export function validNameJson (body: unknown): boolean {
  if (!isPlainObject(body)) return false
  if (Object.keys(body).some((k) => k !== 'name')) return false
  return typeof body.name === 'string' && codePoints(body.name) >= 1 && codePoints(body.name) <= 100
}

/** POST /login's body schema. */
export function validLoginForm (body: unknown): boolean {
  if (!isPlainObject(body)) return false
  if (Object.keys(body).some((k) => !['email', 'password', 'remember', '_csrf'].includes(k))) return false
  return typeof body.email === 'string' && codePoints(body.email) <= 254 &&
    typeof body.password === 'string' && codePoints(body.password) <= 1024 &&
    (body.remember === undefined || body.remember === 'on') &&
    typeof body._csrf === 'string' && codePoints(body._csrf) <= 200
}

/**
 * Whether @fastify/csrf-protection lets the request through: the token it reads, against the
 * secret cookie, made for the device the request is signed in with ('signed-out' when none).
 */
export function csrfPasses (body: unknown, built: BuiltRequest, cookies: Record<string, string | undefined>, ctx: RequestContext, signedIn: boolean): boolean {
  const h = built.headers
  const token = (body as { _csrf?: unknown } | null | undefined)?._csrf || h['csrf-token'] || h['xsrf-token'] || h['x-csrf-token'] || h['x-xsrf-token']
  return cookies._csrf === ctx.csrfSecret && token === ctx.csrfToken && ctx.csrfDevice === (signedIn ? ctx.ownFingerprint : 'signed-out')
}

/** The example's JSON API refuses a POST, PUT or PATCH whose media type is not application/json (415), before parsing. */
export function jsonRequired (built: BuiltRequest): boolean {
  if (!['POST', 'PUT', 'PATCH'].includes(built.method) || !built.url.startsWith('/api/')) return false
  return built.headers['content-type']?.split(';')[0].trim().toLowerCase() !== 'application/json'
}
