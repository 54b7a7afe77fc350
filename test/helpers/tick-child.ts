/**
 * Run by test/tick.test.ts as `node --expose-gc --allow-natives-syntax --import tsx
 * test/helpers/tick-child.ts <plugin|none>`: an app with or without fastify-pow registered
 * establishes process.nextTick's feedback, runs two major GCs while no tick object is alive, ticks
 * again, serves a request, and prints V8's view of process.nextTick (%DebugPrint) to stdout before
 * the GC and at the end.
 */
import Fastify from 'fastify'
import fastifyPow from '../../lib/index.js'
import { keepsTickShapes } from '../../lib/tick.js'
import { SECRET } from './app.js'

// V8's natives syntax (%) is not TypeScript: compiled at run time, with --allow-natives-syntax.
// eslint-disable-next-line no-new-func
const debugPrint = new Function('f', '%DebugPrint(f)') as (f: unknown) => void
const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error('tick-child: run with --expose-gc')

const ticks = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((resolve) => process.nextTick(resolve))
}

const app = Fastify()
if (process.argv[2] === 'plugin') await app.register(fastifyPow, { secret: SECRET })
app.get('/', async () => 'ok')
await app.ready()
await ticks(300)
console.log('=== before the GC')
debugPrint(process.nextTick)
// In a macrotask of its own: the tick queue is empty, no tick object is alive.
await new Promise<void>((resolve) => setImmediate(() => { gc(); gc(); resolve() }))
await ticks(300)
const response = await app.inject('/')
console.log(`=== after the GC: status ${response.statusCode}, keeps ${String(keepsTickShapes())}`)
debugPrint(process.nextTick)
await app.close()
