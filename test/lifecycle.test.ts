/*
 * Model-based test of lib/lifecycle.ts against docs/sessions.md.
 *
 * test/helpers/lifecycle-model.ts is a reference model of one device written from the docs alone.
 * fast-check drives random sequences of requests on one device (one "browser" with a cookie jar,
 * plus copies of any secret ever issued: stale tabs, lost answers, thieves) through the real
 * lifecycle functions, and after every decision compares the Step with what the docs' tables
 * allow, then checks invariants on every device the lifecycle returns. The store is simulated
 * the way lib/devices.ts uses it: a write replaces the device, the device vanishes once its
 * storeTtl elapses, a theft revokes it, and two parallel requests settle like `Devices.settle`
 * (the second one, if it writes, is decided again on what the first one wrote).
 *
 * LIFECYCLE_RUNS scales the number of runs (default 1500 sequences of up to 40 operations).
 */
import fc from 'fast-check'
import { test } from 'tap'
import {
  type Device, forget, isLive, isRemembered, type Mint, remember, REISSUE_MAX, RETIRED_MAX, type Rules, showSession, showToken, signIn,
  type Step, storeTtl
} from '../lib/lifecycle.js'
import { type Branch, DeviceModel, type Deviations, type Issued, MODEL_REISSUE_MAX, MODEL_RETIRED_MAX, type Outcome } from './helpers/lifecycle-model.js'

const RUNS = Math.max(1, Math.round(1500 * Number(process.env.LIFECYCLE_RUNS ?? 1)))
// A seed whose sequences reach every row the property checks for (see the property).
const COVERING_SEED = Number(process.env.LIFECYCLE_COVERING_SEED ?? 1)
const T0 = 1000

/**
 * Readings the model accepts besides its own. Four disagreements it found between the docs and
 * the code were mended (the examples at the end of this file show each); one reading stays: the
 * cap of 8 retired secrets counts those that still matter when the device is written, which
 * depends on when the writes came, so the model accepts both outcomes where the cap is involved.
 */
const KNOWN: Deviations = {
  tokenReissueRestartsSession: false,
  usedTokenTheftWhenTokenDead: false,
  retiredIdFollowsDeviceClaim: false,
  usedTokenForgottenInGrace: false,
  retiredCapCountsKeptOnly: true
}

// ---------------------------------------------------------------------------------------------
// Deterministic secrets: plaintexts and hashes that can never be mistaken for each other, so the
// "device holds no plaintext" check is a substring search.

interface Minter {
  mint: Mint
  hash: (secret: string) => string
  minted: Set<string>
}

function minter (): Minter {
  let n = 0
  const hashes = new Map<string, string>()
  const minted = new Set<string>()
  return {
    mint: () => {
      n++
      const secret = `secret-${n}`
      const hash = `hash-${n}`
      hashes.set(secret, hash)
      minted.add(hash)
      return { secret, hash }
    },
    // A secret nobody minted still needs a hash the lifecycle will not find.
    hash: (secret) => hashes.get(secret) ?? `unminted-${secret}`,
    minted
  }
}

// ---------------------------------------------------------------------------------------------
// Operations

type Span = 'zero' | 'one' | 'grace' | 'renew' | 'ttl' | 'abs' | 'token' | 'tokenAbs' | 'days'
/** The browser's cookie, or the n-th secret of that kind ever issued to the device (modulo). */
type Choice = 'jar' | number

type Single =
  | { kind: 'session', pick: Choice, withToken: boolean, lost: number }
  | { kind: 'token', pick: Choice, lost: number }

type Op =
  /** The clock moves; spans are relative to the rules so that boundaries are hit often. */
  | { op: 'tick', span: Span, d: number }
  /**
   * A request with a session cookie and/or a token cookie, as lib/session.ts authenticates it:
   * the session id first, the token only when the session id signs nobody in. `lost`: the store
   * wrote but the answer never reached the browser (a 503, a dropped connection).
   */
  | { op: 'request', session: Choice | null, token: Choice | null, lost: number }
  /** Two requests decided on the same read of the device. */
  | { op: 'parallel', a: Single, b: Single }
  /** The browser tries again just past the grace (after a 503, say), with both its cookies. */
  | { op: 'retry', lost: number }

type Start = 'session' | 'token' | 'both'

const pickArb: fc.Arbitrary<Choice> = fc.oneof({ arbitrary: fc.constant('jar' as const), weight: 3 }, { arbitrary: fc.nat({ max: 30 }), weight: 2 })

/**
 * Whether an answer is lost: 0..3, read against the run's network (`lossy`): a good network
 * loses 3 only, a lossy one all but 0, so that chains of lost answers up to the reissue cap are
 * common in some runs and rare in others.
 */
const lostArb = fc.integer({ min: 0, max: 3 })

const singleArb: fc.Arbitrary<Single> = fc.oneof(
  fc.record({ kind: fc.constant('session' as const), pick: pickArb, withToken: fc.boolean(), lost: lostArb }),
  fc.record({ kind: fc.constant('token' as const), pick: pickArb, lost: lostArb })
)

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      op: fc.constant('tick' as const),
      // Mostly steps around the grace and renewAfter, where the tables have most rows; a step
      // past ttl or a day ends most of what the device holds, so those are rarer.
      span: fc.oneof(
        { arbitrary: fc.constantFrom<Span>('zero', 'one', 'grace', 'renew'), weight: 12 },
        { arbitrary: fc.constantFrom<Span>('ttl', 'abs', 'token', 'tokenAbs'), weight: 2 },
        { arbitrary: fc.constant<Span>('days'), weight: 1 }
      ),
      d: fc.integer({ min: -2, max: 2 })
    }),
    weight: 5
  },
  // The browser as it is: both its cookies.
  { arbitrary: fc.record({ op: fc.constant('request' as const), session: fc.constant('jar' as const), token: fc.constant('jar' as const), lost: lostArb }), weight: 4 },
  {
    arbitrary: fc.record({ op: fc.constant('request' as const), session: fc.option(pickArb, { nil: null }), token: fc.option(pickArb, { nil: null }), lost: lostArb }),
    weight: 3
  },
  { arbitrary: fc.record({ op: fc.constant('parallel' as const), a: singleArb, b: singleArb }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('retry' as const), lost: lostArb }), weight: 3 }
)

