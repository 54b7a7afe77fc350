import { AsyncResource, executionAsyncResource } from 'node:async_hooks'

/**
 * One of Node's tick objects, kept alive for the life of the process (see {@link keepTickShapes}).
 * `null` until a call, `undefined` between a call and its tick.
 */
let kept: object | null | undefined = null

/**
 * The context the tick is scheduled in: the one this module was loaded in, so that the kept object
 * does not hold the AsyncLocalStorage stores of whatever ran when the plugin was loaded (a
 * request's, a span's), which Node writes onto every tick object.
 */
const root = new AsyncResource('fastify-pow:tick')

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
 * larger share than fastify-pow's own work. Whether a process lands there depends on when its
 * major GCs run (benchmarks/README.md, "The swings").
 *
 * One tick object kept alive keeps its map, and through it the maps before it, so a GC cannot
 * free them. The object is taken from inside a tick, where `executionAsyncResource()` is the tick
 * object itself; it holds the function that took it and the stores of the context this module was
 * loaded in, if any. Idempotent. It cannot help a process whose maps were freed before the call:
 * fastify-pow calls it first thing when the app loads the plugin.
 */
export function keepTickShapes (): void {
  if (kept !== null) return
  kept = undefined
  root.runInAsyncScope(() => { process.nextTick(keep) })
}

function keep (): void {
  const resource = executionAsyncResource() as { callback?: unknown }
  // Anything but Node's own tick object (a faked process.nextTick runs this elsewhere) is let go,
  // and the next call tries again.
  kept = resource.callback === keep ? resource : null
}

/** The tick object {@link keepTickShapes} keeps, or null (for tests). */
export function keptTick (): object | null {
  return kept ?? null
}
