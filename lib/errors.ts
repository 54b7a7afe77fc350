// fastify-pow's errors are plain classes: `instanceof` works, their declarations need no other
// package's types, and each can be constructed with no arguments. Fastify answers an error with
// its `statusCode` and shows its `code` and `message`; a message is for the client to read, so
// details go in other properties, which Fastify's logger prints.

/** An invalid plugin option; `error.option` names it (for example `session.ttl`). Fails `app.ready()`. */
export class PowOptionError extends TypeError {
  override name = 'PowOptionError'
  readonly code = 'POW_ERR_OPTION'
  readonly statusCode = 500
  /** The option, as written in the plugin's options (`session.ttl`). */
  readonly option: string | undefined

  constructor (option?: string, problem?: string) {
    super(option === undefined ? 'Invalid fastify-pow option' : `fastify-pow option "${option}" ${problem ?? 'is invalid'}`)
    this.option = option
  }
}

/**
 * The store failed or timed out: 503, and no cookie changes. It carries no cause: fastify-pow
 * logs the store's own error once per outage, not again with every request that fails.
 */
export class PowStoreError extends Error {
  override name = 'PowStoreError'
  readonly code = 'POW_ERR_STORE_UNAVAILABLE'
  readonly statusCode = 503

  constructor () {
    super('Session store unavailable')
  }
}

/**
 * The `reloadUser` option threw: 503, and no cookie changes. As with the store, its error is
 * logged once per outage.
 */
export class PowReloadUserError extends Error {
  override name = 'PowReloadUserError'
  readonly code = 'POW_ERR_RELOAD_USER'
  readonly statusCode = 503

  constructor () {
    super('User unavailable')
  }
}

/**
 * A signed-in user is needed (`requireUser()`, `sessions()`, ...): 401 "Not signed in".
 * `helper` says which call asked, for the log.
 */
export class PowNotSignedInError extends Error {
  override name = 'PowNotSignedInError'
  readonly code = 'POW_ERR_NOT_SIGNED_IN'
  readonly statusCode = 401
  /** The call that needed a user, as `request.powSession.sessions()`. */
  readonly helper: string | undefined

  constructor (helper?: string) {
    super('Not signed in')
    this.helper = helper
  }
}

/**
 * `request.powPersistentSession.create()` lost a race: another request (say "sign out everywhere
 * else" on another device) revoked the new session before its remember-me token was stored.
 * Nothing is signed in and no cookie is changed; answered 401.
 */
export class PowSignInRevokedError extends Error {
  override name = 'PowSignInRevokedError'
  readonly code = 'POW_ERR_SIGN_IN_REVOKED'
  readonly statusCode = 401

  constructor () {
    super('The new session was revoked while it was being created')
  }
}

/** `create()` was given metadata whose JSON is longer than the `maxMetadataBytes` option: 400. */
export class PowMetadataTooLargeError extends Error {
  override name = 'PowMetadataTooLargeError'
  readonly code = 'POW_ERR_METADATA_TOO_LARGE'
  readonly statusCode = 400
  /** The `maxMetadataBytes` option. */
  readonly maxMetadataBytes: number | undefined

  constructor (maxMetadataBytes?: number) {
    super(maxMetadataBytes === undefined
      ? 'Session metadata is too large'
      : `Session metadata is larger than maxMetadataBytes (${maxMetadataBytes} bytes of JSON)`)
    this.maxMetadataBytes = maxMetadataBytes
  }
}

export function optionError (option: string, problem: string): PowOptionError {
  return new PowOptionError(option, problem)
}

export function storeError (): PowStoreError {
  return new PowStoreError()
}