// Small durations, so that a sequence of 40 operations crosses every boundary; renewAfter and the
// grace are below ttl as lib/options.ts requires. session.absoluteTtl is kept above the grace: at
// or below it, a rotation's new secrets can all end within the grace of the token it used, and
// the store drops the device while the docs still sign a parallel request in "once" with that
// token (reported; a session capped shorter than the rotation grace is not a real setting).
// Half of the runs take a grace and renewAfter small beside ttl, as in the defaults (10 s, 15 min
// of 30 min): only then does a session id live through a renewal and three reissues.
const below = (ttl: number): fc.Arbitrary<number> =>
  fc.oneof(fc.integer({ min: 1, max: Math.max(1, Math.floor(ttl / 6)) }), fc.integer({ min: 1, max: ttl - 1 }))

const rulesArb: fc.Arbitrary<Rules> = fc.integer({ min: 2, max: 40 }).chain((ttl) => below(ttl).chain((grace) => fc.record({
  ttl: fc.constant(ttl),
  renewAfter: below(ttl),
  grace: fc.constant(grace),
  absoluteTtl: fc.option(fc.integer({ min: grace + 1, max: 4 * ttl }), { nil: undefined }),
  tokenTtl: fc.integer({ min: 1, max: 8 * ttl }),
  tokenAbsoluteTtl: fc.option(fc.integer({ min: 1, max: 16 * ttl }), { nil: undefined })
})))

function spanOf (span: Span, d: number, rules: Rules): number {
  const base = {
    zero: 0,
    one: 1,
    grace: rules.grace,
    renew: rules.renewAfter,
    ttl: rules.ttl,
    abs: rules.absoluteTtl ?? rules.ttl,
    token: rules.tokenTtl as number,
    tokenAbs: rules.tokenAbsoluteTtl ?? rules.tokenTtl as number,
    days: 50 * (rules.ttl + (rules.tokenTtl as number))
  }[span]
  return Math.max(0, base + (span === 'zero' ? 0 : d))
}

// ---------------------------------------------------------------------------------------------
// One run: a browser, its device in a simulated store, and the model

interface World {
  rules: Rules
  now: number
  /** The device as the store holds it; null once revoked or expired. */
  device: Device | null
  /** When the store drops the device: the last write's time plus its storeTtl. */
  storeUntil: number
  model: DeviceModel
  jar: { session?: string, token?: string }
  /** The network of this run loses most answers. */
  lossy: boolean
  issued: { session: string[], token: string[] }
  names: Map<string, string>
  signedInAt: number
  m: Minter
  trace: string[]
}

class Mismatch extends Error {}

/** How often each docs row was taken, over the whole property. */
const rows = new Map<string, number>()

function nameOf (w: World, secret: string | undefined): string {
  return secret === undefined ? '-' : w.names.get(secret) ?? secret
}

/** Records new secrets under short names: S1, S2... for session ids, T1, T2... for tokens. */
function learn (w: World, step: Step): void {
  if (step.session !== undefined && !w.names.has(step.session)) {
    w.issued.session.push(step.session)
    w.names.set(step.session, `S${w.issued.session.length}`)
  }
  if (step.token !== undefined && !w.names.has(step.token)) {
    w.issued.token.push(step.token)
    w.names.set(step.token, `T${w.issued.token.length}`)
  }
}

/** The device JSON with hashes replaced by the names of their secrets. */
function deviceText (w: World, device: Device | null): string {
  if (device === null) return 'null'
  let text = JSON.stringify({ ...device, userKey: undefined, fingerprint: undefined, metadata: undefined })
  for (const [secret, name] of w.names) text = text.split(`"${w.m.hash(secret)}"`).join(`"#${name}"`)
  return text
}

