/**
 * Every ```ts block of the documents below compiles, against the packed package
 * (test/helpers/packed.ts), under `strict` and `exactOptionalPropertyTypes`.
 *
 * Each block is a module of its own (ESM under nodenext: top-level await works) and compiles on
 * its own, so it can be pasted into an app: what it uses and does not define, such as the app's
 * `checkPassword`, it declares (`declare function checkPassword (email: string, password:
 * string): Promise<boolean>`), and it merges its own `PowUser`. A block that is not meant to
 * compile uses another fence language (```js, ```text).
 */
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { builtinModules } from 'node:module'
import path from 'node:path'
import t from 'tap'
import { packedProject, ROOT, typecheck } from './helpers/packed.js'

const DOCUMENTS = [
  'README.md',
  'docs/postgres.md',
  'docs/recipes.md',
  'docs/redis.md',
  'docs/sessions.md',
  'examples/README.md'
]
// Where other documents may be: one with a ```ts block must be in DOCUMENTS.
const DOCUMENT_DIRS = ['.', 'docs', 'examples', 'benchmarks']
const TS = new Set(['ts', 'typescript'])

const COMPILER_OPTIONS = {
  target: 'es2022',
  module: 'nodenext',
  moduleResolution: 'nodenext',
  strict: true,
  exactOptionalPropertyTypes: true,
  skipLibCheck: false,
  noEmit: true
}

interface Block {
  /** `README.md:47`: the line of the opening fence. */
  name: string
  document: string
  /** The line of the opening fence (1-based); the code starts on the next. */
  line: number
  code: string
}

/** The fenced blocks of `markdown` in one of `languages`; throws on a fence left open. */
function blocks (document: string, markdown: string, languages: Set<string>): Block[] {
  const found: Block[] = []
  const lines = markdown.split(/\r?\n/)
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([^\s`]*)/.exec(lines[i])
    if (open === null) continue
    const [, indent, fence, language] = open
    const start = i
    const code: string[] = []
    for (i++; i < lines.length; i++) {
      if (new RegExp(`^\\s*${fence[0]}{${fence.length},}\\s*$`).test(lines[i])) break
      code.push(lines[i].startsWith(indent) ? lines[i].slice(indent.length) : lines[i].trimStart())
    }
    if (i === lines.length) throw new Error(`${document}:${start + 1}: the fence is not closed`)
    if (languages.has(language.toLowerCase())) found.push({ name: `${document}:${start + 1}`, document, line: start + 1, code: code.join('\n') + '\n' })
  }
  return found
}

/** The packages a block imports, by name (`@scope/name` or `name`), fastify-pow and node: builtins left out. */
function imported (code: string): string[] {
  const names = new Set<string>()
  for (const [, specifier] of code.matchAll(/(?:\bfrom\s+|\bimport\s*\(?\s*|\brequire\s*\(\s*)['"]([^'"]+)['"]/g)) {
    if (specifier.startsWith('.') || specifier.startsWith('node:') || builtinModules.includes(specifier)) continue
    const name = specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0]
    if (name !== 'fastify-pow') names.add(name)
  }
  return [...names]
}

const started = performance.now()
const all: Block[] = []
for (const document of DOCUMENTS) all.push(...blocks(document, await readFile(path.join(ROOT, document), 'utf8'), TS))

const unlisted: string[] = []
for (const dir of DOCUMENT_DIRS) {
  for (const entry of await readdir(path.join(ROOT, dir)).catch(() => [])) {
    const document = path.posix.join(dir, entry)
    if (!entry.endsWith('.md') || DOCUMENTS.includes(document)) continue
    if (blocks(document, await readFile(path.join(ROOT, document), 'utf8'), TS).length > 0) unlisted.push(document)
  }
}

const project = await packedProject({ link: [...new Set(all.flatMap((block) => imported(block.code)))] })
let keep = false
t.teardown(async () => {
  if (keep) t.comment(`consumer project kept in ${project.dir}`)
  else await project.cleanup()
  t.comment(`readme: ${all.length} blocks in ${Math.round(performance.now() - started)} ms`)
})
const files = all.map((block) => `${block.document.replace(/[/.]/g, '-')}-${block.line}.ts`)
for (const [i, block] of all.entries()) await writeFile(path.join(project.dir, files[i]), block.code)
await writeFile(path.join(project.dir, 'tsconfig.json'), JSON.stringify({ compilerOptions: COMPILER_OPTIONS }, null, 2))
const checked = await typecheck(all.map((block, i) => ({
  id: block.name, dir: project.dir, rootNames: [files[i]], compilerOptions: COMPILER_OPTIONS, report: 'roots' as const
})))

t.same(unlisted, [], 'every document with a ```ts block is in DOCUMENTS')

for (const [i, block] of all.entries()) {
  const { diagnostics, ms } = checked[i]
  // As `README.md:52:9 TS2339 message`, at the line in the document.
  const shown = diagnostics.map((d) => {
    const at = d.file === files[i] && d.line !== undefined ? `${block.document}:${block.line + d.line}:${d.column ?? 0}` : (d.file ?? 'tsc')
    return `${at} TS${d.code} ${d.message}`
  })
  if (shown.length > 0) keep = true
  t.same(shown, [], `${block.name} compiles (${ms} ms; as ${files[i]} in the consumer project)`)
}
