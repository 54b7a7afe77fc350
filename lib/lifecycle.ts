/*
 * The session lifecycle: every rule of fastify-pow, and nothing else. Pure: no I/O, no timers,
 * no randomness (new secrets come from the `mint` the caller passes). Each function takes a
 * device as the store returned it (or null), what the request showed, `now` and the rules, and
 * returns a Step: how the request is signed in, the device to write back (under the version
 * that was read) and the cookies to set.
 *
 * The states, transitions and words are written once, in docs/sessions.md; each table row there
 * is a branch of showSession or showToken here. Change a rule in both, in the same commit.
 */
import type { PowMetadata } from './types.js'

/**
 * How often a device may be reissued before it is claimed: a replayed old cookie must not mint
 * secrets forever, and a browser whose answers are lost more often than this signs in again.
 */
export const REISSUE_MAX = 3
/** Retired secrets a device keeps at most (the newest); an older one shown is unknown: anonymous. */
export const RETIRED_MAX = 8

/** A secret as a device keeps it. */
export interface Secret {
  /** SHA-256 of the secret the cookie holds (base64url). */
  hash: string
  /** When it stops working (ms since the epoch). */
  expiresAt: number
}

/** The device's current session id. */
export interface Session extends Secret {
  /** When this session id was issued. */
  insertedAt: number
  /** When the session began (a sign-in or a remember-me sign-in); renewals keep it. Bounds `session.absoluteTtl`. */
  startedAt: number
}

/** A session id or a token that a renewal or a rotation replaced. */
export interface Retired extends Secret {
  kind: 'session' | 'token'
  /** When it was retired (a token: used). */
  at: number
  /** Set when the device was claimed: a retired session id works until then. */
  until?: number
  /** Replaced before it was ever shown back: showing it is theft. */
  superseded?: true
}

/** What a store keeps of a browser: the record `PowStore` calls `data`. */
export interface Device {
  userKey: string
  fingerprint: string
  /** The last sign-in with credentials (`create()`). */
  signedInAt: number
  /** The application's metadata given at sign-in. */
  metadata: PowMetadata
  /** The current session id; it stays after it expired, to tell when the device was last active. */
  session: Session | null
  /** The current remember-me token. */
  token: Secret | null
  /** When the current secrets were issued by a renewal, rotation or reissue not yet claimed. */
  unclaimedSince?: number
  /** Reissues since the last claim. */
  reissued?: number
  retired: Retired[]
}

/** The options the rules read, in ms. */
export interface Rules {
  ttl: number
  renewAfter: number
  grace: number
  absoluteTtl: number | undefined
  /** Remember-me token lifetime; undefined when remember-me is off. */
  tokenTtl: number | undefined
  tokenAbsoluteTtl: number | undefined
}

/** A new secret for the device: what the cookie gets and what the device keeps. */
export interface Minted {
  secret: string
  hash: string
}

export type Mint = () => Minted

/** What a request gets from showing a secret. */
export interface Step {
  /**
   * 'session': signed in; 'once': signed in for this request only (a parallel request used the
   * token); 'none': anonymous; 'theft': anonymous, and the device must be revoked.
   */
  auth: 'session' | 'once' | 'none' | 'theft'
  /** The device after the step (unchanged when `write` is false), or null when there is none. */
  device: Device | null
  /** Write `device` back, under the version read. */
  write: boolean
  /** Set the session cookie to this secret. */
  session?: string
  /** Set the remember-me cookie to this secret. */
  token?: string
  /** The token's expiry moved: set the remember-me cookie again (same secret, new Max-Age). */
  tokenMoved?: boolean
  /** Clear the cookie that was shown. */
  clear?: boolean
  /** What happened, for the events. */
  event?: 'renewed' | 'reissued' | 'rotated'
  /**
   * When the write fails (the store, or the part of it that holds this device, is down), this
   * step stands instead: the id shown still works as read, so the request is served with it and
   * a later request writes. Without it, a failed write fails the request.
   */
  unwritten?: Step
}