function fail (w: World, what: string): never {
  const rules = Object.entries(w.rules).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${String(v)}`).join(' ')
  throw new Mismatch([
    what,
    `  rules: ${rules}`,
    '  trace:',
    ...w.trace.map((line) => '    ' + line),
    w.model.describe((s) => nameOf(w, s)),
    `  device in store: ${deviceText(w, w.device)}`
  ].join('\n'))
}

function describeOutcome (o: Outcome): string {
  const parts: string[] = [o.auth]
  if (o.write) parts.push('write')
  if (o.session) parts.push('new session id')
  if (o.token) parts.push('new token')
  if (o.moved !== false) parts.push(o.moved === true ? 'token cookie moved' : 'token cookie moved or not')
  if (o.clear) parts.push('cookie cleared')
  if (o.event !== undefined) parts.push(`event ${o.event}`)
  return `${parts.join(', ')} [docs: ${o.row}]`
}

function describeStep (w: World, s: Step): string {
  const parts: string[] = [s.auth]
  if (s.write) parts.push('write')
  if (s.session !== undefined) parts.push(`new session id ${nameOf(w, s.session)}`)
  if (s.token !== undefined) parts.push(`new token ${nameOf(w, s.token)}`)
  if (s.tokenMoved === true) parts.push('token cookie moved')
  if (s.clear === true) parts.push('cookie cleared')
  if (s.event !== undefined) parts.push(`event ${s.event}`)
  return parts.join(', ')
}

function matches (o: Outcome, s: Step): boolean {
  return o.auth === s.auth && o.write === s.write && o.session === (s.session !== undefined) && o.token === (s.token !== undefined) &&
    (o.moved === 'either' || o.moved === (s.tokenMoved === true)) && o.clear === (s.clear === true) && o.event === s.event
}

/** The device the store gives a request now: none once its TTL elapsed. */
function read (w: World): Device | null {
  if (w.device !== null && w.now >= w.storeUntil) {
    w.trace.push(`t=${w.now} the store dropped the device (its storeTtl elapsed)`)
    w.device = null
  }
  return w.device
}

/** Invariants of every device the lifecycle hands back, against the model that describes it. */
function checkDevice (w: World, d: Device, model: DeviceModel, now: number, where: string): void {
  const problem = (msg: string): never => fail(w, `${where}: ${msg}\n  device: ${deviceText(w, d)}`)
  if (d.signedInAt !== w.signedInAt) problem(`signedInAt changed from ${w.signedInAt} to ${d.signedInAt}`)
  if (d.retired.length > RETIRED_MAX) problem(`${d.retired.length} retired entries, more than RETIRED_MAX (${RETIRED_MAX})`)
  if (JSON.stringify(d).includes('secret-')) problem('the device holds a secret\'s plaintext')
  const hashes = [d.session?.hash, d.token?.hash, ...d.retired.map((r) => r.hash)].filter((h): h is string => h !== undefined)
  for (const h of hashes) if (!w.m.minted.has(h)) problem(`hash ${h} was not minted`)
  if (new Set(hashes).size !== hashes.length) problem('a hash appears twice (current and retired, or retired twice)')
  // One current session id and one current token, and they are the ones the model calls current.
  for (const kind of ['session', 'token'] as const) {
    const current = model.secrets.filter((s) => s.kind === kind && s.state === 'current')
    if (current.length > 1) problem(`the model has ${current.length} current ${kind}s`)
    const want = current[0] === undefined ? null : w.m.hash(current[0].secret)
    const got = d[kind]?.hash ?? null
    if (want !== got) problem(`current ${kind} is ${got}, the model says ${current[0] === undefined ? 'none' : nameOf(w, current[0].secret)}`)
  }
  // The times the docs give the current secrets: the token's expiry is also its cookie's Max-Age.
  const session = model.current('session')
  if (session !== undefined && d.session !== null) {
    const want = { insertedAt: session.issuedAt, startedAt: session.start, expiresAt: session.expiresAt }
    const got = { insertedAt: d.session.insertedAt, startedAt: d.session.startedAt, expiresAt: d.session.expiresAt }
    if (JSON.stringify(want) !== JSON.stringify(got)) problem(`session id times ${JSON.stringify(got)}, the docs say ${JSON.stringify(want)}`)
  }
  const token = model.current('token')
  if (token !== undefined && d.token !== null && d.token.expiresAt !== token.expiresAt) {
    problem(`token expiry ${d.token.expiresAt}, the docs say ${token.expiresAt} (ttl from its issue or last extension, bounded by absoluteTtl from signedInAt)`)
  }
  const ttl = storeTtl(d, now, w.rules)
  if (!(ttl >= 0)) problem(`storeTtl ${ttl} < 0`)
  const until = model.signInUntil()
  if (now + ttl < until) problem(`storeTtl ${ttl}: the store would drop the device at ${now + ttl}, but a secret can sign in until ${until}`)
  const live = isLive(d, now, w.rules)
  if (live !== model.listed(now)) problem(`isLive = ${String(live)}, the docs say the device is ${model.listed(now) ? '' : 'not '}listed (its session id or token works)`)
  // "remembered: true when its token works".
  const remembered = token !== undefined && model.works(token, now)
  if (isRemembered(d, now, w.rules) !== remembered) problem(`isRemembered = ${String(!remembered)}, the docs say ${String(remembered)}`)
}

/**
 * One decision: the lifecycle's step on `device`, compared with the branches the docs allow on
 * `model` (the model of that same device). Returns the step and the branch it took.
 */
function decide (w: World, label: string, device: Device | null, model: DeviceModel, call: (d: Device | null) => Step, branches: Branch[]): { step: Step, branch: Branch } {
  const step = call(device)
  learn(w, step)
  const line = `t=${w.now} ${label} -> ${describeStep(w, step)}`
  const branch = branches.find((b) => matches(b.outcome, step))
  if (branch === undefined) {
    w.trace.push(line + '   <-- MISMATCH')
    fail(w, `t=${w.now} ${label}:\n  lifecycle: ${describeStep(w, step)}\n  docs:      ${branches.map((b) => describeOutcome(b.outcome)).join('\n        or   ')}`)
  }
  w.trace.push(`${line}   [${branch.outcome.row}]`)
  rows.set(branch.outcome.row, (rows.get(branch.outcome.row) ?? 0) + 1)
  // Without a write the step hands back the device it read (an anonymous step may hand back
  // null instead: Step.device is "null when there is none", and nobody writes or revokes it).
  if (!step.write && step.device !== device && !(step.auth === 'none' && step.device === null)) {
    fail(w, `${label}: write is false but the step's device is not the device read`)
  }
  if (step.write && step.device === null) fail(w, `${label}: write is true without a device`)
  if (step.auth === 'theft' && step.device === null) fail(w, `${label}: theft without the device to revoke`)
  for (const secret of [step.session, step.token]) {
    if (secret !== undefined && model.find(secret) !== undefined) fail(w, `${label}: ${nameOf(w, secret)} was issued before`)
  }
  return { step, branch }
}

