// Randomized concurrency: interleavings of login, renewal, remember-me use, revocation (one other
// browser, all other browsers), update (PATCH /me) and logout over TWO app instances (A and B,
// each with its own ioredis client and RedisStore) on ONE real redis-server, checked after every
// step against a model of the browsers.
//
// Generation: fast-check. An interleaving is 1-2 users and 2-4 browsers; a first step signs every
// browser in concurrently, then 4-8 steps each send 1-6 operations of random browsers to random
// instances, concurrently: each operation is sent at once, after a setImmediate, after 1 ms, or
// once the previous operation of the step has answered; its cookies are taken when it is sent,
// then the request and its answer each spend 0 to 3 ms "on the network" (so a request carrying
// an old session id can reach an instance after another request rotated it, and a browser can
// send with its old cookies while a rotation's answer is still on its way). Each instance's store
// is wrapped in a "jitter" store that delays some store calls by a microtask, a setImmediate or a
// timer (seeded from the interleaving), so the store calls of concurrent requests interleave
// differently. Everything sent is derived from the seed, but Redis and timers are real, so a
// replay (CONCURRENCY_SEED=<seed> [CONCURRENCY_PATH=<path>]) reproduces the operations and the
// delays, not necessarily the exact timing; a failure's message carries the whole trace of the
// interleaving. CONCURRENCY_RUNS changes the number of interleavings per backend (default 30, in
// npm test; the stress tier runs this file with 250: test/stress/concurrency.test.ts).
//
// The model. Browsers are cookie jars: concurrent requests of one browser carry the cookies the
// jar holds when each is sent, and the jar takes every response's Set-Cookie as a browser would.
// A browser is signed in under a "generation" (a fingerprint: one login), or signed out. A
// generation ends (is revoked) when its browser logs out or logs in again, when a DELETE
// /sessions/:fingerprint answers 204 for it, or when a DELETE /sessions lists it; the responses
// are the ground truth for what each racing operation did (a login always answers 200: it is one
// commit, two when the browser was signed in as another user, so nothing revokes it halfway; a
// concurrent DELETE /sessions may end its device right after, and then lists it). Within one step, a browser that logs
// in or out does nothing else, and a user is renamed (PATCH /me) at most once and not while one of
// their browsers logs in: the model is the user database, which a PATCH answered 200 changes and
// from which logins take the name, so which name a racing login stores is not left to chance.
// "Remember-me use" drops the browser's session cookie (a browser restart) before the step's
// requests of that browser, so they all sign in with the remember-me token at once, on A and B.
//
// Invariants, checked after each step and at the end:
//  1. one device per fingerprint, one current session id per device: store.list(userKey) has
//     unique fingerprints, each device's record (a Device, lib/lifecycle.ts) is of that user and
//     holds a session id or a token, and every GET /sessions answer has unique fingerprints;
//  2. a revoked generation never authenticates again: every request of its browser until it logs in
//     again, and (on A and on B) each of its session ids, its remember-me tokens (current and used)
//     and its last session id with its last token, is a 401 after the step that revoked it; and
//     after the last interleaving every session id and token any revoked generation ever held,
//     each alone, on A and on B;
//  3. a user's device list equals the model: the fingerprints in store.list and in GET /sessions
//     (asked by a signed-in browser of the user) are those of the user's live generations, each
//     once, the asking browser's marked current;
//  4. no request of a browser signed in for the whole step is a 401 (or any error), whatever other
//     requests of it, of other browsers or of other instances renewed or rotated meanwhile (the
//     losers of those races are signed in from the grace, or for their request only); and each
//     live browser's session cookie then names its own device (store.read of the cookie's bucket
//     and fingerprint) and is that device's current, working session id;
//  5. an update is seen by every live session of the user on its next request: GET /me answers of
//     a later step (and the stored credentials right after the step) carry the new name; answers in
//     the PATCH's own step carry the old or the new one;
//  6. no browser is taken for a thief: every browser is honest and takes every answer, so no
//     session:reuse or persistent:reuse fires.
// Racing operations must also agree with each other: a DELETE /sessions/:fp of a browser that was
// live is a 204 unless another operation of the step ended it, a DELETE /sessions ends every other
// live browser of the user, and neither ever names a generation that had already ended.
//
// Clocks. fakeClock moves Date only (shared by A, B and the test); Redis TTLs run on real time.
// Options: ttl 30 min (default), renewAfter 4 min, rotationGrace 1000 ms. Between steps the app
// clock moves 2 s to 5 min (so renewals are due often; 2 s > the grace, so used tokens and
// retired ids are past their grace); within a step it stands still, so a retired id or a used
// token sent concurrently with its renewal or rotation is always within the grace: a 401 there is
// a real failure, not a timing artifact. One interleaving spends at most 25 min of app time, below
// the 30 min ttl, so no session idles out and the store's list is the model's. A device's TTL in
// the store is relative (ms from the app's now at its last write), so in real time it outlives
// what the app clock says; what a device's secrets are worth is decided from its record, on the
// app clock. A revocation deletes the device, and every session id and token it ever held with it
// (the device keeps their hashes): so per step, invariant 2 tries every session id and every
// token of a generation the step ended, and the final sweep tries them all again.
import { setTimeout as sleep } from 'node:timers/promises'
import fc from 'fast-check'
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import { test, test as tapTest, type Test } from 'tap'
import { hashSecret, secretDevice } from '../lib/crypto.js'
import { MemoryStore, type PowStore } from '../lib/index.js'
import type { Device } from '../lib/lifecycle.js'
import { decodeDevice } from '../lib/devices.js'
import { STORE_METHODS } from '../lib/options.js'
import { buildApp, recordingStore } from './helpers/app.js'
import { fakeClock, type InstalledClock } from './helpers/clock.js'
import { CookieJar } from './helpers/jar.js'
import { createDatabase, pgTest, postgresStore } from './helpers/postgres.js'
import { twoClients } from './helpers/redis.js'
import { mulberry32 } from './helpers/tools.js'

const MINUTE = 60_000
const SESSION = 'pow_session'
const TOKEN = 'pow_persistent_session'
const GRACE = 1000
const RENEW_AFTER = 4 * MINUTE
const FAKE_BUDGET = 25 * MINUTE
const ADVANCES = [2_000, MINUTE, 2 * MINUTE, 5 * MINUTE]

function intEnv (name: string): number | undefined {
  const value = process.env[name]
  if (value === undefined || value === '') return undefined
  const n = Number(value)
  if (!Number.isSafeInteger(n)) throw new Error(`${name} must be an integer`)
  return n
}

const RUNS = intEnv('CONCURRENCY_RUNS') ?? 30
const SEED = intEnv('CONCURRENCY_SEED') ?? (Math.random() * 2 ** 31) | 0
const PATH = process.env.CONCURRENCY_PATH

// ---------------------------------------------------------------------------------------------
// Scenarios.

type Kind = 'me' | 'login' | 'restart' | 'patch' | 'sessions' | 'revokeOne' | 'revokeOthers' | 'logout'

