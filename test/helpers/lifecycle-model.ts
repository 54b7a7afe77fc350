/*
 * A reference model of ONE device, written from docs/sessions.md alone (it does not import or
 * mirror lib/lifecycle.ts). It keeps every secret ever issued to the device, by its plaintext,
 * with its state, and predicts what showing one of them does: the docs' table row, how the
 * request is signed in, whether the store is written, which cookies are set or cleared.
 *
 * Where the docs leave a choice open, the model takes one reading and names it here, so a
 * failure can be traced to a sentence:
 * - Durations are half-open: a secret that "lives X" from time a works at a <= t < a + X, and
 *   "older than / longer than X" starts at X (the code's boundary; the docs word both ways).
 *   "At most the grace" is inclusive, as written; "within its grace" after a claim at c is
 *   c <= t < c + grace ("how long a retired session id works once the device is claimed").
 * - "Device claimed" in the retired-session rows is read per secret: a retired id is "claimed"
 *   once a claim happened after it was retired (that claim gives it "its grace"). The
 *   "device unclaimed" rows are for the id whose renewal's answer may have been lost.
 * - A retired session id is an idle session id too: past its own `session.ttl` (or
 *   `session.absoluteTtl` from its session's start) it signs nobody in.
 * - A secret past its own lifetime ("dead") may have been forgotten by the device: the docs
 *   keep "the 8 newest retired secrets at most", and say nothing of how long superseded or used
 *   secrets are remembered. For a dead superseded or used secret the model therefore also
 *   accepts "unknown" (anonymous; a token's cookie cleared) besides its table row.
 * - Whether a renewal that cannot move the token's expiry (already at
 *   `persistentSession.absoluteTtl`) sets its cookie again is left open ('either').
 */

/** The options the rules read, in ms (the same fields as the code's Rules, typed here on purpose). */
export interface ModelRules {
  ttl: number
  renewAfter: number
  grace: number
  absoluteTtl: number | undefined
  tokenTtl: number | undefined
  tokenAbsoluteTtl: number | undefined
}

/**
 * Known disagreements between docs/sessions.md and lib/lifecycle.ts. All false, the model is the
 * docs; test/lifecycle.test.ts turns on the ones it reports, so that the property keeps looking
 * for new faults past them, and shows each one in an example marked todo.
 */
export interface Deviations {
  /** A token reissue starts a new session (startedAt = now); the docs: "reissues keep its start". */
  tokenReissueRestartsSession?: boolean
  /**
   * A used token whose rotation is unclaimed is theft once the device's current token stopped
   * working (past its ttl or persistentSession.absoluteTtl); the docs: reissue.
   */
  usedTokenTheftWhenTokenDead?: boolean
  /**
   * A retired session id whose grace (from the claim after its retirement) ended is judged by the
   * device's claim state of now when a later renewal made the device unclaimed again, as long
   * as the device was not written since its grace ended: signed in within the grace of that
   * renewal, reissued past it. The model's (per-secret) reading: anonymous.
   */
  retiredIdFollowsDeviceClaim?: boolean
  /**
   * A used token past its own expiry is forgotten at the device's next write, even when it was
   * used at most the grace ago: anonymous and its cookie cleared; the docs: signed in once.
   */
  usedTokenForgottenInGrace?: boolean
  /**
   * The cap of 8 counts only the retired secrets the device still keeps (expired ones and
   * claimed session ids past their grace are dropped first), so a secret older than the 8 newest
   * retired ones can still be known: the docs: unknown.
   */
  retiredCapCountsKeptOnly?: boolean
}

/** "After 3 reissues without a claim". */
export const MODEL_REISSUE_MAX = 3
/** "A device keeps the 8 newest retired secrets at most". */
export const MODEL_RETIRED_MAX = 8

export type Auth = 'session' | 'once' | 'none' | 'theft'