/** Applies a decided step to the store, the model and (unless the answer is lost) the browser. */
function apply (w: World, kind: 'session' | 'token', step: Step, branch: Branch, lost: boolean, label: string): void {
  const issued: Issued = { session: step.session, token: step.token }
  branch.effect(w.model, issued)
  if (step.write) {
    const d = step.device as Device
    checkDevice(w, d, w.model, w.now, label)
    const ttl = storeTtl(d, w.now, w.rules)
    // lib/devices.ts deviceWrite: a device whose storeTtl is 0 is deleted.
    w.device = ttl === 0 ? null : d
    w.storeUntil = w.now + ttl
  }
  if (step.auth === 'theft') {
    w.device = null
    w.trace.push(`t=${w.now} the device is revoked`)
  }
  if (lost) return
  if (step.session !== undefined) w.jar.session = step.session
  if (step.token !== undefined) w.jar.token = step.token
  if (step.clear === true) delete w.jar[kind]
}

function resolve (w: World, pick: Choice | null, kind: 'session' | 'token'): string | undefined {
  if (pick === null) return undefined
  if (pick === 'jar') return w.jar[kind]
  const list = w.issued[kind]
  return list.length === 0 ? undefined : list[pick % list.length]
}

interface Decision { label: string, call: (d: Device | null) => Step, branches: (m: DeviceModel) => Branch[], kind: 'session' | 'token' }

function sessionDecision (w: World, sid: string, token: string | undefined): Decision {
  const now = w.now
  return {
    label: `show ${nameOf(w, sid)}${token === undefined ? '' : ` with ${nameOf(w, token)}`}`,
    call: (d) => showSession(d, w.m.hash(sid), token === undefined ? undefined : w.m.hash(token), now, w.rules, w.m.mint),
    branches: (m) => m.showSession(sid, token, now),
    kind: 'session'
  }
}

function tokenDecision (w: World, token: string): Decision {
  const now = w.now
  return {
    label: `show ${nameOf(w, token)}`,
    call: (d) => showToken(d, w.m.hash(token), now, w.rules, w.m.mint),
    branches: (m) => m.showToken(token, now),
    kind: 'token'
  }
}

function settle (w: World, dec: Decision, lost: boolean, suffix = ''): Step {
  const label = dec.label + suffix
  const { step, branch } = decide(w, label, read(w), w.model, dec.call, dec.branches(w.model))
  apply(w, dec.kind, step, branch, lost, label)
  return step
}

function isLost (w: World, lost: number): boolean {
  return w.lossy ? lost !== 0 : lost === 3
}

function request (w: World, op: Extract<Op, { op: 'request' }>): void {
  const sid = resolve(w, op.session, 'session')
  const token = resolve(w, op.token, 'token')
  const lost = isLost(w, op.lost)
  const note = lost ? ' (answer lost)' : ''
  if (sid !== undefined) {
    const step = settle(w, sessionDecision(w, sid, token), lost, note)
    // lib/session.ts: a session id that signs the request in (or is stolen) ends it; else the token is tried.
    if (step.auth === 'session' || step.auth === 'theft') return
  }
  if (token !== undefined) settle(w, tokenDecision(w, token), lost, note)
}

function singleDecision (w: World, s: Single): Decision | undefined {
  if (s.kind === 'session') {
    const sid = resolve(w, s.pick, 'session')
    return sid === undefined ? undefined : sessionDecision(w, sid, s.withToken ? w.jar.token : undefined)
  }
  const token = resolve(w, s.pick, 'token')
  return token === undefined ? undefined : tokenDecision(w, token)
}

/**
 * Two requests read the same device. The first one's step is written; the second one's stands
 * when it writes nothing, and is decided again on the new device when it would write (its
 * write under the old version fails), as `Devices.settle` does.
 */
function parallel (w: World, op: Extract<Op, { op: 'parallel' }>): void {
  const a = singleDecision(w, op.a)
  const b = singleDecision(w, op.b)
  if (a === undefined || b === undefined) return
  const d0 = read(w)
  const stale = w.model.clone()
  const lostA = isLost(w, op.a.lost)
  const lostB = isLost(w, op.b.lost)
  const A = decide(w, `parallel A: ${a.label}${lostA ? ' (answer lost)' : ''}`, d0, w.model, a.call, a.branches(w.model))
  const B = decide(w, `parallel B: ${b.label}${lostB ? ' (answer lost)' : ''}`, d0, stale, b.call, b.branches(stale))
  apply(w, a.kind, A.step, A.branch, lostA, 'parallel A')
  const aChanged = A.step.write || A.step.auth === 'theft'
  if (B.step.write && aChanged) {
    settle(w, b, lostB, ` (parallel B, decided again after A wrote${lostB ? '; answer lost' : ''})`)
  } else {
    apply(w, b.kind, B.step, B.branch, lostB, 'parallel B')
  }
}