interface OpSpec {
  kind: Kind
  /** browser index (mod the number of browsers) */
  b: number
  /** which candidate to revoke (mod their number) */
  t: number
  /** which user to log in as (mod the number of users) */
  u: number
  onB: boolean
  persistent: boolean
  /** 0: at once, 1: after a setImmediate, 2: after 1 ms, 3: once the previous operation answered */
  wait: number
  /** network latency once the cookies are taken, before the request reaches the instance: see {@link latency} */
  up: number
  /** network latency of the answer, before the browser takes its cookies */
  down: number
}

interface StepSpec { ops: OpSpec[], advance: number }

interface Scenario {
  users: number
  browsers: number
  jitter: number
  start: Array<{ u: number, persistent: boolean, onB: boolean }>
  steps: StepSpec[]
}

const kindArb: fc.Arbitrary<Kind> = fc.oneof(
  { arbitrary: fc.constant<Kind>('me'), weight: 5 },
  { arbitrary: fc.constant<Kind>('login'), weight: 2 },
  { arbitrary: fc.constant<Kind>('restart'), weight: 3 },
  { arbitrary: fc.constant<Kind>('patch'), weight: 2 },
  { arbitrary: fc.constant<Kind>('sessions'), weight: 1 },
  { arbitrary: fc.constant<Kind>('revokeOne'), weight: 2 },
  { arbitrary: fc.constant<Kind>('revokeOthers'), weight: 1 },
  { arbitrary: fc.constant<Kind>('logout'), weight: 1 }
)

const opArb: fc.Arbitrary<OpSpec> = fc.record({
  kind: kindArb,
  b: fc.nat({ max: 3 }),
  t: fc.nat({ max: 7 }),
  u: fc.nat({ max: 1 }),
  onB: fc.boolean(),
  persistent: fc.boolean(),
  wait: fc.nat({ max: 3 }),
  up: fc.nat({ max: 3 }),
  down: fc.nat({ max: 3 })
})

const scenarioArb: fc.Arbitrary<Scenario> = fc.record({
  users: fc.integer({ min: 1, max: 2 }),
  browsers: fc.integer({ min: 2, max: 4 }),
  jitter: fc.integer(),
  start: fc.array(fc.record({ u: fc.nat({ max: 1 }), persistent: fc.boolean(), onB: fc.boolean() }), { minLength: 4, maxLength: 4 }),
  steps: fc.array(fc.record({
    ops: fc.array(opArb, { minLength: 1, maxLength: 6 }),
    advance: fc.constantFrom(...ADVANCES)
  }), { minLength: 4, maxLength: 8 })
})

// ---------------------------------------------------------------------------------------------
// Jitter: a store over the instance's RedisStore that delays some calls, seeded per interleaving.

/** 0: none, 1: a setImmediate, 2: 1 ms, 3: 3 ms. */
async function latency (n: number): Promise<void> {
  if (n === 1) await new Promise((resolve) => setImmediate(resolve))
  else if (n >= 2) await sleep(n === 2 ? 1 : 3)
}

interface Jitter { store: PowStore, reseed: (seed: number) => void }

function jitterStore (inner: PowStore): Jitter {
  let random = mulberry32(1)
  const store: Record<string, unknown> = {}
  for (const method of STORE_METHODS) {
    store[method] = async (...args: unknown[]) => {
      const r = random()
      if (r < 0.2) await null
      else if (r < 0.35) await new Promise((resolve) => setImmediate(resolve))
      else if (r < 0.45) await sleep(r < 0.42 ? 1 : 0)
      return await (inner[method] as (...a: unknown[]) => Promise<unknown>).apply(inner, args)
    }
  }
  return { store: store as unknown as PowStore, reseed: (seed) => { random = mulberry32(seed) } }
}

/** A store over `inner` whose `method` holds its next call, once armed, until `release()`. */
function holdNext (inner: PowStore, method: typeof STORE_METHODS[number]): { store: PowStore, arm: () => void, entered: Promise<void>, release: () => void } {
  const store: Record<string, unknown> = {}
  for (const name of STORE_METHODS) store[name] = (inner[name] as (...a: unknown[]) => Promise<unknown>).bind(inner)
  let armed = false
  let enter!: () => void
  let release!: () => void
  const entered = new Promise<void>((resolve) => { enter = resolve })
  const released = new Promise<void>((resolve) => { release = resolve })
  store[method] = async (...args: unknown[]) => {
    if (armed) {
      armed = false
      enter()
      await released
    }
    return await (inner[method] as (...a: unknown[]) => Promise<unknown>).apply(inner, args)
  }
  return { store: store as unknown as PowStore, arm: () => { armed = true }, entered, release: () => release() }
}

// ---------------------------------------------------------------------------------------------
// The model.

/** One sign-in of one browser: a fingerprint and every cookie value it held. */
interface Gen {
  id: number
  run: number
  browser: number
  userId: number
  fp: string
  sessions: string[]
  tokens: string[]
  revoked: string | null
}

interface Browser {
  index: number
  jar: CookieJar
  /** the live generation, or null when signed out */
  gen: Gen | null
  /** every cookie value already attributed to a generation */
  known: Set<string>
}

type Which = 'A' | 'B'

interface Planned {
  id: string
  kind: Kind
  browser: Browser
  which: Which
  wait: number
  up: number
  down: number
  /** the browser's generation when the step began; null: signed out */
  gen: Gen | null
  userId?: number
  persistent?: boolean
  name?: string
  target?: string
  res?: LightMyRequestResponse
  newGen?: Gen
}

interface World {
  a: FastifyInstance
  b: FastifyInstance
  storeA: PowStore
  storeB: PowStore
  jitterA: Jitter
  jitterB: Jitter
  clock: InstalledClock
  /** fingerprint created by the request with this x-op header */
  created: Map<string, string>
  /** theft alarms (session:reuse, persistent:reuse): [x-op, fingerprint, event] */
  reuse: Array<[string, string, string]>
  /** every revoked generation, for the final sweep */
  revoked: Gen[]
  counters: {
    interleavings: number
    steps: number
    ops: number
    requests: number
    checks: number
    renewals: number
    claims: number
    logins: number
    updates: number
    revocations: number
  }
  genIds: number
  names: number
}

interface Ctx {
  world: World
  run: number
  userIds: number[]
  browsers: Browser[]
  gens: Gen[]
  db: Map<number, string>
  random: () => number
  trace: string[]
  fakeSpent: number
}

class InvariantError extends Error {}

function short (fp: string | undefined): string {
  return fp === undefined ? '?' : fp.slice(0, 6)
}

function genLabel (gen: Gen | null | undefined): string {
  return gen === null || gen === undefined ? 'signed out' : `g${gen.id}(u${gen.userId} fp ${short(gen.fp)})`
}

function fail (ctx: Ctx, message: string): never {
  throw new InvariantError(`${message}\n--- interleaving ${ctx.run} (seed ${SEED}) trace:\n${ctx.trace.join('\n')}`)
}

/** A device as the store returned it (lib/devices.ts decodes it so for every request). */
function storedDevice (fingerprint: string, data: string): Device {
  const device = decodeDevice(data, fingerprint)
  if ((JSON.parse(data) as Partial<Device>).fingerprint !== undefined) throw new Error(`the record stored at fp ${fingerprint} names a fingerprint`)
  return device
}