/** What the docs say a request gets. */
export interface Outcome {
  auth: Auth
  /** The store is written (the device changed). */
  write: boolean
  /** A new session id is issued (set in the cookie). */
  session: boolean
  /** A new token is issued (set in the cookie). */
  token: boolean
  /** The shown token's cookie is set again because its expiry moved. */
  moved: boolean | 'either'
  /** The cookie that was shown is cleared. */
  clear: boolean
  event?: 'renewed' | 'reissued' | 'rotated'
  /** The docs' row, for failure messages. */
  row: string
}

/** The secrets a step issued, as the cookie got them. */
export interface Issued {
  session?: string
  token?: string
}

/** One outcome the docs allow, and what it does to the model once taken. */
export interface Branch {
  outcome: Outcome
  effect: (m: DeviceModel, issued: Issued) => void
}

export type SecretState =
  | 'current'
  /** Replaced by a renewal or rotation (a token: used). */
  | 'retired'
  /** An unclaimed secret replaced by a reissue. */
  | 'superseded'
  /** A token that remember() replaced or forget() dropped: it "simply ends". */
  | 'ended'

export interface ModelSecret {
  secret: string
  kind: 'session' | 'token'
  state: SecretState
  issuedAt: number
  /** Session ids: when their session started (a sign-in or a remember-me sign-in). */
  start: number
  /** When it stops working: the idle ttl, bounded by the absolute ttl. Tokens: moved by renewals. */
  expiresAt: number
  retiredAt?: number
  /** Order of retirement, for "the 8 newest retired". */
  seq?: number
  /** The claim after its retirement: its grace starts here. */
  claimedAt?: number
}

const min = (a: number, b: number | undefined): number => b === undefined ? a : Math.min(a, b)

function outcome (auth: Auth, row: string, more: Partial<Outcome> = {}): Outcome {
  return { auth, write: false, session: false, token: false, moved: false, clear: false, row, ...more }
}

const nothing = (): void => {}

/** The same branch, labelled as tolerated past the docs' cap of 8 retired secrets. */
const known = (b: Branch): Branch => ({ ...b, outcome: { ...b.outcome, row: 'KNOWN DEVIATION: kept past the 8 newest retired: ' + b.outcome.row } })

export class DeviceModel {
  readonly rules: ModelRules
  readonly signedInAt: number
  secrets: ModelSecret[] = []
  /** When the current secrets were issued by a renewal, rotation or reissue nobody claimed yet. */
  unclaimedSince: number | undefined = undefined
  /** Reissues since the last claim. */
  reissues = 0
  /** Revoked (theft) or dropped by the store: no such device. */
  gone = false
  #seq = 0

  readonly deviations: Deviations

  constructor (rules: ModelRules, signedInAt: number, deviations: Deviations = {}) {
    this.rules = rules
    this.signedInAt = signedInAt
    this.deviations = deviations
  }

  /** A sign-in with credentials: a new device with a session id, a token, or both. */
  static signIn (rules: ModelRules, now: number, issued: Issued, deviations: Deviations = {}): DeviceModel {
    const m = new DeviceModel(rules, now, deviations)
    if (issued.session !== undefined) m.issueSession(issued.session, now, now)
    if (issued.token !== undefined) m.issueToken(issued.token, now)
    return m
  }

  clone (): DeviceModel {
    const m = new DeviceModel(this.rules, this.signedInAt, this.deviations)
    m.secrets = this.secrets.map((s) => ({ ...s }))
    m.unclaimedSince = this.unclaimedSince
    m.reissues = this.reissues
    m.gone = this.gone
    m.#seq = this.#seq
    return m
  }

  // --- State ------------------------------------------------------------------------------

  find (secret: string): ModelSecret | undefined {
    return this.secrets.find((s) => s.secret === secret)
  }

  current (kind: 'session' | 'token'): ModelSecret | undefined {
    return this.secrets.find((s) => s.kind === kind && s.state === 'current')
  }

  /** Older than the 8 newest retired secrets: unknown to the device. */
  forgotten (s: ModelSecret): boolean {
    if (s.seq === undefined) return false
    const seq = s.seq
    return this.secrets.filter((o) => o.seq !== undefined && o.seq > seq).length >= MODEL_RETIRED_MAX
  }