const ANONYMOUS: Step = { auth: 'none', device: null, write: false }
const CLEAR: Step = { auth: 'none', device: null, write: false, clear: true }

function theft (device: Device): Step {
  return { auth: 'theft', device, write: false, clear: true }
}

function sessionExpiry (startedAt: number, now: number, rules: Rules): number {
  return rules.absoluteTtl === undefined ? now + rules.ttl : Math.min(now + rules.ttl, startedAt + rules.absoluteTtl)
}

/** When a token issued or extended now stops working. */
export function tokenExpiry (device: Device, now: number, rules: Rules): number {
  const ttl = rules.tokenTtl as number
  return rules.tokenAbsoluteTtl === undefined ? now + ttl : Math.min(now + ttl, device.signedInAt + rules.tokenAbsoluteTtl)
}

function sessionWorks (session: Session | null, now: number, rules: Rules): session is Session {
  return session !== null && session.expiresAt > now &&
    (rules.absoluteTtl === undefined || now - session.startedAt < rules.absoluteTtl)
}

function tokenWorks (device: Device, now: number, rules: Rules): boolean {
  return device.token !== null && rules.tokenTtl !== undefined && device.token.expiresAt > now &&
    (rules.tokenAbsoluteTtl === undefined || now - device.signedInAt < rules.tokenAbsoluteTtl)
}

/** The device can sign a browser in: its session id or its token works. Listed by `sessions()`. */
export function isLive (device: Device, now: number, rules: Rules): boolean {
  return sessionWorks(device.session, now, rules) || tokenWorks(device, now, rules)
}

/** The device has a working remember-me token. */
export function isRemembered (device: Device, now: number, rules: Rules): boolean {
  return tokenWorks(device, now, rules)
}

/**
 * Until when a retired secret matters; past it, it is as unknown as one never issued. A session
 * id: while it could sign in. A used token: to its own expiry (theft is told by it), and at
 * least its grace (a parallel request may still show it). A superseded one: to its expiry.
 */
function mattersUntil (r: Retired, rules: Rules): number {
  if (r.superseded === true) return r.expiresAt
  // "At most the grace ago" includes the grace's last millisecond.
  if (r.kind === 'token') return Math.max(r.expiresAt, r.at + rules.grace + 1)
  return r.until === undefined ? r.expiresAt : Math.min(r.expiresAt, r.until)
}

/** The retired secrets that still matter, at most RETIRED_MAX of them, the newest. */
function keep (retired: Retired[], now: number, rules: Rules): Retired[] {
  const kept = retired.filter((r) => mattersUntil(r, rules) > now)
  return kept.length > RETIRED_MAX ? kept.slice(kept.length - RETIRED_MAX) : kept
}

/** The retired secret of this kind and hash, if it still matters. */
function findRetired (device: Device, kind: Retired['kind'], hash: string, now: number, rules: Rules): Retired | undefined {
  return device.retired.find((r) => r.kind === kind && r.hash === hash && mattersUntil(r, rules) > now)
}

/** How long a store keeps the device, in ms from now; 0 when nothing in it matters any more. */
export function storeTtl (device: Device, now: number, rules: Rules): number {
  let until = 0
  if (device.session !== null) until = Math.max(until, device.session.expiresAt)
  if (device.token !== null) until = Math.max(until, device.token.expiresAt)
  for (const r of device.retired) until = Math.max(until, mattersUntil(r, rules))
  return Math.max(0, until - now)
}

/** The first request showing the device's new secrets: the retired ones get the grace from now. */
function claim (device: Device, now: number, rules: Rules): Device {
  const retired = device.retired.map((r) => r.until !== undefined || r.superseded === true
    ? r
    : { ...r, until: Math.min(r.expiresAt, now + rules.grace) })
  const { unclaimedSince, reissued, ...rest } = device
  return { ...rest, retired: keep(retired, now, rules) }
}