/** The device a signed session cookie names, and the hash its device keeps of it. */
function sidOf (cookie: string): { bucket: string, fingerprint: string, hash: string } {
  const secret = cookie.split('.')[0] as string
  return { ...secretDevice(secret), hash: hashSecret(secret) }
}

function app (world: World, which: Which): FastifyInstance {
  return which === 'A' ? world.a : world.b
}

async function inject (world: World, which: Which, opts: InjectOptions, cookie: string, opId: string): Promise<LightMyRequestResponse> {
  world.counters.requests++
  const headers: Record<string, string> = { 'x-op': opId }
  if (cookie !== '') headers.cookie = cookie
  return await app(world, which).inject({ ...opts, headers })
}

/** A request of a browser: its cookies at send time, the answer's cookies into its jar. */
async function browse (ctx: Ctx, browser: Browser, which: Which, opts: InjectOptions, opId: string): Promise<LightMyRequestResponse> {
  const res = await inject(ctx.world, which, opts, browser.jar.header(), opId)
  browser.jar.store(res)
  return res
}

/** Cookie values the browser holds that no generation has yet, attributed to `gen`. */
function attribute (browser: Browser, gen: Gen | null): string[] {
  const fresh: string[] = []
  for (const [name, list] of [[SESSION, gen?.sessions], [TOKEN, gen?.tokens]] as const) {
    const value = browser.jar.get(name)
    if (value === undefined || browser.known.has(value)) continue
    browser.known.add(value)
    fresh.push(value)
    list?.push(value)
  }
  return fresh
}

function request (p: Planned, ctx: Ctx): InjectOptions {
  switch (p.kind) {
    case 'login':
      return { method: 'POST', url: '/login', payload: { id: p.userId, name: ctx.db.get(p.userId as number), persistent: p.persistent } }
    case 'patch':
      return { method: 'PATCH', url: '/me', payload: { name: p.name ?? 'nobody' } }
    case 'sessions':
      return { method: 'GET', url: '/sessions' }
    case 'revokeOne':
      return { method: 'DELETE', url: `/sessions/${p.target ?? 'nobody'}` }
    case 'revokeOthers':
      return { method: 'DELETE', url: '/sessions' }
    case 'logout':
      return { method: 'POST', url: '/logout' }
    default:
      return { method: 'GET', url: '/me' }
  }
}

function describe (p: Planned): string {
  let detail = ''
  if (p.kind === 'login') detail = ` as u${p.userId}${p.persistent === true ? ' remember-me' : ''}`
  if (p.kind === 'patch' && p.name !== undefined) detail = ` name=${p.name}`
  if (p.kind === 'revokeOne') detail = ` fp ${short(p.target)}`
  const res = p.res
  let outcome = res === undefined ? 'no answer' : String(res.statusCode)
  if (res !== undefined && res.statusCode < 300) {
    const body = res.body === '' ? {} : res.json()
    if (p.kind === 'revokeOthers') outcome += ` revoked [${(body.revoked as string[]).map(short).join(' ')}]`
    if ((p.kind === 'me' || p.kind === 'restart') && body.metadata !== undefined) outcome += ` fp ${short(body.metadata.fingerprint)} name=${body.user.name}`
    if (p.kind === 'sessions') outcome += ` [${(body.sessions as Array<{ fingerprint: string, current: boolean }>).map((s) => short(s.fingerprint) + (s.current ? '*' : '')).join(' ')}]`
    if (p.newGen !== undefined) outcome += ` ${genLabel(p.newGen)}`
    const set = (res.cookies as Array<{ name: string, value: string }>).map((c) => `${c.name === SESSION ? 's' : 't'}${c.value === '' ? '-' : '+'}`)
    if (set.length > 0) outcome += ` cookies ${set.join('')}`
  }
  return `  ${p.id} ${p.which} b${p.browser.index} [${genLabel(p.gen)}] ${p.kind}${detail} (wait ${p.wait}, up ${p.up}, down ${p.down}) -> ${outcome}`
}

function liveGens (ctx: Ctx, userId: number): Gen[] {
  return ctx.browsers.map((b) => b.gen).filter((g): g is Gen => g !== null && g.userId === userId)
}

function sameSet (a: string[], b: string[]): boolean {
  const x = [...a].sort()
  const y = [...b].sort()
  return x.length === y.length && x.every((v, i) => v === y[i])
}

// ---------------------------------------------------------------------------------------------
// One step: plan, send concurrently, then check against the model.