  works (s: ModelSecret, t: number): boolean {
    return t < s.expiresAt
  }

  /** "Listed by sessions() while its session id or its token works". */
  listed (t: number): boolean {
    const session = this.current('session')
    const token = this.current('token')
    return !this.gone && ((session !== undefined && this.works(session, t)) || (token !== undefined && this.works(token, t)))
  }

  /**
   * The time before which some secret of the device may still sign a request in (exclusive):
   * the store must keep the device until then.
   */
  signInUntil (): number {
    let until = -Infinity
    for (const s of this.secrets) {
      if (this.forgotten(s)) continue
      if (s.state === 'current') until = Math.max(until, s.expiresAt)
      if (s.state !== 'retired') continue
      if (s.kind === 'session') {
        // Claimed: its grace; unclaimed: the grace or a reissue, until its own expiry.
        until = Math.max(until, s.claimedAt === undefined ? s.expiresAt : Math.min(s.expiresAt, s.claimedAt + this.rules.grace))
      } else {
        // Used: "at most the grace ago" is inclusive, hence + 1 on integer times.
        until = Math.max(until, (s.retiredAt as number) + this.rules.grace + 1)
        if (s.claimedAt === undefined) until = Math.max(until, s.expiresAt)
      }
    }
    return until
  }

  // --- Transitions (effects run on whichever model the step is applied to) -----------------

  sessionExpiry (issuedAt: number, start: number): number {
    return min(issuedAt + this.rules.ttl, this.rules.absoluteTtl === undefined ? undefined : start + this.rules.absoluteTtl)
  }

  tokenExpiry (from: number): number {
    const abs = this.rules.tokenAbsoluteTtl
    return min(from + (this.rules.tokenTtl as number), abs === undefined ? undefined : this.signedInAt + abs)
  }

  issueSession (secret: string | undefined, t: number, start: number): void {
    if (secret === undefined) throw new Error('model: a new session id was due and the step issued none')
    this.secrets.push({ secret, kind: 'session', state: 'current', issuedAt: t, start, expiresAt: this.sessionExpiry(t, start) })
  }

  issueToken (secret: string | undefined, t: number): void {
    if (secret === undefined) throw new Error('model: a new token was due and the step issued none')
    this.secrets.push({ secret, kind: 'token', state: 'current', issuedAt: t, start: t, expiresAt: this.tokenExpiry(t) })
  }

  retire (secret: string, t: number, superseded: boolean): void {
    const s = this.find(secret) as ModelSecret
    s.state = superseded ? 'superseded' : 'retired'
    s.retiredAt = t
    s.seq = ++this.#seq
  }

  /** "Claims the device (its retired session ids get the grace from now)"; reissues count from here. */
  claim (t: number): void {
    for (const s of this.secrets) if (s.state === 'retired' && s.claimedAt === undefined) s.claimedAt = t
    this.unclaimedSince = undefined
    this.reissues = 0
  }

  // --- What showing a secret does ----------------------------------------------------------

