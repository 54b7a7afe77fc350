/**
 * The full randomized concurrency test: test/concurrency.test.ts with 250 interleavings per
 * backend (one Redis, one PostgreSQL database) instead of npm test's 30. A CONCURRENCY_RUNS set in
 * the environment is kept.
 */
process.env.CONCURRENCY_RUNS ??= '250'
await import('../concurrency.test.js')