async function runStep (ctx: Ctx, spec: StepSpec, step: number): Promise<void> {
  const { world } = ctx
  world.counters.steps++
  const liveAtStart = new Map<Gen, Browser>()
  for (const b of ctx.browsers) if (b.gen !== null) liveAtStart.set(b.gen, b)
  const nameBefore = new Map(ctx.db)

  // Plan.
  const planned: Planned[] = []
  const busy = new Set<Browser>()
  const exclusive = new Set<Browser>()
  const patched = new Set<number>()
  const restart = new Set<Browser>()
  const loginUsers = new Set<number>()
  spec.ops.forEach((op, i) => {
    const browser = ctx.browsers[op.b % ctx.browsers.length] as Browser
    if (exclusive.has(browser)) return
    const gen = browser.gen
    let kind = op.kind
    const userId = ctx.userIds[op.u % ctx.userIds.length] as number
    // A login or logout has its browser to itself; a user who logs in is not renamed in the
    // same step (which name the login stores would be a race of the application's database).
    if ((kind === 'login' || kind === 'logout') && busy.has(browser)) kind = 'me'
    if (kind === 'login' && patched.has(userId)) kind = 'me'
    if (kind === 'login' || kind === 'logout') exclusive.add(browser)
    busy.add(browser)
    const p: Planned = { id: `${ctx.run}.${step}.${i}`, kind, browser, which: op.onB ? 'B' : 'A', wait: op.wait, up: op.up, down: op.down, gen }
    if (kind === 'login') {
      p.userId = userId
      p.persistent = op.persistent
      loginUsers.add(userId)
    } else if (kind === 'restart') {
      if (browser.jar.get(TOKEN) === undefined) p.kind = 'me'
      else restart.add(browser)
    } else if (kind === 'patch' && gen !== null) {
      if (patched.has(gen.userId) || loginUsers.has(gen.userId)) {
        p.kind = 'me'
      } else {
        patched.add(gen.userId)
        p.name = `u${gen.userId}-n${++world.names}`
      }
    } else if (kind === 'revokeOne' && gen !== null) {
      const mine = [...liveAtStart.keys()].filter((g) => g.userId === gen.userId && g !== gen)
      const ended = ctx.gens.filter((g) => g.revoked !== null && g.userId === gen.userId).slice(-1)
      const foreign = [...liveAtStart.keys()].filter((g) => g.userId !== gen.userId).slice(0, 1)
      const candidates = [...mine, ...ended, ...foreign]
      if (candidates.length === 0) p.kind = 'sessions'
      else p.target = (candidates[op.t % candidates.length] as Gen).fp
    }
    planned.push(p)
  })
  // A browser restart: its session cookie is gone before any of its requests of the step.
  for (const browser of restart) browser.jar.delete(SESSION)

  // Send, concurrently.
  world.counters.ops += planned.length
  const sends: Array<Promise<void>> = []
  let previous: Promise<unknown> = Promise.resolve()
  for (const p of planned) {
    const gate = p.wait === 0
      ? Promise.resolve()
      : p.wait === 1
        ? new Promise<void>((resolve) => setImmediate(resolve))
        : p.wait === 2 ? sleep(1) : previous.catch(() => {})
    const sent = gate.then(async () => {
      // The cookies are taken when the request is sent; it and its answer then spend a while on
      // the network, so other requests of the browser may be sent, or answered, meanwhile.
      const cookie = p.browser.jar.header()
      await latency(p.up)
      const res = await inject(world, p.which, request(p, ctx), cookie, p.id)
      await latency(p.down)
      p.browser.jar.store(res)
      p.res = res
    })
    sends.push(sent)
    previous = sent
  }
  await Promise.all(sends)

  const res = (p: Planned): LightMyRequestResponse => p.res as LightMyRequestResponse
  const body = (p: Planned): any => res(p).body === '' ? {} : res(p).json()
  const genByFp = (fp: string): Gen | undefined => ctx.gens.find((g) => g.fp === fp)
  const advance = ctx.fakeSpent + spec.advance > FAKE_BUDGET ? 2_000 : spec.advance

  // New generations (logins), then what the step ended, from the answers. A login answers 200,
  // whatever races it: it is one commit (two when the browser was signed in as another user).
  for (const p of planned) {
    if (p.kind !== 'login') continue
    const status = res(p).statusCode
    const fp = world.created.get(p.id)
    if (status !== 200) { ctx.trace.push(...planned.map(describe)); fail(ctx, `login ${p.id} answered ${status} ${res(p).body}`) }
    if (fp === undefined) { ctx.trace.push(...planned.map(describe)); fail(ctx, `login ${p.id}: no session:created event`) }
    world.counters.logins++
    p.newGen = { id: ++world.genIds, run: ctx.run, browser: p.browser.index, userId: p.userId as number, fp, sessions: [], tokens: [], revoked: null }
    ctx.gens.push(p.newGen)
  }
  // The user database: a PATCH that was answered 200 renamed the user.
  const patchedName = new Map<number, string>()
  for (const p of planned) {
    if (p.kind === 'patch' && p.gen !== null) {
      patchedName.set(p.gen.userId, p.name as string)
      if (res(p).statusCode === 200) {
        ctx.db.set(p.gen.userId, p.name as string)
        world.counters.updates++
      }
    }
  }
  ctx.trace.push(`step ${step} (${planned.length} ops; then app clock +${advance / 1000} s)`, ...planned.map(describe))

  const ended = new Map<Gen, string>()
  const problems: string[] = []
  for (const p of planned) {
    const gen = p.gen
    if (gen === null) continue
    const status = res(p).statusCode
    if (p.kind === 'logout' && status === 204) ended.set(gen, `logout ${p.id}`)
    if (p.kind === 'login') ended.set(gen, `login again ${p.id}`)
    if (p.kind === 'revokeOne' && status === 204) {
      const target = genByFp(p.target as string) as Gen
      if (target.userId !== gen.userId) problems.push(`${p.id}: DELETE /sessions/:fp of another user's browser answered 204`)
      else if (!liveAtStart.has(target)) problems.push(`${p.id}: DELETE /sessions/:fp of ${genLabel(target)}, ended before (${target.revoked}), answered 204: it still had a session or token`)
      ended.set(target, `deleteSession ${p.id}`)
    }
    if (p.kind === 'revokeOthers' && status === 200) {
      for (const fp of body(p).revoked as string[]) {
        const target = genByFp(fp)
        if (target === undefined || target.userId !== gen.userId || target === gen) {
          problems.push(`${p.id}: DELETE /sessions named fingerprint ${short(fp)}, not another browser of the user`)
          continue
        }
        if (!liveAtStart.has(target) && !planned.some((q) => q.newGen === target)) {
          problems.push(`${p.id}: DELETE /sessions named ${genLabel(target)}, ended before (${target.revoked}): it still had a session or token`)
        }
        ended.set(target, `deleteOtherSessions ${p.id}`)
      }
    }
  }
  for (const p of planned) {
    const gen = p.gen
    if (gen === null) continue
    const status = res(p).statusCode
    if (p.kind === 'revokeOne' && status === 404) {
      const target = genByFp(p.target as string) as Gen
      if (liveAtStart.has(target) && target.userId === gen.userId && !ended.has(target)) {
        problems.push(`${p.id}: DELETE /sessions/:fp of live ${genLabel(target)} answered 404 and nothing else ended it`)
      }
    }
    if (p.kind === 'revokeOthers' && status === 200) {
      for (const [other] of liveAtStart) {
        if (other.userId === gen.userId && other !== gen && !ended.has(other)) {
          problems.push(`${p.id}: DELETE /sessions left ${genLabel(other)} signed in`)
        }
      }
    }
  }
  if (problems.length > 0) fail(ctx, problems.join('\n'))

  // Apply to the model; attribute the cookies the step handed out.
  for (const p of planned) if (p.kind === 'login') p.browser.gen = p.newGen ?? null
  for (const [gen, reason] of ended) {
    gen.revoked = reason
    world.revoked.push(gen)
    world.counters.revocations++
    for (const b of ctx.browsers) if (b.gen === gen) b.gen = null
  }
  for (const b of busy) {
    const login = planned.find((p) => p.browser === b && p.newGen !== undefined)
    const startGen = planned.find((p) => p.browser === b)?.gen ?? null
    const fresh = attribute(b, login?.newGen ?? startGen)
    if (login === undefined && startGen === null && fresh.length > 0) {
      fail(ctx, `b${b.index}, signed out, was handed a new cookie without logging in (invariant 2)`)
    }
  }

  // The answers (invariants 2, 4, 5 and 1 on GET /sessions).
  for (const p of planned) {
    const status = res(p).statusCode
    const where = `${p.id} (${p.which}, b${p.browser.index} ${p.kind}, ${genLabel(p.gen)})`
    if (status >= 500) fail(ctx, `${where}: ${status} ${res(p).body}`)
    if (p.kind === 'login') continue
    if (p.gen === null) {
      const expected = p.kind === 'logout' ? 204 : 401
      if (status !== expected) fail(ctx, `invariant 2: ${where}: a signed-out browser got ${status}, not ${expected}`)
      continue
    }
    if (ended.has(p.gen)) {
      if (![200, 204, 401, 404].includes(status)) fail(ctx, `${where}: ${status} while it was being signed out`)
      continue
    }
    // Signed in for the whole step.
    if (status === 401) fail(ctx, `invariant 4: ${where}: a signed-in browser got a 401`)
    const ok = p.kind === 'logout' ? [204] : p.kind === 'revokeOne' ? [204, 404] : [200]
    if (!ok.includes(status)) fail(ctx, `${where}: ${status} ${res(p).body}`)
    const userId = p.gen.userId
    if (p.kind === 'me' || p.kind === 'restart') {
      const { user, metadata } = body(p)
      if (metadata?.fingerprint !== p.gen.fp) fail(ctx, `${where}: GET /me answered as fingerprint ${short(metadata?.fingerprint)}`)
      const names = [nameBefore.get(userId), patchedName.get(userId) ?? nameBefore.get(userId)]
      if (user?.id !== userId || !names.includes(user?.name)) {
        fail(ctx, `invariant 5: ${where}: GET /me answered ${JSON.stringify(user)}, expected name ${[...new Set(names)].join(' or ')}`)
      }
    }
    if (p.kind === 'patch' && body(p).user?.name !== p.name) fail(ctx, `${where}: PATCH answered ${res(p).body}`)
    if (p.kind === 'sessions') {
      const listed = body(p).sessions as Array<{ fingerprint: string, current: boolean }>
      const fps = listed.map((s) => s.fingerprint)
      if (new Set(fps).size !== fps.length) fail(ctx, `invariant 1: ${where}: GET /sessions lists a fingerprint twice`)
      for (const s of listed) {
        const g = genByFp(s.fingerprint)
        const allowed = g !== undefined && g.userId === userId && (liveAtStart.has(g) || planned.some((q) => q.newGen === g))
        if (!allowed) fail(ctx, `invariant 3: ${where}: GET /sessions lists ${short(s.fingerprint)}, not a live browser of the user`)
        if (s.current !== (s.fingerprint === p.gen.fp)) fail(ctx, `${where}: GET /sessions marks current wrongly`)
      }
      for (const [g] of liveAtStart) {
        if (g.userId === userId && !ended.has(g) && !fps.includes(g.fp)) fail(ctx, `invariant 3: ${where}: GET /sessions misses live ${genLabel(g)}`)
      }
    }
  }
  if (world.reuse.length > 0) {
    fail(ctx, `invariant 6: an honest browser was taken for a thief: ${world.reuse.map(([op, fp, kind]) => `${kind} on ${op} fp ${short(fp)}`).join(', ')}`)
  }

  await checkState(ctx, planned, [...ended.keys()], step)
  ctx.fakeSpent += advance
  world.clock.tick(advance)
}

