// Preloaded (`node --import`) into every benchmark server but fastify-pow's, before anything else:
// the same call fastify-pow makes when registered (lib/tick.ts, from the build), so that each
// server is measured with process.nextTick on V8's fast path, whatever the timing of its GCs.
// fastify-pow's servers are measured as applications run them: with the call the plugin makes.
import { keepTickShapes } from '../../dist/lib/tick.js'

keepTickShapes()
