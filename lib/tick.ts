import { executionAsyncResource } from 'node:async_hooks'

/**
 * One of Node's tick objects, kept alive for the life of the process (see {@link keepTickShapes}).
 * `null` until the first call, `undefined` between the call and its tick.
 */
let kept: object | null | undefined = null

/**
 * Keeps `process.nextTick` on V8's fast path for the life of the process, at the cost of one small
 * object.
 *
 * Every `process.nextTick` builds a tick object literal whose first key is computed (Node's
 * `async_id_symbol`). V8 builds such a literal's properties one at a time, and remembers for each
 * of them the hidden class (map) the object had the first time. Those maps are held weakly: when
 * a major GC runs while no tick object is alive (the queue is empty between two events, which is
 * most of the time), it frees them, the next tick object gets new ones, and V8, seeing a map other
 * than the one it remembered, gives up on these properties for good. From then on every
 * `process.nextTick` of the process (Fastify calls it several times per request) defines them
 * through V8's runtime: measured on the benchmark's `GET /me`, a few microseconds per request, a
 * larger share than fastify-pow's own work. A process lands there or not by the timing of its
 * GCs; the bigger its heap at start, the likelier (benchmarks/README.md, "The swings").
 *
 * One tick object kept alive keeps its map, and through it the maps before it, so a GC cannot
 * free them. The object is taken from inside a tick, where `executionAsyncResource()` is the tick
 * object itself. Idempotent; what it keeps holds nothing but the function that took it. It cannot
 * help a process whose maps were freed before the call: fastify-pow calls it when registered.
 */
export function keepTickShapes (): void {
  if (kept !== null) return
  kept = undefined
  process.nextTick(keep)
}

function keep (): void {
  kept = executionAsyncResource()
}

/** Whether {@link keepTickShapes} holds a tick object (for tests). */
export function keepsTickShapes (): boolean {
  return kept !== null && kept !== undefined
}