/** The checks after a step that do not depend on its answers: the store, GET /sessions, revoked cookies. */
async function checkState (ctx: Ctx, planned: Planned[], endedNow: Gen[], step: number | 'end'): Promise<void> {
  const { world } = ctx
  const store = ctx.random() < 0.5 ? world.storeA : world.storeB
  const which = (): Which => ctx.random() < 0.5 ? 'A' : 'B'
  const all = async (tasks: Array<Promise<void>>): Promise<void> => { await Promise.all(tasks) }

  // Invariants 1 and 3 in the store; 4 and 5 for each live browser's session cookie.
  await all(ctx.userIds.map(async (userId) => {
    world.counters.checks++
    const devices = await store.list(String(userId))
    const listed = devices.map((d) => d.fingerprint)
    if (new Set(listed).size !== listed.length) fail(ctx, `invariant 1: the store lists a fingerprint of u${userId} twice: ${listed.map(short).join(' ')}`)
    for (const stored of devices) {
      const device = storedDevice(stored.fingerprint, stored.data)
      if (device.userKey !== String(userId)) fail(ctx, `invariant 1: the device stored as fp ${short(stored.fingerprint)} of u${userId} is a device of u${device.userKey}`)
      if (device.session === null && device.token === null) fail(ctx, `invariant 1: the device of fp ${short(stored.fingerprint)} of u${userId} is stored with neither a session id nor a token`)
    }
    const expected = liveGens(ctx, userId).map((g) => g.fp)
    if (!sameSet(listed, expected)) {
      fail(ctx, `invariant 3: after step ${step} the store lists [${listed.map(short).join(' ')}] for u${userId}, the model [${expected.map(short).join(' ')}]`)
    }
  }))
  await all(ctx.browsers.map(async (b) => {
    const gen = b.gen
    if (gen === null) return
    world.counters.checks++
    const cookie = b.jar.get(SESSION)
    if (cookie === undefined) fail(ctx, `invariant 4: after step ${step} b${b.index} (${genLabel(gen)}) holds no session cookie`)
    const sid = sidOf(cookie)
    const found = await store.read(sid.bucket, sid.fingerprint)
    const device = found === null ? null : storedDevice(sid.fingerprint, found.data)
    const where = `invariant 4: after step ${step} the session cookie of b${b.index} (${genLabel(gen)})`
    if (found === null || device === null) return fail(ctx, `${where} names no stored device (fp ${short(sid.fingerprint)})`)
    if (device.fingerprint !== gen.fp) fail(ctx, `${where} names the device of fp ${short(device.fingerprint)}`)
    if (device.session?.hash !== sid.hash) {
      const retired = device.retired.find((r) => r.hash === sid.hash)
      fail(ctx, `${where} is not its device's current session id but ${retired === undefined ? 'unknown to it' : `a retired one (${JSON.stringify(retired)})`}`)
    }
    if (device.session.expiresAt <= Date.now()) fail(ctx, `${where} is its device's current session id, expired`)
    const name = (JSON.parse(found.user) as { name?: string }).name
    if (name !== ctx.db.get(gen.userId)) fail(ctx, `invariant 5: after step ${step} the session of b${b.index} has user name ${name}, not ${ctx.db.get(gen.userId)}`)
  }))

  // Invariants 1 and 3 over HTTP: a browser of each user asks GET /sessions. During the run only
  // browsers that sent a request in the step ask (they are renewed already, so the check does not
  // take their renewal away from the concurrent requests); at the end every live browser does.
  const asks: Array<[Browser, Which]> = []
  for (const userId of ctx.userIds) {
    const askers = ctx.browsers.filter((b) => b.gen?.userId === userId && (step === 'end' || planned.some((p) => p.browser === b)))
    for (const asker of step === 'end' ? askers : askers.slice(0, 1)) asks.push([asker, which()])
  }
  await all(asks.map(async ([asker, on]) => {
    const gen = asker.gen as Gen
    const where = `after step ${step}: GET /sessions of b${asker.index} (${genLabel(gen)})`
    const res = await browse(ctx, asker, on, { method: 'GET', url: '/sessions' }, `${ctx.run}.${step}.check`)
    world.counters.checks++
    if (res.statusCode !== 200) fail(ctx, `invariant 4: ${where} on ${on} answered ${res.statusCode}`)
    const listed = res.json().sessions as Array<{ fingerprint: string, current: boolean }>
    const fps = listed.map((s) => s.fingerprint)
    if (new Set(fps).size !== fps.length) fail(ctx, `invariant 1: ${where} lists a fingerprint twice`)
    const expected = liveGens(ctx, gen.userId).map((g) => g.fp)
    if (!sameSet(fps, expected)) fail(ctx, `invariant 3: ${where} lists [${fps.map(short).join(' ')}], the model [${expected.map(short).join(' ')}]`)
    if (listed.some((s) => s.current !== (s.fingerprint === gen.fp))) fail(ctx, `${where} marks current wrongly`)
    attribute(asker, gen)
  }))
  if (step === 'end') {
    // Invariants 4 and 5 once more, on both instances, one request after the other per browser.
    await all(ctx.browsers.map(async (b) => {
      const gen = b.gen
      if (gen === null) return
      for (const on of ['A', 'B'] as const) {
        const res = await browse(ctx, b, on, { method: 'GET', url: '/me' }, `${ctx.run}.end.me`)
        world.counters.checks++
        if (res.statusCode !== 200) fail(ctx, `invariant 4: at the end, GET /me of b${b.index} (${genLabel(gen)}) on ${on} answered ${res.statusCode}`)
        const { user, metadata } = res.json()
        if (metadata.fingerprint !== gen.fp) fail(ctx, `at the end, GET /me of b${b.index} (${genLabel(gen)}) on ${on} answers as fp ${short(metadata.fingerprint)}`)
        if (user.name !== ctx.db.get(gen.userId)) fail(ctx, `invariant 5: at the end, b${b.index} on ${on} sees name ${user.name}, not ${ctx.db.get(gen.userId)}`)
        attribute(b, gen)
      }
    }))
  }

  // Invariant 2: the generations ended in this step, every cookie combination on A and B; one
  // older ended generation of the interleaving, one combination on one instance.
  const probe = async (gen: Gen, cookie: string, on: Which, label: string): Promise<void> => {
    const res = await inject(world, on, { method: 'GET', url: '/me' }, cookie, `${ctx.run}.${step}.revoked`)
    world.counters.checks++
    if (res.statusCode !== 401) {
      fail(ctx, `invariant 2: after step ${step}, ${genLabel(gen)} of b${gen.browser}, ended by ${gen.revoked}, authenticates with ${label} on ${on}: ${res.statusCode} ${res.body}`)
    }
  }
  const combos = (gen: Gen): Array<[string, string]> => {
    const last = gen.sessions.at(-1)
    const list: Array<[string, string]> = []
    const token = gen.tokens.at(-1)
    gen.sessions.forEach((value, i) => list.push([`${SESSION}=${value}`, `its session cookie #${i + 1} of ${gen.sessions.length}`]))
    if (last !== undefined && token !== undefined) list.push([`${SESSION}=${last}; ${TOKEN}=${token}`, 'its last session cookie and remember-me token'])
    gen.tokens.forEach((value, i) => list.push([`${TOKEN}=${value}`, `its remember-me token #${i + 1} of ${gen.tokens.length}`]))
    return list
  }
  const probes: Array<[Gen, string, Which, string]> = []
  for (const gen of endedNow) {
    for (const [cookie, label] of combos(gen)) for (const on of ['A', 'B'] as const) probes.push([gen, cookie, on, label])
  }
  const older = ctx.gens.filter((g) => g.revoked !== null && !endedNow.includes(g))
  if (older.length > 0) {
    const gen = older[Math.floor(ctx.random() * older.length)] as Gen
    const list = combos(gen)
    const pick = list[Math.floor(ctx.random() * list.length)]
    if (pick !== undefined) probes.push([gen, pick[0], which(), pick[1]])
  }
  await all(probes.map(async ([gen, cookie, on, label]) => { await probe(gen, cookie, on, label) }))
}