function retire (secret: Secret, kind: Retired['kind'], now: number, superseded = false): Retired {
  const r: Retired = { kind, hash: secret.hash, expiresAt: secret.expiresAt, at: now }
  if (superseded) r.superseded = true
  return r
}

/** A new session id for the device, current and unclaimed; the old one is retired. */
function renew (device: Device, session: Session, now: number, rules: Rules, mint: Mint, tokenHash: string | undefined): Step {
  const fresh = mint()
  const next: Device = {
    ...device,
    session: { hash: fresh.hash, insertedAt: now, startedAt: session.startedAt, expiresAt: sessionExpiry(session.startedAt, now, rules) },
    unclaimedSince: now,
    retired: keep([...device.retired, retire(session, 'session', now)], now, rules)
  }
  const step: Step = { auth: 'session', device: next, write: true, session: fresh.secret, event: 'renewed' }
  // The token the request showed lives on from now: its cookie is set again only here, once per renewal.
  const token = device.token
  if (token !== null && token.hash === tokenHash && tokenWorks(device, now, rules)) {
    const expiresAt = tokenExpiry(device, now, rules)
    if (expiresAt > token.expiresAt) {
      next.token = { hash: token.hash, expiresAt }
      step.tokenMoved = true
    }
  }
  return step
}

/**
 * The answer that carried the device's new secrets was lost: new ones again. The unclaimed
 * session id (and token, after a rotation) are superseded.
 */
function reissue (device: Device, now: number, rules: Rules, mint: Mint, withToken: boolean): Step {
  const current = device.session as Session
  // The same session the lost answer began (a renewal's or a rotation's): its start stays.
  const startedAt = current.startedAt
  const retired = [...device.retired, retire(current, 'session', now, true)]
  const fresh = mint()
  const next: Device = {
    ...device,
    session: { hash: fresh.hash, insertedAt: now, startedAt, expiresAt: sessionExpiry(startedAt, now, rules) },
    unclaimedSince: now,
    reissued: (device.reissued ?? 0) + 1,
    retired
  }
  const step: Step = { auth: 'session', device: next, write: true, session: fresh.secret, event: 'reissued' }
  if (withToken && device.token !== null) {
    retired.push(retire(device.token, 'token', now, true))
    const token = mint()
    next.token = { hash: token.hash, expiresAt: tokenExpiry(device, now, rules) }
    step.token = token.secret
  }
  next.retired = keep(retired, now, rules)
  return step
}

/**
 * A request showed session id `hash` of this device (`device` as read, or null). `tokenHash`:
 * the remember-me token the same request showed, when it is this device's.
 */
export function showSession (device: Device | null, hash: string, tokenHash: string | undefined, now: number, rules: Rules, mint: Mint): Step {
  if (device === null) return ANONYMOUS
  const session = device.session
  if (session !== null && session.hash === hash) {
    if (!sessionWorks(session, now, rules)) return ANONYMOUS
    const claimed = device.unclaimedSince === undefined ? device : claim(device, now, rules)
    // A renewal or a claim that cannot be written leaves the id working until its expiry.
    if (now - session.insertedAt >= rules.renewAfter) {
      return { ...renew(claimed, session, now, rules, mint, tokenHash), unwritten: { auth: 'session', device, write: false } }
    }
    return claimed === device
      ? { auth: 'session', device, write: false }
      : { auth: 'session', device: claimed, write: true, unwritten: { auth: 'session', device, write: false } }
  }
  const retired = findRetired(device, 'session', hash, now, rules)
  if (retired === undefined) return ANONYMOUS
  if (retired.superseded === true) return theft(device)
  // Its replacement was claimed: the grace, whatever has been renewed since.
  if (retired.until !== undefined) return { auth: 'session', device, write: false }
  const since = device.unclaimedSince
  if (since === undefined) return ANONYMOUS
  if (now - since <= rules.grace) return { auth: 'session', device, write: false }
  if ((device.reissued ?? 0) >= REISSUE_MAX || !sessionWorks(device.session, now, rules)) return ANONYMOUS
  return reissue(device, now, rules, mint, false)
}

