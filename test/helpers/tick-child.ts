/**
 * Run by test/tick.test.ts as `node --expose-gc --allow-natives-syntax --import tsx
 * test/helpers/tick-child.ts <none|plugin|plugin-in-context>`: an app without fastify-pow, with
 * it, or with it loaded inside an AsyncLocalStorage context, establishes process.nextTick's
 * feedback, runs two major GCs while no tick object is in the queue (only the one fastify-pow
 * keeps, if any), ticks again, serves a request, and prints V8's view of process.nextTick
 * (%DebugPrint) to stdout before the GC and at the end, and whether the kept tick object holds
 * the context's store.
 */
import { AsyncLocalStorage } from 'node:async_hooks'
import Fastify from 'fastify'
import fastifyPow from '../../lib/index.js'
import { keptTick } from '../../lib/tick.js'
import { SECRET } from './app.js'

// V8's natives syntax (%) is not TypeScript: compiled at run time, with --allow-natives-syntax.
// eslint-disable-next-line no-new-func
const debugPrint = new Function('f', '%DebugPrint(f)') as (f: unknown) => void
const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error('tick-child: run with --expose-gc')

const ticks = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((resolve) => process.nextTick(resolve))
}

const mode = process.argv[2]
const app = Fastify()
app.get('/', async () => 'ok')
const storage = new AsyncLocalStorage<{ context: string }>()
const store = { context: 'the request that loaded the app' }
if (mode === 'plugin') {
  await app.register(fastifyPow, { secret: SECRET })
  await app.ready()
} else if (mode === 'plugin-in-context') {
  await storage.run(store, async () => {
    await app.register(fastifyPow, { secret: SECRET })
    await app.ready()
  })
} else {
  await app.ready()
}
await ticks(300)
console.log('=== before the GC')
debugPrint(process.nextTick)
// In a macrotask of its own: the tick queue is empty.
await new Promise<void>((resolve) => setImmediate(() => { gc(); gc(); resolve() }))
await ticks(300)
const response = await app.inject('/')
const kept = keptTick() as Record<symbol, unknown> | null
const holdsStore = kept !== null && Object.getOwnPropertySymbols(kept).some((key) => kept[key] === store)
console.log(`=== after the GC: status ${response.statusCode}, keeps ${String(kept !== null)}, holds the store ${String(holdsStore)}`)
debugPrint(process.nextTick)
await app.close()