async function runScenario (world: World, sc: Scenario): Promise<void> {
  const run = ++world.counters.interleavings
  world.jitterA.reseed(sc.jitter)
  world.jitterB.reseed(sc.jitter ^ 0x5bd1e995)
  world.reuse.length = 0
  const userIds = Array.from({ length: sc.users }, (_, u) => run * 10 + u + 1)
  const ctx: Ctx = {
    world,
    run,
    userIds,
    browsers: Array.from({ length: sc.browsers }, (_, index) => ({ index, jar: new CookieJar(world.a), gen: null, known: new Set<string>() })),
    gens: [],
    db: new Map(userIds.map((id) => [id, `user${id}`])),
    random: mulberry32(sc.jitter ^ 0x2545f491),
    trace: [`users ${userIds.map((id) => `u${id}`).join(' ')}, ${sc.browsers} browsers`],
    fakeSpent: 0
  }
  const first: StepSpec = {
    ops: sc.start.slice(0, sc.browsers).map((s, b) => ({ kind: 'login', b, t: 0, u: s.u, onB: s.onB, persistent: s.persistent, wait: 0, up: 0, down: 0 })),
    advance: 2_000
  }
  await runStep(ctx, first, 0)
  for (const [i, step] of sc.steps.entries()) await runStep(ctx, step, i + 1)
  await checkState(ctx, [], [], 'end')
}

// ---------------------------------------------------------------------------------------------

/** Two stores on one backend, each with its own connection: what two app instances have. */
type TwoStores = (t: Test) => Promise<{ storeA: PowStore, storeB: PowStore }>

const backends: Array<[string, TwoStores, (name: string, fn: (t: Test) => Promise<void>) => void]> = [
  ['one Redis', twoClients, (name, fn) => { test(name, { timeout: 300_000 }, fn) }],
  ['one PostgreSQL database', async (t) => {
    const db = await createDatabase(t)
    return { storeA: await postgresStore(db), storeB: await postgresStore(db) }
  }, (name, fn) => { pgTest(name, { timeout: 300_000 }, fn) }]
]

