/**
 * fastify-pow as a user installs it: built, packed with `npm pack`, and unpacked into
 * node_modules/fastify-pow of a new project in the system's temporary directory, next to its
 * dependencies and peers. Those are links to this repository's node_modules, so nothing is
 * downloaded. Used by test/package-types.test.ts and test/readme.test.ts.
 */
import { execFile, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import type { TypecheckJob, TypecheckResult } from './typecheck.js'

export type { TypecheckDiagnostic, TypecheckJob, TypecheckResult } from './typecheck.js'

const run = promisify(execFile)

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

export interface PackedProject {
  /** The consumer project: package.json (`"type": "module"`) and node_modules. */
  dir: string
  /** The files `npm pack` put in the tarball. */
  files: string[]
  /** Removes the project and the tarball. */
  cleanup: () => Promise<void>
}

/**
 * Builds the package as its build script does (`tsc -p tsconfig.build.json`), but into a staging
 * directory: dist/ is left alone for the editors and tests that use it. The staging directory
 * gets package.json, README, LICENSE and the other `files` entries; `npm pack` there chooses the
 * tarball's content from package.json, as it does for a publish.
 *
 * `link`: packages besides the dependencies, peers and their @types that the project needs.
 */
export async function packedProject ({ root = ROOT, link = [] }: { root?: string, link?: string[] } = {}): Promise<PackedProject> {
  const pkg = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as {
    files?: string[], dependencies?: Record<string, string>, peerDependencies?: Record<string, string>
  }
  const stage = await mkdtemp(path.join(os.tmpdir(), 'fastify-pow-pack-'))
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fastify-pow-consumer-'))
  const cleanup = async (): Promise<void> => {
    await rm(stage, { recursive: true, force: true })
    await rm(dir, { recursive: true, force: true })
  }
  try {
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
    await run(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', path.join(stage, 'dist')], { cwd: root })
      .catch((err: { stdout?: string }) => { throw new Error(`the build failed:\n${err.stdout ?? String(err)}`) })
    await cp(path.join(root, 'package.json'), path.join(stage, 'package.json'))
    for (const entry of ['README.md', 'LICENSE', ...(pkg.files ?? [])]) {
      if (entry === 'dist' || entry.startsWith('dist/')) continue
      if (existsSync(path.join(root, entry))) await cp(path.join(root, entry), path.join(stage, entry), { recursive: true })
    }
    const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', stage], { cwd: stage })
    const [packed] = JSON.parse(stdout) as Array<{ filename: string, files: Array<{ path: string }> }>

    const installed = path.join(dir, 'node_modules', 'fastify-pow')
    await mkdir(installed, { recursive: true })
    await run('tar', ['-xzf', path.join(stage, packed.filename), '-C', installed, '--strip-components=1'])
    await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }, null, 2))
    const names = new Set([...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.peerDependencies ?? {}), ...link, 'node'])
    for (const name of names) {
      const types = `@types/${name.startsWith('@') ? name.slice(1).replace('/', '__') : name}`
      for (const linked of [name, types]) {
        const target = path.join(ROOT, 'node_modules', linked)
        if (!existsSync(target)) continue
        await mkdir(path.dirname(path.join(dir, 'node_modules', linked)), { recursive: true })
        await symlink(target, path.join(dir, 'node_modules', linked), 'junction')
      }
    }
    return { dir, files: packed.files.map((f) => f.path), cleanup }
  } catch (err) {
    await cleanup()
    throw err
  }
}

/**
 * Runs the jobs in `workers` processes of test/helpers/typecheck.ts (without tap's coverage,
 * under which TypeScript is three times slower); jobs with the same options are best given to
 * one worker, which parses the declarations once.
 */
export async function typecheck (jobs: TypecheckJob[], workers = Math.min(jobs.length, os.availableParallelism())): Promise<TypecheckResult[]> {
  const groups: TypecheckJob[][] = Array.from({ length: Math.max(1, workers) }, () => [])
  jobs.forEach((job, i) => groups[i % groups.length].push(job))
  const env = { ...process.env }
  delete env.NODE_V8_COVERAGE
  delete env.NODE_OPTIONS
  const results = await Promise.all(groups.filter((g) => g.length > 0).map(async (group) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'test', 'helpers', 'typecheck.ts')], { cwd: ROOT, env })
    child.stdin.end(JSON.stringify(group))
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
    if (code !== 0) throw new Error(`the type-check worker failed (${String(code)}):\n${stderr}`)
    return JSON.parse(stdout) as TypecheckResult[]
  }))
  const byId = new Map(results.flat().map((r) => [r.id, r]))
  return jobs.map((job) => byId.get(job.id) as TypecheckResult)
}
