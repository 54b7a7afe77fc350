/**
 * Small tools that several tests share.
 */

/**
 * A seeded PRNG (mulberry32): the same seed gives the same numbers in [0, 1), so that a run of a
 * randomized test can be replayed from its seed.
 */
export function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

/** Runs the functions given to `run` one at a time, in the order of the calls. */
export class Mutex {
  #tail: Promise<unknown> = Promise.resolve()

  async run<T> (fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn)
    this.#tail = result.catch(() => {})
    return await result
  }
}