for (const [backend, makeStores, define] of backends) {
  define(`randomized interleavings over two instances on ${backend} keep the session invariants`, async (t) => {
    const started = performance.now()
    const clock = fakeClock(t, Date.now())
    const { storeA, storeB } = await makeStores(t)
    const jitterA = jitterStore(storeA)
    const jitterB = jitterStore(storeB)
    const options = { session: { renewAfter: RENEW_AFTER, rotationGrace: GRACE } }
    const a = await buildApp(t, { ...options, store: jitterA.store })
    const b = await buildApp(t, { ...options, store: jitterB.store })

    const world: World = {
      a,
      b,
      storeA,
      storeB,
      jitterA,
      jitterB,
      clock,
      created: new Map(),
      reuse: [],
      revoked: [],
      counters: { interleavings: 0, steps: 0, ops: 0, requests: 0, checks: 0, renewals: 0, claims: 0, logins: 0, updates: 0, revocations: 0 },
      genIds: 0,
      names: 0
    }
    const opOf = (request: { headers: Record<string, unknown> } | undefined): string => String(request?.headers['x-op'] ?? '')
    for (const instance of [a, b]) {
      instance.pow.on('session:created', (event) => { world.created.set(opOf(event.request), event.fingerprint) })
      instance.pow.on('session:renewed', () => { world.counters.renewals++ })
      instance.pow.on('persistent:used', () => { world.counters.claims++ })
      for (const kind of ['session:reuse', 'persistent:reuse'] as const) {
        instance.pow.on(kind, (event) => { world.reuse.push([opOf(event.request), event.fingerprint, kind]) })
      }
    }
    t.comment(`concurrency: seed ${SEED}${PATH === undefined ? '' : ` path ${PATH}`} (replay: CONCURRENCY_SEED=${SEED})`)

    await fc.assert(fc.asyncProperty(scenarioArb, async (sc) => { await runScenario(world, sc) }), {
      numRuns: RUNS,
      seed: SEED,
      ...(PATH === undefined ? {} : { path: PATH })
    })

    // Invariant 2 for every cookie value of every ended generation, once more after the last
    // interleaving: nothing written since (a late write of a racing request) brought a device back.
    const failures: string[] = []
    const probes: Array<() => Promise<void>> = []
    for (const gen of world.revoked) {
      const values = [...gen.sessions.map((v) => `${SESSION}=${v}`), ...gen.tokens.map((v) => `${TOKEN}=${v}`)]
      for (const cookie of values) {
        for (const on of ['A', 'B'] as const) {
          probes.push(async () => {
            const res = await inject(world, on, { method: 'GET', url: '/me' }, cookie, 'sweep')
            world.counters.checks++
            if (res.statusCode !== 401) {
              failures.push(`interleaving ${gen.run}: ${genLabel(gen)} of b${gen.browser}, ended by ${gen.revoked}, authenticates on ${on} with ${cookie.startsWith(SESSION) ? 'a session id' : 'a remember-me token'} it held: ${res.statusCode}`)
            }
          })
        }
      }
    }
    for (let i = 0; i < probes.length; i += 64) await Promise.all(probes.slice(i, i + 64).map(async (probe) => { await probe() }))
    t.same(failures, [], `no ended generation authenticates again (${probes.length} cookies tried after the grace)`)

    const c = world.counters
    const seconds = ((performance.now() - started) / 1000).toFixed(1)
    t.comment(`concurrency: ${c.interleavings} interleavings, ${c.steps} steps, ${c.ops} concurrent operations, ${c.requests} requests ` +
    `(${c.logins} logins, ${c.updates} updates, ${c.renewals} renewals, ${c.claims} remember-me sign-ins, ${c.revocations} browsers signed out or revoked), ` +
    `${c.checks} invariant checks, ${seconds} s`)
    t.ok(c.renewals > 0 && c.claims > 0 && c.revocations > 0, 'renewals, remember-me sign-ins and revocations all happened')
  })
}

// ---------------------------------------------------------------------------------------------
// The races the randomized test runs by chance, each at its exact point: instance A has read the
// device and decided, its commit is held; instance B writes the device meanwhile; then A's commit
// runs under the version A read, finds the device moved on, writes nothing, and A reads and
// decides again. On one MemoryStore shared by both instances, and on two clients of one Redis.

const pairs: Array<[string, (t: Test) => Promise<{ a: PowStore, b: PowStore }>]> = [
  ['one MemoryStore', async () => {
    const store = new MemoryStore()
    return { a: store, b: store }
  }],
  ['one Redis', async (t) => {
    const { storeA, storeB } = await twoClients(t)
    return { a: storeA, b: storeB }
  }],
  ['one PostgreSQL database', async (t) => {
    const db = await createDatabase(t)
    return { a: await postgresStore(db), b: await postgresStore(db) }
  }]
]

interface Race {
  a: FastifyInstance
  b: FastifyInstance
  /** The store calls of instance A, once the held call has gone through. */
  callsOnA: string[]
  held: ReturnType<typeof holdNext>
  /** The store of B, to inspect the devices. */
  store: PowStore
  clock: InstalledClock
  /** Theft alarms of both instances: there must be none. */
  alarms: string[]
}

async function race (t: Test, make: (t: Test) => Promise<{ a: PowStore, b: PowStore }>): Promise<Race> {
  const clock = fakeClock(t, Date.now())
  const stores = await make(t)
  const recorded = recordingStore(stores.a)
  const held = holdNext(recorded, 'commit')
  const options = { session: { renewAfter: RENEW_AFTER, rotationGrace: GRACE } }
  // POST /remember: a remember-me token for the signed-in browser (powPersistentSession.create on its device).
  const remember = (app: FastifyInstance): void => {
    app.post('/remember', async (request, reply) => {
      if (request.powSession.user === null) return await reply.code(401).send()
      await request.powPersistentSession?.create(request.powSession.user)
      return await reply.code(204).send()
    })
  }
  const a = await buildApp(t, { ...options, store: held.store }, remember)
  const b = await buildApp(t, { ...options, store: stores.b }, remember)
  const alarms: string[] = []
  for (const app of [a, b]) {
    for (const kind of ['session:reuse', 'persistent:reuse'] as const) app.pow.on(kind, () => alarms.push(kind))
  }
  return { a, b, callsOnA: recorded.calls, held, store: stores.b, clock, alarms }
}

/** The device a session or remember-me cookie names, as stored, or null. */
async function deviceOf (store: PowStore, cookie: string): Promise<Device | null> {
  const { bucket, fingerprint } = sidOf(cookie)
  const stored = await store.read(bucket, fingerprint)
  return stored === null ? null : storedDevice(fingerprint, stored.data)
}

const setCookies = (res: LightMyRequestResponse): Map<string, string> =>
  new Map((res.cookies as Array<{ name: string, value: string }>).map((c) => [c.name, c.value]))

