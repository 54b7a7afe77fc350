/**
 * The packed package's declarations, as a strict TypeScript project sees them under each module
 * resolution (`skipLibCheck: false`, so a broken declaration in fastify-pow is an error, not an
 * `any`), and `require('fastify-pow')` from CommonJS. test/helpers/packed.ts packs and installs
 * the package; the consumer project is kept (and printed) when a check fails, to run `npx tsc -p
 * tsconfig.<name>.json` in it.
 */
import { execFile } from 'node:child_process'
import { cp, copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { packedProject, typecheck } from './helpers/packed.js'

const run = promisify(execFile)

// One file for every configuration: no top-level await (CommonJS), and `import ... from` only.
const CONSUMER = `import Fastify from 'fastify'
import pow, {
  MemoryStore, PostgresStore, RedisStore, type PowOptions, type PowUser,
  PowMetadataTooLargeError, PowNotSignedInError, PowOptionError, PowSignInRevokedError, PowStoreError
} from 'fastify-pow'
import * as api from 'fastify-pow'
import { Redis } from 'ioredis'
import { Pool } from 'pg'

declare module 'fastify-pow' {
  interface PowUser { id: number, email: string }
}

interface LoginBody { email: string, password: string, remember?: boolean }

const redis = new Redis({ lazyConnect: true })
const options: PowOptions = {
  secret: process.env.POW_SECRET ?? 'x'.repeat(32),
  store: new RedisStore(redis, { namespace: process.env.POW_NAMESPACE, commandTimeout: 2000 }),
  userId: (user) => user.id,
  reloadUser: async (user) => user.id > 0 ? user : null,
  session: { ttl: 30 * 60_000 },
  persistentSession: { ttl: 30 * 24 * 60 * 60_000 }
}
const stores = [new PostgresStore(new Pool(), { schema: process.env.POW_SCHEMA, createTables: true }), new MemoryStore()]

const app = Fastify()
void app.register(pow, options)

app.post<{ Body: LoginBody }>('/login', async (request) => {
  const user: PowUser = { id: 1, email: request.body.email }
  await request.powSession.create(user, {
    persistent: request.body.remember,
    metadata: { userAgent: request.headers['user-agent'] ?? null, ip: request.ip }
  })
  await request.powSession.create(user, { persistent: true, metadata: { ip: request.ip } })
  return { user, stores: stores.length }
})

app.get('/me', async (request) => {
  const user: PowUser | null = request.powSession.user
  // @ts-expect-error the merged PowUser has no such field
  void user?.nope
  return { email: user?.email }
})

app.post('/password', async (request) => {
  const user = request.powSession.user
  if (user === null) throw new PowNotSignedInError()
  const ended: string[] = await app.pow.credentials.deleteUserSessions(user, { except: request.powSession.metadata?.fingerprint })
  const all: string[] = await app.pow.credentials.deleteUserSessions(user.id)
  return { ended, all }
})

export function describeError (err: unknown): string {
  if (err instanceof PowNotSignedInError) {
    const code: string = err.code
    const status: number | undefined = err.statusCode
    return code + String(status) + err.message
  }
  return 'other'
}

export const errors: Error[] = [
  new PowNotSignedInError(), new PowOptionError(), new PowStoreError(), new PowSignInRevokedError(), new PowMetadataTooLargeError()
]

// Every error class: typed (not \`any\`), constructed with no arguments, with a code.
type IsAny<T> = 0 extends 1 & T ? true : false
type ErrorClass = Extract<keyof typeof api, \`\${string}Error\`>
type ErrorCheck = {
  [K in ErrorClass]: IsAny<typeof api[K]> extends true ? 'any' : typeof api[K] extends new () => Error & { code: string } ? 'ok' : 'needs arguments'
}
export const errorClasses: Record<ErrorClass, 'ok'> = {} as ErrorCheck

// And the ones the README names.
// @ts-expect-error no such static member
void PowNotSignedInError.nope
// @ts-expect-error no such property
void new PowStoreError().nope
// @ts-expect-error not a number
export const notANumber: number = new PowOptionError()
`

const STRICT = { target: 'es2022', strict: true, exactOptionalPropertyTypes: true, skipLibCheck: false, noEmit: true }

// The four resolutions, and a CommonJS file under nodenext (require of an ES module, TS 5.8+).
const CONFIGS: Array<{ name: string, file: string, options: Record<string, unknown> }> = [
  { name: 'nodenext', file: 'consumer.ts', options: { module: 'nodenext', moduleResolution: 'nodenext' } },
  { name: 'node16', file: 'consumer.ts', options: { module: 'node16', moduleResolution: 'node16' } },
  { name: 'bundler', file: 'consumer.ts', options: { module: 'esnext', moduleResolution: 'bundler' } },
  // esModuleInterop: Fastify's own dependency pino needs it (TS1259 in pino.d.ts without); fastify-pow does not.
  { name: 'node10', file: 'consumer.ts', options: { module: 'commonjs', moduleResolution: 'node10', esModuleInterop: true } },
  { name: 'nodenext-cjs', file: 'consumer.cts', options: { module: 'nodenext', moduleResolution: 'nodenext' } }
]

// An app on the default MemoryStore, in a project without the optional peers ioredis and pg.
const MINIMAL = `import Fastify from 'fastify'
import pow, { MemoryStore } from 'fastify-pow'

const app = Fastify()
await app.register(pow, { secret: 'x'.repeat(32), store: new MemoryStore() })
app.get('/', { onRequest: app.pow.requireUser }, async (request) => ({ user: request.powSession.requireUser() }))
`

// Loads the package from CommonJS and serves a request with it.
const REQUIRE = `const Fastify = require('fastify')
let pow
try {
  pow = require('fastify-pow')
} catch (err) {
  console.log(JSON.stringify({ error: err.code ?? String(err) }))
  process.exit(0)
}
const app = Fastify()
app.register(pow.default, { secret: 'x'.repeat(32) })
app.get('/', async (request) => ({ user: request.powSession.user }))
app.inject('/').then(async (res) => {
  const esm = await import('fastify-pow')
  console.log(JSON.stringify({
    status: res.statusCode,
    body: res.json(),
    esModule: pow.__esModule,
    sameAsNamed: pow.default === pow.fastifyPow,
    sameAsImport: pow.default === esm.default,
    exports: Object.keys(pow)
  }))
  await app.close()
})
`

const started = performance.now()
const project = await packedProject({ link: ['ioredis', 'pg'] })
let keep = false
t.teardown(async () => {
  if (keep) t.comment(`consumer project kept in ${project.dir}`)
  else await project.cleanup()
  t.comment(`package-types: ${Math.round(performance.now() - started)} ms`)
})
const { dir } = project
await writeFile(path.join(dir, 'consumer.ts'), CONSUMER)
await copyFile(path.join(dir, 'consumer.ts'), path.join(dir, 'consumer.cts'))

for (const { name, file, options } of CONFIGS) {
  await writeFile(path.join(dir, `tsconfig.${name}.json`), JSON.stringify({ compilerOptions: { ...STRICT, ...options }, files: [file] }, null, 2))
}
// The same package in a project with fastify-pow's dependencies and fastify only (no ioredis, no pg).
const minimal = await mkdtemp(path.join(os.tmpdir(), 'fastify-pow-minimal-'))
t.teardown(async () => { if (!keep) await rm(minimal, { recursive: true, force: true }) })
await cp(path.join(dir, 'node_modules', 'fastify-pow'), path.join(minimal, 'node_modules', 'fastify-pow'), { recursive: true })
for (const scope of ['', ...(await readdir(path.join(dir, 'node_modules'))).filter((n) => n.startsWith('@'))]) {
  for (const name of await readdir(path.join(dir, 'node_modules', scope))) {
    const linked = path.join(scope, name)
    if (name.startsWith('@') || ['fastify-pow', 'ioredis', 'pg', path.join('@types', 'pg')].includes(linked)) continue
    await mkdir(path.join(minimal, 'node_modules', scope), { recursive: true })
    await symlink(path.join(dir, 'node_modules', linked), path.join(minimal, 'node_modules', linked), 'junction')
  }
}
await writeFile(path.join(minimal, 'package.json'), JSON.stringify({ name: 'minimal', private: true, type: 'module' }))
await writeFile(path.join(minimal, 'minimal.ts'), MINIMAL)

// Both nodenext jobs first, so that one worker parses their declarations once.
const checked = await typecheck([...CONFIGS, { name: 'without-peers', file: 'minimal.ts', options: { module: 'nodenext', moduleResolution: 'nodenext' } }].map(({ name, file, options }) => ({
  id: name,
  dir: name === 'without-peers' ? minimal : dir,
  rootNames: [file],
  compilerOptions: { ...STRICT, ...options },
  report: 'package' as const,
  optionalWithoutUndefined: name === 'nodenext'
})))

t.test('the tarball holds every "files" entry and the declarations', async (t) => {
  const pkg = JSON.parse(await readFile(path.join(dir, 'node_modules/fastify-pow/package.json'), 'utf8')) as { files: string[], types: string }
  for (const entry of pkg.files) t.ok(project.files.some((f) => f === entry || f.startsWith(entry + '/')), entry)
  t.ok(project.files.includes(pkg.types.replace(/^\.\//, '')), pkg.types)
})

for (const [i, { name, options }] of CONFIGS.entries()) {
  t.test(`types under ${name} (module ${String(options.module)}, moduleResolution ${String(options.moduleResolution)})`, async (t) => {
    const { formatted, ms } = checked[i]
    if (formatted !== '') keep = true
    t.equal(formatted, '', `tsc -p tsconfig.${name}.json: no errors in the consumer or in fastify-pow's declarations (${ms} ms)`)
  })
}

t.test('types in a project without the optional peers (ioredis, pg)', async (t) => {
  const { formatted, ms } = checked[CONFIGS.length]
  if (formatted !== '') keep = true
  t.equal(formatted, '', `no errors in the consumer or in fastify-pow's declarations (${ms} ms); project in ${minimal}`)
})

t.test('every optional property of an option or argument type accepts undefined', async (t) => {
  const found = checked[0].optionalWithoutUndefined
  if (found?.length !== 0) keep = true
  t.same(found, [], 'under exactOptionalPropertyTypes, `?: T` refuses an explicit undefined: declare `?: T | undefined`')
})

t.test('require("fastify-pow") from CommonJS', async (t) => {
  await writeFile(path.join(dir, 'require.cjs'), REQUIRE)
  const env = { ...process.env }
  delete env.NODE_V8_COVERAGE
  delete env.NODE_OPTIONS
  const { stdout, stderr } = await run(process.execPath, ['require.cjs'], { cwd: dir, env })
  const result = JSON.parse(stdout) as Record<string, unknown>
  if (process.features.require_module) {
    t.match(result, { status: 200, body: { user: null }, esModule: true, sameAsNamed: true, sameAsImport: true }, `Node.js ${process.version} requires the ES module`)
    t.ok((result.exports as string[]).includes('PowNotSignedInError'), 'with the named exports')
    if (stderr !== '') t.comment(`Node.js ${process.version} printed: ${stderr}`)
  } else {
    t.same(result, { error: 'ERR_REQUIRE_ESM' }, `Node.js ${process.version} cannot require an ES module`)
  }
})