function run (rules: Rules, start: Start, lossy: boolean, ops: Op[]): void {
  const m = minter()
  const secrets = { session: start !== 'token', token: start !== 'session' }
  const step = signIn('user', 'fingerprint', {}, secrets, T0, rules, m.mint)
  const w: World = {
    rules,
    now: T0,
    device: null,
    storeUntil: T0,
    model: DeviceModel.signIn(rules, T0, { session: step.session, token: step.token }, KNOWN),
    jar: {},
    lossy,
    issued: { session: [], token: [] },
    names: new Map(),
    signedInAt: T0,
    m,
    trace: []
  }
  learn(w, step)
  w.trace.push(`t=${T0} signIn(${start})${lossy ? ', on a lossy network' : ''} -> ${describeStep(w, step)}`)
  if (step.auth !== (secrets.session ? 'session' : 'none') || !step.write || step.device === null) fail(w, 'signIn: wrong step')
  if ((step.session !== undefined) !== secrets.session || (step.token !== undefined) !== secrets.token) fail(w, 'signIn: wrong cookies')
  checkDevice(w, step.device, w.model, T0, 'signIn')
  w.device = step.device
  w.storeUntil = T0 + storeTtl(step.device, T0, rules)
  w.jar = { session: step.session, token: step.token }

  for (const op of ops) {
    if (op.op === 'tick') {
      w.now += spanOf(op.span, op.d, rules)
      const d = read(w)
      if (d !== null) checkDevice(w, d, w.model, w.now, `t=${w.now} the stored device`)
      else if (w.model.listed(w.now)) fail(w, `t=${w.now}: the store dropped a device that can still sign in`)
    } else if (op.op === 'request') {
      request(w, op)
    } else if (op.op === 'retry') {
      w.now += rules.grace + 1
      request(w, { op: 'request', session: 'jar', token: 'jar', lost: op.lost })
    } else {
      parallel(w, op)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The property

test('lifecycle.ts follows docs/sessions.md (model-based)', async (t) => {
  t.equal(REISSUE_MAX, MODEL_REISSUE_MAX, 'REISSUE_MAX is the docs\' 3')
  t.equal(RETIRED_MAX, MODEL_RETIRED_MAX, 'RETIRED_MAX is the docs\' 8')
  const seed = process.env.LIFECYCLE_SEED === undefined ? undefined : Number(process.env.LIFECYCLE_SEED)
  const started = Date.now()
  let ops = 0
  // size 'max': lengths spread up to 40; the default bias keeps most sequences too short to
  // reach a third reissue or the 8th retired secret.
  const opsArb = fc.array(opArb, { minLength: 1, maxLength: 40, size: 'max' })
  const property = fc.property(rulesArb, fc.constantFrom<Start>('both', 'both', 'session', 'token'), fc.boolean(), opsArb, (rules, start, lossy, list) => {
    ops += list.length
    run(rules, start, lossy, list)
  })
  fc.assert(property, { numRuns: RUNS, seed })
  // A random seed explores new sequences every run, but may miss a rare row; the sequences of
  // this fixed seed reach every row listed below, so that the check of the generator is the
  // same in every run.
  fc.assert(property, { numRuns: RUNS, seed: COVERING_SEED })
  t.comment(`${RUNS} sequences (seed ${seed ?? 'random'}) and ${RUNS} more (seed ${COVERING_SEED}), ${ops} operations in ${Date.now() - started} ms`)
  for (const [row, n] of [...rows].sort((a, b) => b[1] - a[1])) t.comment(`${String(n).padStart(6)}  ${row}`)
  // The generator must keep reaching the rows that matter, or the property proves little.
  for (const row of [
    'current, younger than renewAfter', 'current, older than renewAfter: renews', 'current, device unclaimed: claims it; then current, younger than renewAfter',
    'current, expired or past session.absoluteTtl', 'retired, device claimed, within its grace', 'retired, device claimed, past its grace',
    'retired, device unclaimed for at most the grace', 'retired, device unclaimed past the grace: reissue',
    'retired, device unclaimed past the grace, after 3 reissues', 'superseded session id: theft', 'current: rotates',
    'current, past its expiry or persistentSession.absoluteTtl', 'used at most the grace ago', 'used, and its rotation is unclaimed: reissue of both secrets',
    'used, and its rotation was claimed: theft', 'used, rotation unclaimed, after 3 reissues: theft', 'superseded token: theft', 'no such device'
  ]) {
    if (RUNS >= 1000) t.ok((rows.get(row) ?? 0) > 0, `reached: ${row}`)
  }
})

// ---------------------------------------------------------------------------------------------
// Key rows of the tables, by hand

const RULES: Rules = { ttl: 100, renewAfter: 50, grace: 10, absoluteTtl: undefined, tokenTtl: 1000, tokenAbsoluteTtl: undefined }

/** A device and the secrets shown to it by name, for the examples below. */
function harness (rules: Rules = RULES) {
  const m = minter()
  return {
    m,
    h: m.hash,
    sessionStep: (d: Device | null, sid: string, now: number, token?: string) => showSession(d, m.hash(sid), token === undefined ? undefined : m.hash(token), now, rules, m.mint),
    tokenStep: (d: Device | null, token: string, now: number) => showToken(d, m.hash(token), now, rules, m.mint),
    signIn: (token = true, now = 0) => signIn('user', 'fp', {}, { session: true, token }, now, rules, m.mint)
  }
}

const view = (s: Step): Pick<Step, 'auth' | 'write' | 'clear'> & { session: boolean, token: boolean, tokenMoved: boolean } =>
  ({ auth: s.auth, write: s.write, clear: s.clear, session: s.session !== undefined, token: s.token !== undefined, tokenMoved: s.tokenMoved === true })

test('a session id renews after renewAfter and keeps working in a no-write window before', async (t) => {
  const x = harness()
  const s0 = x.signIn(false)
  const S1 = s0.session as string
  const young = x.sessionStep(s0.device, S1, 49)
  t.same(view(young), { auth: 'session', write: false, clear: undefined, session: false, token: false, tokenMoved: false }, 'younger than renewAfter: signed in, no write')
  t.equal(young.device, s0.device, 'no write: the same device object')
  const renewed = x.sessionStep(s0.device, S1, 50)
  t.equal(renewed.auth, 'session')
  t.ok(renewed.write && renewed.session !== undefined && renewed.event === 'renewed', 'renewed: a new session id in the cookie')
  t.equal((renewed.device as Device).session?.insertedAt, 50)
  t.equal((renewed.device as Device).session?.startedAt, 0, 'a renewal keeps the session start')
  t.equal((renewed.device as Device).signedInAt, 0)
  // Idle: ttl after the id was issued.
  t.equal(x.sessionStep(s0.device, S1, 99).auth, 'session')
  t.equal(x.sessionStep(s0.device, S1, 100).auth, 'none', 'idle past ttl: anonymous')
})

test('a claim gives the retired session id the grace from now', async (t) => {
  const x = harness()
  const s0 = x.signIn(false)
  const S1 = s0.session as string
  const r = x.sessionStep(s0.device, S1, 50)
  const S2 = r.session as string
  // Before the claim: a retired id works for the grace after the renewal (a parallel request).
  t.equal(x.sessionStep(r.device, S1, 60).auth, 'session', 'unclaimed for at most the grace: signed in')
  const claim = x.sessionStep(r.device, S2, 70)
  t.same(view(claim), { auth: 'session', write: true, clear: undefined, session: false, token: false, tokenMoved: false }, 'the first showing of S2 claims (a write, no new cookie)')
  t.equal(x.sessionStep(claim.device, S1, 79).auth, 'session', 'within its grace from the claim')
  const late = x.sessionStep(claim.device, S1, 80)
  t.same(view(late), { auth: 'none', write: false, clear: undefined, session: false, token: false, tokenMoved: false }, 'past its grace: anonymous, not theft')
})

test('a lost renewal is reissued at most 3 times, then anonymous; the superseded ids are theft', async (t) => {
  const x = harness()
  const s0 = x.signIn(false)
  let d = s0.device
  const S1 = s0.session as string
  // The renewal's answer (S2) is lost: the browser keeps showing S1.
  let step = x.sessionStep(d, S1, 50)
  d = step.device
  const lost = [step.session as string]
  let now = 50
  t.equal(x.sessionStep(d, S1, now + 10).auth, 'session', 'at most the grace after the renewal: signed in, no write')
  for (let i = 1; i <= 3; i++) {
    now += 11
    step = x.sessionStep(d, S1, now)
    t.equal(step.event, 'reissued', `reissue ${i}`)
    t.equal((step.device as Device).session?.startedAt, 0, 'a reissue keeps the session start')
    d = step.device
    lost.push(step.session as string)
  }
  step = x.sessionStep(d, S1, now + 11)
  t.same(view(step), { auth: 'none', write: false, clear: undefined, session: false, token: false, tokenMoved: false }, 'after 3 reissues without a claim: anonymous')
  for (const superseded of lost.slice(0, 3)) {
    t.same(view(x.sessionStep(d, superseded, now + 11)), { auth: 'theft', write: false, clear: true, session: false, token: false, tokenMoved: false }, 'a superseded id: theft, cookie cleared')
  }
  t.equal(x.sessionStep(d, lost[3], now + 11).auth, 'session', 'the last reissued id works, and claims')
})

test('a used token signs a parallel request in once, and a lost rotation is reissued up to 3 times, then theft', async (t) => {
  const x = harness()
  const s0 = x.signIn(true)
  const T1 = s0.token as string
  // The session idled out; the token rotates.
  const rot = x.tokenStep(s0.device, T1, 200)
  t.same(view(rot), { auth: 'session', write: true, clear: undefined, session: true, token: true, tokenMoved: false }, 'current token: rotates')
  t.equal((rot.device as Device).session?.startedAt, 200, 'a remember-me sign-in starts a session')
  const once = x.tokenStep(rot.device, T1, 210)
  t.same(view(once), { auth: 'once', write: false, clear: undefined, session: false, token: false, tokenMoved: false }, 'used at most the grace ago: this request only')
  let d = rot.device
  let now = 210
  const lostTokens = [rot.token as string]
  for (let i = 1; i <= 3; i++) {
    now += 11
    const step = x.tokenStep(d, T1, now)
    t.same(view(step), { auth: 'session', write: true, clear: undefined, session: true, token: true, tokenMoved: false }, `reissue ${i} of both secrets`)
    d = step.device
    lostTokens.push(step.token as string)
  }
  const fourth = x.tokenStep(d, T1, now + 11)
  t.equal(fourth.auth, 'theft', 'after 3 reissues without a claim: theft')
  t.equal(fourth.clear, true)
  t.equal(x.tokenStep(d, lostTokens[0], now + 11).auth, 'theft', 'a superseded token: theft')
  // Claimed: the used token past its grace is theft.
  const claimed = x.tokenStep(rot.device, rot.token as string, 215)
  t.equal(claimed.event, 'rotated', 'the rotated token rotates again (claiming the device)')
  t.equal(x.tokenStep(claimed.device, T1, 221).auth, 'theft', 'used, its rotation claimed, past the grace: theft')
  t.equal(x.tokenStep(claimed.device, T1, 210).auth, 'once', 'within its grace (used at 200) even after the claim: once')
})

test('the token cookie moves only on a renewal, only when the request showed the token', async (t) => {
  const x = harness()
  const s0 = x.signIn(true)
  const S1 = s0.session as string
  const T1 = s0.token as string
  t.notOk(x.sessionStep(s0.device, S1, 10, T1).tokenMoved, 'no renewal: no cookie')
  const without = x.sessionStep(s0.device, S1, 60)
  t.notOk(without.tokenMoved, 'a renewal without the token: no cookie')
  t.equal((without.device as Device).token?.expiresAt, 1000, 'and the token keeps its expiry')
  const withToken = x.sessionStep(s0.device, S1, 60, T1)
  t.ok(withToken.tokenMoved, 'a renewal showing the token: its cookie is set again')
  t.equal(withToken.token, undefined, 'same token, no new secret')
  t.equal((withToken.device as Device).token?.expiresAt, 1060, 'its expiry moves to ttl from now')
  const other = x.sessionStep(s0.device, S1, 60, 'secret-999')
  t.notOk(other.tokenMoved, 'a token that is not the device\'s: no cookie')
})

test('persistentSession.absoluteTtl stops a token however active', async (t) => {
  const rules: Rules = { ...RULES, tokenAbsoluteTtl: 300 }
  const x = harness(rules)
  const s0 = x.signIn(true)
  let d = s0.device
  let sid = s0.session as string
  const T1 = s0.token as string
  for (let now = 60; now < 300; now += 60) {
    const step = x.sessionStep(d, sid, now, T1)
    t.equal(step.event, 'renewed')
    d = step.device
    sid = step.session as string
    t.ok((d as Device).token !== null && (d as Device).token!.expiresAt <= 300, `t=${now}: the token never outlives signedInAt + absoluteTtl`)
  }
  const last = x.sessionStep(d, sid, 299, T1)
  t.equal(last.auth, 'session')
  t.same(view(x.tokenStep(d, T1, 300)), { auth: 'none', write: false, clear: true, session: false, token: false, tokenMoved: false }, 'at signedInAt + absoluteTtl: anonymous, cookie cleared')
  t.notOk(isLive({ ...(d as Device), session: null }, 300, rules), 'not remembered any more')
})

test('session.absoluteTtl counts from the session start, which a remember-me sign-in resets', async (t) => {
  const rules: Rules = { ...RULES, absoluteTtl: 120 }
  const x = harness(rules)
  const s0 = x.signIn(true)
  const T1 = s0.token as string
  const r1 = x.sessionStep(s0.device, s0.session as string, 60)
  const S2 = r1.session as string
  t.equal((r1.device as Device).session?.expiresAt, 120, 'a renewal cannot outlive the start + absoluteTtl')
  t.equal(x.sessionStep(r1.device, S2, 119).auth, 'session')
  t.equal(x.sessionStep(r1.device, S2, 120).auth, 'none', 'absoluteTtl after the sign-in: anonymous though renewed at 60')
  const rot = x.tokenStep(r1.device, T1, 120)
  t.equal(rot.event, 'rotated', 'the token signs the browser in again')
  const S3 = rot.session as string
  t.equal((rot.device as Device).session?.startedAt, 120, 'a new session start')
  t.equal((rot.device as Device).signedInAt, 0, 'signedInAt stays: the remember-me sign-in is not a sign-in with credentials')
  t.equal(x.sessionStep(rot.device, S3, 200).event, 'renewed', 'the new session lives past the first one\'s absolute end')
})

test('remember() replaces the token, forget() drops it: the old tokens are unknown, not theft', async (t) => {
  const x = harness()
  const s0 = x.signIn(true)
  const T1 = s0.token as string
  const rot = x.tokenStep(s0.device, T1, 200)
  const T2 = rot.token as string
  const re = remember(rot.device as Device, 210, RULES, x.m.mint)
  t.equal(re.auth, 'session')
  t.ok(re.write && re.token !== undefined && re.session === undefined, 'a new token, the session id stays')
  const T3 = re.token as string
  t.equal((re.device as Device).token?.expiresAt, 1210)
  t.same(view(x.tokenStep(re.device, T2, 300)), { auth: 'none', write: false, clear: true, session: false, token: false, tokenMoved: false }, 'the replaced token simply ends')
  t.same(view(x.tokenStep(re.device, T1, 300)), { auth: 'none', write: false, clear: true, session: false, token: false, tokenMoved: false }, 'the used tokens are forgotten with it')
  t.equal(x.tokenStep(re.device, T3, 300).event, 'rotated', 'the new token works')
  const f = forget(re.device as Device, 220, RULES)
  t.equal(f.auth, 'none', 'forget() signs nobody in')
  t.ok(f.write, 'and is written')
  t.equal((f.device as Device).token, null, 'the device has no token')
  t.ok((f.device as Device).retired.every((r) => r.kind === 'session'), 'no token kept')
  t.equal(x.tokenStep(f.device, T3, 230).clear, true, 'a forgotten token: anonymous, cookie cleared')
  t.ok(isLive(f.device as Device, 230, RULES), 'its session still works: listed')
  t.notOk(isLive(f.device as Device, 400, RULES), 'nothing works any more: not listed')
  t.equal(f.device?.signedInAt, 0, 'signedInAt stays')
})

test('a device keeps the 8 newest retired secrets: an older superseded one is unknown, not theft', async (t) => {
  const x = harness({ ...RULES, renewAfter: 1 })
  const s0 = x.signIn(false)
  let d = s0.device
  let sid = s0.session as string
  // A lost renewal (S2), then a reissue: S2 superseded.
  let step = x.sessionStep(d, sid, 1)
  const S2 = step.session as string
  d = step.device
  step = x.sessionStep(d, sid, 12)
  t.equal(step.event, 'reissued')
  d = step.device
  sid = step.session as string
  t.equal(x.sessionStep(d, S2, 12).auth, 'theft', 'superseded: theft')
  // Eight renewals in a row, each claiming the one before: eight newer retired ids.
  for (let now = 13; now < 21; now++) {
    step = x.sessionStep(d, sid, now)
    d = step.device
    sid = step.session as string
  }
  t.ok((d as Device).retired.length <= RETIRED_MAX)
  t.notOk((d as Device).retired.some((r) => r.hash === x.h(S2)), 'S2 fell out of the 8 newest')
  t.equal(x.sessionStep(d, S2, 21).auth, 'none', 'older than the 8 newest: anonymous')
})

// ---------------------------------------------------------------------------------------------
// What the model-based run found: four disagreements between the docs and the code, mended, and
// the cap's reading, written down in the docs.

test('a token reissue keeps the session start', async (t) => {
  // docs: "A session starts at a sign-in or a remember-me sign-in; renewals and reissues keep its start."
  const x = harness({ ...RULES, absoluteTtl: 50 })
  const s0 = x.signIn(true)
  const T1 = s0.token as string
  const rot = x.tokenStep(s0.device, T1, 200) // the remember-me sign-in: the session starts at 200; its answer is lost
  const re = x.tokenStep(rot.device, T1, 211) // the browser shows T1 again past the grace: reissue
  t.equal(re.event, 'reissued')
  t.equal((re.device as Device).session?.startedAt, 200, 'the session started at the rotation')
  t.equal(x.sessionStep(re.device, re.session as string, 255).auth, 'none', 'absoluteTtl (50) from 200 has passed')
})

test('a lost rotation is not reissued once remember-me has ended: anonymous, not theft', async (t) => {
  // docs: "used, and its rotation is unclaimed -> reissue ...; anonymous, the cookie cleared, once
  // the device's token no longer works". The rotation happened 20 before
  // persistentSession.absoluteTtl; its answer was lost; the browser retries past the grace.
  const x = harness({ ...RULES, tokenAbsoluteTtl: 220 })
  const s0 = x.signIn(true)
  const T1 = s0.token as string
  const rot = x.tokenStep(s0.device, T1, 200) // S2 (works until 300), T2 (until 220): lost
  t.equal(x.tokenStep(rot.device, T1, 211).event, 'reissued', 'before the absolute limit the lost rotation is reissued')
  t.equal(x.sessionStep(rot.device, s0.session as string, 221).auth, 'none', 'the old session id idled out at 100')
  const retry = x.tokenStep(rot.device, T1, 221)
  t.same(view(retry), { auth: 'none', write: false, clear: true, session: false, token: false, tokenMoved: false }, 'past it: anonymous, the cookie cleared, no theft')
})

test('a retired session id past its grace stays anonymous when a later renewal is unclaimed', async (t) => {
  // docs: "retired, device claimed, past its grace -> anonymous"; S1's grace came from the claim
  // at 60. The device is unclaimed again only because S2 renewed in that same request; the
  // "device unclaimed" rows are about S2's lost answer, not S1's.
  const x = harness({ ...RULES, renewAfter: 30 })
  const s0 = x.signIn(false)
  const S1 = s0.session as string
  const r1 = x.sessionStep(s0.device, S1, 30) // S2
  const r2 = x.sessionStep(r1.device, r1.session as string, 60) // claims (S1's grace until 70) and renews: S3, received
  const S3 = r2.session as string
  const stale = x.sessionStep(r2.device, S1, 75) // a copy of S1, past its grace
  t.equal(stale.auth, 'none', 'anonymous')
  const browser = x.sessionStep(stale.write ? stale.device : r2.device, S3, 76)
  t.equal(browser.auth, 'session', 'the browser that holds S3 stays signed in')
  // The same S1 at the same time after an unrelated write (S3 shown at 71) is anonymous: the code
  // forgot S1 then, so its answer depends on whether the device was written since S1's grace ended.
  const claimed = x.sessionStep(r2.device, S3, 71)
  t.equal(x.sessionStep(claimed.device, S1, 75).auth, 'none')
})

test('a used token signs a parallel request in for the whole grace', async (t) => {
  // docs: "used at most the grace ago -> signed in for this request only". The token was used
  // 5 before its own expiry (1000); the device was written (a renewal) after that expiry.
  const x = harness({ ...RULES, renewAfter: 1 })
  const s0 = x.signIn(true)
  const T1 = s0.token as string
  const rot = x.tokenStep(s0.device, T1, 995)
  t.equal(x.tokenStep(rot.device, T1, 1002).auth, 'once', 'without a write in between: once')
  const renewed = x.sessionStep(rot.device, rot.session as string, 1001, rot.token as string)
  t.equal(renewed.event, 'renewed')
  const parallel = x.tokenStep(renewed.device, T1, 1002)
  t.equal(parallel.auth, 'once', 'used 7 ago, grace 10: once')
  t.notOk(parallel.clear, 'and the remember-me cookie stays')
})

test('the cap of 8 retired secrets counts those that still matter', async (t) => {
  // docs: "A device keeps the 8 newest retired secrets that still matter". T1 is used at 200,
  // then nine renewals each retire a session id, and each renewal's claim ends the grace of the
  // one before: those no longer matter, so T1 is kept, and a used token past the grace is theft.
  const x = harness({ ...RULES, renewAfter: 1 })
  const s0 = x.signIn(true)
  const T1 = s0.token as string
  let step = x.tokenStep(s0.device, T1, 200)
  let d = step.device
  let sid = step.session as string
  for (let now = 211; now <= 299; now += 11) {
    step = x.sessionStep(d, sid, now)
    d = step.device
    sid = step.session as string
  }
  t.equal(x.tokenStep(d, T1, 300).auth, 'theft', 'T1 still matters: theft')
})