/** A request without a working session id showed remember-me token `hash` of this device. */
export function showToken (device: Device | null, hash: string, now: number, rules: Rules, mint: Mint): Step {
  if (device === null || rules.tokenTtl === undefined) return CLEAR
  const token = device.token
  if (token !== null && token.hash === hash) {
    if (!tokenWorks(device, now, rules)) return CLEAR
    const claimed = device.unclaimedSince === undefined ? device : claim(device, now, rules)
    return rotate(claimed, token, now, rules, mint)
  }
  const retired = findRetired(device, 'token', hash, now, rules)
  if (retired === undefined) return CLEAR
  if (retired.superseded === true) return theft(device)
  if (now - retired.at <= rules.grace) return { auth: 'once', device, write: false }
  if (retired.until === undefined && device.unclaimedSince !== undefined) {
    // Its rotation's answer was lost: again, unless too often (a replay) or remember-me has ended.
    if ((device.reissued ?? 0) >= REISSUE_MAX) return theft(device)
    if (!tokenWorks(device, now, rules)) return CLEAR
    return reissue(device, now, rules, mint, true)
  }
  return theft(device)
}

/** A remember-me sign-in: the token is used; a new session id and a new token, unclaimed. */
function rotate (device: Device, token: Secret, now: number, rules: Rules, mint: Mint): Step {
  const retired = [...device.retired, retire(token, 'token', now)]
  // A session id still working (a parallel request holds it) gets the grace like any retired one.
  if (sessionWorks(device.session, now, rules)) retired.push(retire(device.session, 'session', now))
  const session = mint()
  const fresh = mint()
  const next: Device = {
    ...device,
    session: { hash: session.hash, insertedAt: now, startedAt: now, expiresAt: sessionExpiry(now, now, rules) },
    token: { hash: fresh.hash, expiresAt: tokenExpiry(device, now, rules) },
    unclaimedSince: now,
    reissued: 0,
    retired: keep(retired, now, rules)
  }
  return { auth: 'session', device: next, write: true, session: session.secret, token: fresh.secret, event: 'rotated' }
}

/**
 * A sign-in with credentials: a new device with a session id, a token, or both
 * (`powPersistentSession.create()` without a session makes one with a token only).
 */
export function signIn (
  userKey: string, fingerprint: string, metadata: PowMetadata, secrets: { session: boolean, token: boolean },
  now: number, rules: Rules, mint: Mint
): Step {
  const device: Device = { userKey, fingerprint, signedInAt: now, metadata, session: null, token: null, retired: [] }
  const step: Step = { auth: secrets.session ? 'session' : 'none', device, write: true }
  if (secrets.session) {
    const session = mint()
    device.session = { hash: session.hash, insertedAt: now, startedAt: now, expiresAt: sessionExpiry(now, now, rules) }
    step.session = session.secret
  }
  if (secrets.token) {
    const token = mint()
    device.token = { hash: token.hash, expiresAt: tokenExpiry(device, now, rules) }
    step.token = token.secret
  }
  return step
}

/** `powPersistentSession.create()` on a device: a new token replaces its token (the old one simply ends). */
export function remember (device: Device, now: number, rules: Rules, mint: Mint): Step {
  const token = mint()
  const next: Device = {
    ...device,
    token: { hash: token.hash, expiresAt: tokenExpiry(device, now, rules) },
    retired: keep(device.retired.filter((r) => r.kind !== 'token'), now, rules)
  }
  return { auth: 'session', device: next, write: true, token: token.secret }
}

/** `powPersistentSession.delete()`: the device forgets its token and the tokens it used. */
export function forget (device: Device, now: number, rules: Rules): Step {
  const next: Device = { ...device, token: null, retired: keep(device.retired.filter((r) => r.kind !== 'token'), now, rules) }
  return { auth: 'none', device: next, write: true }
}
