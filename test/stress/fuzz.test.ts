/**
 * The full fuzz: test/fuzz.test.ts at FUZZ_SCALE=1, about 100,000 generated inputs (npm test runs
 * the same file at 0.05). A FUZZ_SCALE set in the environment is kept.
 */
process.env.FUZZ_SCALE ??= '1'
await import('../fuzz.test.js')
