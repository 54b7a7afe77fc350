import createError from '@fastify/error'

/** An invalid plugin option; `error.option` names it (for example `session.ttl`). */
export const PowOptionError = createError<[string, string]>(
  'POW_ERR_OPTION',
  'fastify-pow option "%s" %s',
  500,
  TypeError
)

/** The store failed or timed out; answered with 503 and no cookie change. */
export const PowStoreError = createError(
  'POW_ERR_STORE_UNAVAILABLE',
  'Session store unavailable',
  503
)

/** A helper that needs a signed-in user was called on an anonymous request. */
export const PowNotSignedInError = createError<[string]>(
  'POW_ERR_NOT_SIGNED_IN',
  'request.powSession.%s() needs a signed-in user',
  401
)

/**
 * `request.powSession.create()` lost a race: another request (say "sign out everywhere else" on
 * another device) revoked the new session before its remember-me token was stored. Nothing is
 * signed in and no cookie is changed; answered 401.
 */
export const PowSignInRevokedError = createError(
  'POW_ERR_SIGN_IN_REVOKED',
  'The new session was revoked while it was being created',
  401
)

/** `create()` was given metadata whose JSON is longer than the `maxMetadataBytes` option. */
export const PowMetadataTooLargeError = createError<[number]>(
  'POW_ERR_METADATA_TOO_LARGE',
  'Session metadata is larger than maxMetadataBytes (%d bytes of JSON)',
  400
)

export function optionError (option: string, problem: string): Error & { option: string } {
  const err = new PowOptionError(option, problem) as unknown as Error & { option: string }
  err.option = option
  return err
}

/**
 * The 503 carries no cause: the store's own error is logged once per outage by fastify-pow, not
 * again with every failed request that Fastify's error handler logs.
 */
export function storeError (): Error {
  return new PowStoreError()
}