  /**
   * A request shows session id `secret`, and maybe (`withToken`) a remember-me token of this
   * device in the same request.
   */
  showSession (secret: string, withToken: string | undefined, t: number, ignoreCap = false): Branch[] {
    const anonymous = (row: string): Branch[] => [{ outcome: outcome('none', row), effect: nothing }]
    const signedIn = (row: string): Branch[] => [{ outcome: outcome('session', row), effect: nothing }]
    if (this.gone) return anonymous('no such device')
    const s = this.find(secret)
    if (s === undefined || s.kind !== 'session') return anonymous('unknown to its device')
    if (this.forgotten(s) && !ignoreCap) {
      const branches = anonymous('retired, older than the 8 newest retired: unknown')
      if (this.deviations.retiredCapCountsKeptOnly === true) branches.push(...this.showSession(secret, withToken, t, true).map(known))
      return branches
    }

    if (s.state === 'current') {
      if (!this.works(s, t)) return anonymous('current, expired or past session.absoluteTtl')
      const claims = this.unclaimedSince !== undefined
      const claimNote = claims ? 'current, device unclaimed: claims it; then ' : ''
      if (t - s.issuedAt < this.rules.renewAfter) {
        // The claim itself is a change of the device: written.
        return [{ outcome: outcome('session', claimNote + 'current, younger than renewAfter', { write: claims }), effect: (m) => { if (claims) m.claim(t) } }]
      }
      // Renews. The token shown with it lives on from now, if it is the device's working token.
      const token = withToken === undefined ? undefined : this.find(withToken)
      let moved: boolean | 'either' = false
      let newExpiry = 0
      if (token !== undefined && token.kind === 'token' && token.state === 'current' && this.works(token, t)) {
        newExpiry = this.tokenExpiry(t)
        moved = newExpiry > token.expiresAt ? true : 'either'
      }
      const start = s.start
      return [{
        outcome: outcome('session', claimNote + 'current, older than renewAfter: renews', { write: true, session: true, moved, event: 'renewed' }),
        effect: (m, issued) => {
          if (claims) m.claim(t)
          m.retire(secret, t, false)
          m.issueSession(issued.session, t, start)
          m.unclaimedSince = t
          if (moved !== false) (m.find(withToken as string) as ModelSecret).expiresAt = Math.max(newExpiry, (m.find(withToken as string) as ModelSecret).expiresAt)
        }
      }]
    }

    if (s.state === 'superseded') return this.#theft('superseded session id', s, t, false)

    if (s.state === 'retired') {
      if (!this.works(s, t)) return anonymous('retired, past its own ttl (an idle session id ends ttl after its issue)')
      if (s.claimedAt !== undefined) {
        if (t < s.claimedAt + this.rules.grace) return signedIn('retired, device claimed, within its grace')
        const branches = anonymous('retired, device claimed, past its grace')
        const since = this.unclaimedSince
        if (this.deviations.retiredIdFollowsDeviceClaim === true && since !== undefined) {
          const note = 'KNOWN DEVIATION: retired, claimed, past its grace, device unclaimed again: '
          if (t - since <= this.rules.grace) branches.push(...signedIn(note + 'signed in'))
          else if (this.reissues < MODEL_REISSUE_MAX) branches.push(this.#reissueBranch(note + 'reissue', t))
        }
        return branches
      }
      const since = this.unclaimedSince
      if (since === undefined) throw new Error('model: a retired id nobody claimed on a claimed device')
      if (t - since <= this.rules.grace) return signedIn('retired, device unclaimed for at most the grace')
      if (this.reissues >= MODEL_REISSUE_MAX) return anonymous('retired, device unclaimed past the grace, after 3 reissues')
      return [this.#reissueBranch('retired, device unclaimed past the grace: reissue', t)]
    }
    return anonymous('unknown to its device')
  }

  /** A request without a working session id shows remember-me token `secret`. */
  showToken (secret: string, t: number, ignoreCap = false): Branch[] {
    const anonymous = (row: string): Branch[] => [{ outcome: outcome('none', row, { clear: true }), effect: nothing }]
    if (this.gone || this.rules.tokenTtl === undefined) return anonymous('no such device')
    const s = this.find(secret)
    if (s === undefined || s.kind !== 'token') return anonymous('unknown to its device')
    if (this.forgotten(s) && !ignoreCap) {
      const branches = anonymous('used, older than the 8 newest retired: unknown')
      if (this.deviations.retiredCapCountsKeptOnly === true) branches.push(...this.showToken(secret, t, true).map(known))
      return branches
    }
    if (s.state === 'ended') return anonymous('replaced by remember() or dropped by forget(): unknown')

    if (s.state === 'current') {
      if (!this.works(s, t)) return anonymous('current, past its expiry or persistentSession.absoluteTtl')
      const claims = this.unclaimedSince !== undefined
      return [{
        outcome: outcome('session', (claims ? 'current, device unclaimed: claims it; then ' : '') + 'current: rotates', { write: true, session: true, token: true, event: 'rotated' }),
        effect: (m, issued) => {
          if (claims) m.claim(t)
          m.retire(secret, t, false)
          // The session id the rotation replaces is retired (it gets the grace like any retired one).
          const session = m.current('session')
          if (session !== undefined) m.retire(session.secret, t, false)
          m.issueSession(issued.session, t, t)
          m.issueToken(issued.token, t)
          m.unclaimedSince = t
          m.reissues = 0
        }
      }]
    }

    if (s.state === 'superseded') return this.#theft('superseded token', s, t, true)

    // Used.
    if (t - (s.retiredAt as number) <= this.rules.grace) {
      const once: Branch[] = [{ outcome: outcome('once', 'used at most the grace ago'), effect: nothing }]
      if (this.deviations.usedTokenForgottenInGrace === true && !this.works(s, t)) once.push(...anonymous('KNOWN DEVIATION: used within the grace but past its own expiry: forgotten'))
      return once
    }
    if (s.claimedAt !== undefined) return this.#theft('used, and its rotation was claimed', s, t, true)
    if (this.reissues >= MODEL_REISSUE_MAX) return this.#theft('used, rotation unclaimed, after 3 reissues', s, t, true)
    const current = this.current('token')
    if (current === undefined || !this.works(current, t)) {
      const ended = anonymous('used, rotation unclaimed, but the device\'s token no longer works')
      if (!this.works(s, t)) ended.push(...anonymous('used, past its own expiry: forgotten'))
      return ended
    }
    const branches: Branch[] = [{
      outcome: outcome('session', 'used, and its rotation is unclaimed: reissue of both secrets', { write: true, session: true, token: true, event: 'reissued' }),
      effect: (m, issued) => m.#reissue(t, issued, true)
    }]
    if (!this.works(s, t)) branches.push(...anonymous('used, past its own expiry: forgotten'))
    return branches
  }

  #reissueBranch (row: string, t: number): Branch {
    return { outcome: outcome('session', row, { write: true, session: true, event: 'reissued' }), effect: (m, issued) => m.#reissue(t, issued, false) }
  }

  #theft (row: string, s: ModelSecret, t: number, token: boolean): Branch[] {
    const branches: Branch[] = [{ outcome: outcome('theft', row + ': theft', { clear: true }), effect: (m) => { m.gone = true } }]
    // Past its own lifetime the device may have forgotten it (see the header).
    if (!this.works(s, t)) branches.push({ outcome: outcome('none', row + ', past its own lifetime: forgotten', { clear: token }), effect: nothing })
    return branches
  }

  /** "New ones are issued again": the unclaimed current secrets are superseded; the session keeps its start. */
  #reissue (t: number, issued: Issued, withToken: boolean): void {
    const session = this.current('session') as ModelSecret
    this.retire(session.secret, t, true)
    this.issueSession(issued.session, t, withToken && this.deviations.tokenReissueRestartsSession === true ? t : session.start)
    if (withToken) {
      const token = this.current('token')
      if (token !== undefined) this.retire(token.secret, t, true)
      this.issueToken(issued.token, t)
    }
    this.unclaimedSince = t
    this.reissues++
  }

  /** One line per secret, for failure messages. */
  describe (secretName: (s: string) => string): string {
    const lines = this.secrets.map((s) => {
      const parts = [`${s.kind} ${secretName(s.secret)} ${s.state}${this.forgotten(s) ? ' (forgotten)' : ''}`, `issued ${s.issuedAt}`, `expires ${s.expiresAt}`]
      if (s.kind === 'session') parts.push(`start ${s.start}`)
      if (s.retiredAt !== undefined) parts.push(`retired ${s.retiredAt}`)
      if (s.claimedAt !== undefined) parts.push(`claimed ${s.claimedAt}`)
      return '    ' + parts.join(', ')
    })
    const head = `  model: signedInAt ${this.signedInAt}, ${this.gone ? 'gone' : this.unclaimedSince === undefined ? 'claimed' : `unclaimed since ${this.unclaimedSince}`}, reissues ${this.reissues}`
    return [head, ...lines].join('\n')
  }
}
