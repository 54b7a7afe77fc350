import type { FastifyBaseLogger } from 'fastify'

// At most one error line per outage kind and minute.
const LOG_INTERVAL = 60_000

/**
 * The log lines of one kind of outage (the store, `reloadUser`): an error line when failures
 * start, at most one a minute while they go on (with the count of those not logged), and a line
 * when it answers after a logged failure (or, a minute on, after failures not logged). A partial outage (one Redis Cluster shard down, one
 * user's reload failing) alternates failures and answers: it still logs at most two lines a
 * minute, not one per request.
 */
export class OutageLog {
  #log: FastifyBaseLogger
  #what: string
  #failure: string
  /** The last error line was written and no answer has come since. */
  #logged = false
  #loggedAt: number | undefined
  #notLogged = 0

  /** `what` names the part ("the session store"); `failure` ends its error line. */
  constructor (log: FastifyBaseLogger, what: string, failure: string) {
    this.#log = log
    this.#what = what
    this.#failure = failure
  }

  failed (err: unknown, log: FastifyBaseLogger = this.#log): void {
    const now = Date.now()
    if (this.#loggedAt === undefined || now - this.#loggedAt >= LOG_INTERVAL) {
      this.#log.error({ err, failuresNotLogged: this.#notLogged }, `fastify-pow: ${this.#what} failed; ${this.#failure}`)
      this.#loggedAt = now
      this.#notLogged = 0
      this.#logged = true
    } else {
      this.#notLogged++
      log.debug({ err }, `fastify-pow: ${this.#what} failed again`)
    }
  }

  answered (): void {
    if (this.#logged) {
      this.#logged = false
      this.#log.info(`fastify-pow: ${this.#what} answers again`)
      return
    }
    // Failures that came and went between two lines (a short outage soon after another) are
    // not lost: the first answer once the minute is over reports them.
    if (this.#notLogged > 0 && Date.now() - (this.#loggedAt as number) >= LOG_INTERVAL) {
      this.#log.warn({ failuresNotLogged: this.#notLogged }, `fastify-pow: ${this.#what} failed ${this.#notLogged} times since the last line; it answers now`)
      this.#notLogged = 0
      this.#loggedAt = Date.now()
    }
  }
}
