/**
 * lib/tick.ts: with fastify-pow registered, a major GC while no tick object is in the queue leaves
 * process.nextTick's object literal on V8's fast path; without it (the control), the same GC
 * sends it to the runtime for good. Read from V8 itself: the state of the literal's
 * DefineKeyedOwnPropertyInLiteral feedback slots in %DebugPrint(process.nextTick), in a child
 * process (test/helpers/tick-child.ts).
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, open, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { test } from 'tap'
import { keepTickShapes, keptTick } from '../lib/tick.js'

const ROOT = path.resolve(import.meta.dirname, '..')

type Mode = 'none' | 'plugin' | 'plugin-in-context'

/**
 * The child runs as an application does: through `env -i`, since tap's processinfo adds its loader
 * (NODE_OPTIONS) to every process a test spawns, and its coverage makes V8 keep feedback its own
 * way (there the literal is megamorphic before the child's first line).
 */
function childCommand (mode: Mode): string[] {
  return [
    'env', '-i', `PATH=${process.env.PATH ?? ''}`, `HOME=${process.env.HOME ?? ''}`, process.execPath,
    '--expose-gc', '--allow-natives-syntax', '--import', 'tsx', path.join(ROOT, 'test/helpers/tick-child.ts'), mode
  ]
}

async function literalSlots (mode: Mode): Promise<{ keeps: boolean, holdsStore: boolean, before: string[], after: string[] }> {
  // V8 prints through C's stdio: to a pipe, what it buffered can be lost at exit, so to a file.
  const dir = await mkdtemp(path.join(tmpdir(), 'fastify-pow-tick-'))
  const file = path.join(dir, 'stdout')
  let stdout: string
  try {
    const out = await open(file, 'w')
    try {
      const [command, ...args] = childCommand(mode) as [string, ...string[]]
      const child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', out.fd, 'inherit'] })
      const [code] = await once(child, 'exit') as [number | null]
      if (code !== 0) throw new Error(`tick-child exited with ${String(code)}`)
    } finally {
      await out.close()
    }
    stdout = await readFile(file, 'utf8')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
  const [, before = '', after = ''] = stdout.split(/^=== .*$/m)
  const status = /^=== after the GC: status (\d+), keeps (true|false), holds the store (true|false)$/m.exec(stdout)
  if (status?.[1] !== '200') throw new Error(`tick-child did not serve its request: ${stdout.slice(0, 500)}`)
  const states = (dump: string): string[] => [...dump.matchAll(/slot #\d+ DefineKeyedOwnPropertyInLiteral (\w+)/g)].map((m) => m[1] as string)
  return { keeps: status[2] === 'true', holdsStore: status[3] === 'true', before: states(before), after: states(after) }
}

test('a faked process.nextTick: what runs the callback is let go, and the next call tries again', async (t) => {
  // First in this file: nothing has called keepTickShapes in this process yet.
  t.equal(keptTick(), null)
  const real = process.nextTick
  process.nextTick = ((callback: (...args: unknown[]) => void, ...args: unknown[]) => { setImmediate(callback, ...args) }) as typeof process.nextTick
  try {
    keepTickShapes()
    await new Promise((resolve) => setImmediate(resolve))
  } finally {
    process.nextTick = real
  }
  t.equal(keptTick(), null, 'an Immediate ran it: not kept')
  keepTickShapes()
  await new Promise((resolve) => process.nextTick(resolve))
  const kept = keptTick()
  t.same(kept === null ? null : Object.keys(kept), ['callback', 'args'], 'the next call keeps a tick object (its own keys are a tick object\'s)')
  t.equal(kept === null ? 0 : Object.getOwnPropertySymbols(kept).length, 2, 'and its two symbols, the async ids')
})

test('without fastify-pow, a GC with no tick object alive sends nextTick\'s literal to the runtime (the control)', async (t) => {
  const { keeps, before, after } = await literalSlots('none')
  t.equal(keeps, false, 'nothing keeps a tick object')
  t.ok(before.length >= 2, `V8 shows the literal's feedback slots (${before.join(', ')})`)
  t.same(before.filter((s) => s !== 'MONOMORPHIC'), [], 'before the GC all of them are monomorphic')
  t.ok(after.includes('MEGAMORPHIC'), `after it some are megamorphic (${after.join(', ')}): the runtime defines those properties from now on`)
})

for (const mode of ['plugin', 'plugin-in-context'] as const) {
  const how = mode === 'plugin' ? 'registered' : 'registered inside an AsyncLocalStorage context'
  test(`with fastify-pow ${how}, the same GC leaves every one of them monomorphic`, async (t) => {
    const { keeps, holdsStore, before, after } = await literalSlots(mode)
    t.equal(keeps, true, 'the plugin keeps a tick object')
    // Only loaded inside a context is there a store it could hold.
    if (mode === 'plugin-in-context') t.equal(holdsStore, false, 'which holds no store of the context the plugin was loaded in')
    t.ok(before.length >= 2, `V8 shows the literal's feedback slots (${before.join(', ')})`)
    t.same(before.filter((s) => s !== 'MONOMORPHIC'), [], 'before the GC all of them are monomorphic')
    t.same(after.filter((s) => s !== 'MONOMORPHIC'), [], 'and after it')
  })
}