for (const [name, make] of pairs) {
  // The PostgreSQL pair skips (loudly) without a server, as every PostgreSQL test does.
  const test = name.includes('PostgreSQL') ? (title: string, fn: (t: Test) => Promise<void>) => { pgTest(title, {}, fn) } : tapTest

  test(`${name}: two instances renewing one session id at once leave one current id, and neither request is a 401`, async (t) => {
    const { a, b, callsOnA, held, store, clock, alarms } = await race(t, make)
    const jar = new CookieJar(a)
    t.equal((await jar.request({ method: 'POST', url: '/login', payload: { id: 1 } })).statusCode, 200)
    const old = jar.get(SESSION) as string
    const fingerprint = (await jar.request('/me')).json().metadata.fingerprint
    clock.tick(RENEW_AFTER + 1)

    held.arm()
    callsOnA.length = 0
    const onA = a.inject({ url: '/me', headers: { cookie: `${SESSION}=${old}` } })
    await held.entered // A read the device and decided to renew; its commit waits
    const onB = await b.inject({ url: '/me', headers: { cookie: `${SESSION}=${old}` } })
    held.release()
    const answerA = await onA

    t.equal(onB.statusCode, 200, 'B renews')
    const renewed = setCookies(onB).get(SESSION)
    t.ok(renewed !== undefined && renewed !== '' && renewed !== old, 'with a new session id')
    t.equal(answerA.statusCode, 200, 'A, which lost the race, is signed in too')
    t.equal(answerA.json().metadata.fingerprint, fingerprint, 'as the same device')
    t.same([...setCookies(answerA).keys()], [], 'without a cookie: its id is retired, within the grace')
    t.same(callsOnA, ['read', 'commit', 'read'], 'A: its commit wrote nothing (the version moved), so it read again and wrote no more')

    const device = await deviceOf(store, old) as Device
    t.equal(device.session?.hash, sidOf(renewed as string).hash, 'the device\'s one current id is the one B issued')
    t.same(device.retired.filter((r) => r.hash === hashSecret(old.split('.')[0] as string)).map((r) => r.kind), ['session'], 'the old id retired once')
    t.equal(device.retired.length, 1, 'and nothing else retired: A issued no id')
    jar.store(onB)
    const claim = await jar.request('/me')
    t.equal(claim.statusCode, 200, 'the new id works')
    t.same([...setCookies(claim).keys()], [], 'and claims the device without another cookie')
    t.same(alarms, [], 'no theft alarm')
  })

  test(`${name}: two instances signing in with one remember-me token at once make one rotation; the other request is signed in for itself only`, async (t) => {
    const { a, b, callsOnA, held, store, alarms } = await race(t, make)
    const jar = new CookieJar(a)
    t.equal((await jar.request({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })).statusCode, 200)
    const token = jar.get(TOKEN) as string
    const fingerprint = (await jar.request('/me')).json().metadata.fingerprint
    const restarted = `${TOKEN}=${token}` // a browser restart: the session cookie is gone

    held.arm()
    callsOnA.length = 0
    const onA = a.inject({ url: '/me', headers: { cookie: restarted } })
    await held.entered // A read the device and decided to rotate its token; its commit waits
    const onB = await b.inject({ url: '/me', headers: { cookie: restarted } })
    held.release()
    const answerA = await onA

    t.equal(onB.statusCode, 200, 'B rotates')
    const cookiesB = setCookies(onB)
    t.ok(cookiesB.get(SESSION), 'with a new session id')
    t.ok(cookiesB.get(TOKEN) !== undefined && cookiesB.get(TOKEN) !== '' && cookiesB.get(TOKEN) !== token, 'and a new remember-me token')
    t.equal(answerA.statusCode, 200, 'A, which lost the race, is signed in')
    t.equal(answerA.json().metadata.fingerprint, fingerprint, 'as the same device')
    t.same([...setCookies(answerA).keys()], [], 'for this request only: no cookie (the token was used within the grace)')
    t.same(callsOnA, ['read', 'commit', 'read'], 'A: its commit wrote nothing (the version moved), so it read again and wrote no more')

    const device = await deviceOf(store, token) as Device
    t.equal(device.token?.hash, sidOf(cookiesB.get(TOKEN) as string).hash, 'the device\'s one current token is the one B issued')
    t.equal(device.session?.hash, sidOf(cookiesB.get(SESSION) as string).hash, 'and so is its current session id')
    t.same(device.retired.filter((r) => r.kind === 'token').map((r) => r.hash), [hashSecret(token.split('.')[0] as string)], 'one token used: the old one')
    jar.delete(SESSION)
    jar.store(onB)
    t.equal((await jar.request('/me')).statusCode, 200, 'the rotation\'s session id works')
    t.same(alarms, [], 'no theft alarm')
  })

  test(`${name}: a renewal that races a revocation on the other instance finds no device: anonymous, and the device stays gone`, async (t) => {
    const { a, b, callsOnA, held, store, clock, alarms } = await race(t, make)
    const laptop = new CookieJar(a)
    t.equal((await laptop.request({ method: 'POST', url: '/login', payload: { id: 1, persistent: true } })).statusCode, 200)
    const laptopFp = (await laptop.request('/me')).json().metadata.fingerprint
    const phone = new CookieJar(b)
    t.equal((await phone.request({ method: 'POST', url: '/login', payload: { id: 1 } })).statusCode, 200)
    const cookie = laptop.get(SESSION) as string
    const token = laptop.get(TOKEN) as string
    clock.tick(RENEW_AFTER + 1)

    held.arm()
    callsOnA.length = 0
    const renewal = laptop.request('/me')
    await held.entered // A read the laptop's device and decided to renew it; its commit waits
    const revoke = await phone.request({ method: 'DELETE', url: '/sessions' })
    t.same(revoke.json(), { revoked: [laptopFp] }, 'B: DELETE /sessions ends the laptop')
    held.release()
    const answer = await renewal

    t.equal(answer.statusCode, 401, 'A: the renewal finds no device: anonymous')
    t.same([...setCookies(answer)], [[TOKEN, '']], 'it issues no session id, and clears the remember-me cookie, whose device is gone too')
    t.same(callsOnA, ['read', 'commit', 'read', 'read'], 'A: its commit wrote nothing (the device was gone), so it read again; then the token\'s read, no device either')
    t.equal(await deviceOf(store, cookie), null, 'the device was not written back')
    t.equal((await laptop.request('/me')).statusCode, 401, 'the laptop stays signed out')
    const tokenOnly = new CookieJar(b)
    tokenOnly.set(TOKEN, token)
    t.equal((await tokenOnly.request('/me')).statusCode, 401, 'B: its remember-me token went with it')
    const sessions = (await phone.request('/sessions')).json().sessions as Array<{ fingerprint: string }>
    t.notOk(sessions.some((s) => s.fingerprint === laptopFp), 'the revoked fingerprint is not listed again')
    t.same(alarms, [], 'no theft alarm')
  })

  // The race the randomized test once found for a login with remember-me (then two writes: the
  // session, then the token, and a DELETE /sessions in between), where it still exists: a token
  // made for a device that is being revoked.
  test(`${name}: a remember-me token made for a device that a DELETE /sessions on the other instance revokes meanwhile is not stored`, async (t) => {
    const { a, b, callsOnA, held, store, alarms } = await race(t, make)
    const phone = new CookieJar(b)
    t.equal((await phone.request({ method: 'POST', url: '/login', payload: { id: 1 } })).statusCode, 200, 'B: the phone signs in')
    const laptop = new CookieJar(a)
    t.equal((await laptop.request({ method: 'POST', url: '/login', payload: { id: 1 } })).statusCode, 200, 'A: the laptop signs in')
    const laptopFp = (await laptop.request('/me')).json().metadata.fingerprint
    const cookie = laptop.get(SESSION) as string

    held.arm()
    callsOnA.length = 0
    const remember = laptop.request({ method: 'POST', url: '/remember' })
    await held.entered // A read the laptop's device and made it a token; its commit waits
    const revoke = await phone.request({ method: 'DELETE', url: '/sessions' })
    t.same(revoke.json(), { revoked: [laptopFp] }, 'B: DELETE /sessions ends the laptop')
    held.release()
    const answer = await remember

    t.equal(answer.statusCode, 401, 'A: the remember-me request answers 401: it lost the race with the revocation')
    t.equal(answer.json().code, 'POW_ERR_SIGN_IN_REVOKED')
    t.equal(answer.headers['set-cookie'], undefined, 'A: and sets no cookie')
    t.same(callsOnA, ['read', 'read', 'commit', 'read'], 'A: the authentication\'s read, then the token\'s: its commit wrote nothing, read again, no device')
    t.equal(await deviceOf(store, cookie), null, 'the device was not written back')
    t.equal((await laptop.request('/me')).statusCode, 401, 'A: the revoked laptop is signed out')
    t.equal(laptop.get(TOKEN), undefined, 'and holds no remember-me token')
    const sessions = (await phone.request('/sessions')).json().sessions as Array<{ fingerprint: string }>
    t.same(sessions.map((s) => s.fingerprint).filter((fp) => fp === laptopFp), [], 'the revoked fingerprint is not listed again')
    t.same(alarms, [], 'no theft alarm')
  })
}
