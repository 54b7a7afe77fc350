/**
 * Type-checks programs for test/helpers/packed.ts, in a process of its own: under tap's coverage
 * TypeScript runs three times slower. Reads `TypecheckJob[]` as JSON on stdin, writes
 * `TypecheckResult[]` as JSON on stdout.
 *
 * A program is checked as `tsc --noEmit` with `skipLibCheck: false` would, but only the files a
 * job reports on are: the consumer's own, and with `report: 'package'` fastify-pow's declarations;
 * not those of Fastify, Node.js or other packages, which are not ours to fix and take most of
 * the time. Jobs with the same compiler options share their parsed declaration files.
 */
import path from 'node:path'
import ts from 'typescript'

export interface TypecheckJob {
  id: string
  /** The consumer project. */
  dir: string
  rootNames: string[]
  compilerOptions: Record<string, unknown>
  /** `'roots'`: diagnostics of the root files only; `'package'`: also of node_modules/fastify-pow. */
  report: 'roots' | 'package'
  /** Also list the optional properties of fastify-pow's argument types that refuse undefined. */
  optionalWithoutUndefined?: boolean
}

export interface TypecheckDiagnostic {
  /** Relative to the job's `dir`; absent for a global diagnostic. */
  file?: string
  /** 1-based. */
  line?: number
  column?: number
  code: number
  message: string
}

export interface TypecheckResult {
  id: string
  diagnostics: TypecheckDiagnostic[]
  /** As tsc prints them. */
  formatted: string
  optionalWithoutUndefined?: string[]
  ms: number
}

type Check = (rootNames: string[], reported: (fileName: string) => boolean) => { program: ts.Program, diagnostics: ts.Diagnostic[] }

function createChecker (dir: string, compilerOptions: Record<string, unknown>): Check {
  const { options, errors } = ts.convertCompilerOptionsFromJson(compilerOptions, dir)
  if (errors.length > 0) throw new Error(ts.flattenDiagnosticMessageText(errors[0].messageText, '\n'))
  const host = ts.createCompilerHost(options)
  const cache = new Map<string, ts.SourceFile | undefined>()
  const getSourceFile = host.getSourceFile
  host.getSourceFile = (fileName, languageVersionOrOptions, onError, shouldCreate) => {
    // The consumer's own files change from program to program.
    if (!/[/\\]node_modules[/\\]/.test(fileName)) return getSourceFile.call(host, fileName, languageVersionOrOptions, onError, shouldCreate)
    const nodeFormat = typeof languageVersionOrOptions === 'object' ? languageVersionOrOptions.impliedNodeFormat : undefined
    const key = `${fileName}\0${String(nodeFormat)}`
    if (!cache.has(key)) cache.set(key, getSourceFile.call(host, fileName, languageVersionOrOptions, onError, shouldCreate))
    return cache.get(key)
  }
  return (rootNames, reported) => {
    const program = ts.createProgram({ rootNames, options, host })
    const diagnostics = [...program.getOptionsDiagnostics(), ...program.getGlobalDiagnostics()]
    for (const file of program.getSourceFiles()) {
      if (reported(file.fileName)) diagnostics.push(...program.getSyntacticDiagnostics(file), ...program.getSemanticDiagnostics(file))
    }
    return { program, diagnostics }
  }
}

function run (jobs: TypecheckJob[]): TypecheckResult[] {
  const checkers = new Map<string, Check>()
  return jobs.map((job) => {
    const started = performance.now()
    const key = JSON.stringify([job.dir, job.compilerOptions])
    let check = checkers.get(key)
    if (check === undefined) {
      check = createChecker(job.dir, job.compilerOptions)
      checkers.set(key, check)
    }
    const roots = new Set(job.rootNames.map((f) => path.resolve(job.dir, f)))
    const packageDir = path.join(job.dir, 'node_modules', 'fastify-pow')
    const reported = (fileName: string): boolean => roots.has(path.resolve(fileName)) || (job.report === 'package' && inside(packageDir, fileName))
    const { program, diagnostics } = check([...roots], reported)
    const result: TypecheckResult = {
      id: job.id,
      diagnostics: diagnostics.map((d) => describe(d, job.dir)),
      formatted: ts.formatDiagnostics(diagnostics, { getCanonicalFileName: (f) => f, getCurrentDirectory: () => job.dir, getNewLine: () => '\n' }),
      ms: 0
    }
    if (job.optionalWithoutUndefined === true) result.optionalWithoutUndefined = optionalWithoutUndefined(program, packageDir)
    result.ms = Math.round(performance.now() - started)
    return result
  })
}

function inside (dir: string, fileName: string): boolean {
  const rel = path.relative(dir, fileName)
  return !rel.startsWith('..') && !path.isAbsolute(rel)
}

function describe (diagnostic: ts.Diagnostic, dir: string): TypecheckDiagnostic {
  const shown: TypecheckDiagnostic = { code: diagnostic.code, message: ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n') }
  if (diagnostic.file !== undefined) {
    shown.file = path.relative(dir, diagnostic.file.fileName).split(path.sep).join('/')
    if (diagnostic.start !== undefined) {
      const { line, character } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start)
      shown.line = line + 1
      shown.column = character + 1
    }
  }
  return shown
}

/**
 * The optional properties, in fastify-pow's declarations, that are declared without `undefined`
 * (under exactOptionalPropertyTypes, `?: T` refuses an explicit undefined): those of the
 * parameters of its exported functions, constructors and methods, of the methods of its
 * exported interfaces (a store's), of its exported `...Options` types, and of the object types
 * in these. Declarations marked `@internal` are left out.
 */
function optionalWithoutUndefined (program: ts.Program, packageDir: string): string[] {
  const checker = program.getTypeChecker()
  const own = (node: ts.Node): boolean => inside(packageDir, node.getSourceFile().fileName)
  const internal = (node: ts.Node): boolean => ts.getJSDocTags(node).some((tag) => tag.tagName.text === 'internal')
  const found = new Set<string>()
  const seen = new Set<ts.Type>()
  const acceptsUndefined = (type: ts.Type): boolean => type.isUnion()
    ? type.types.some(acceptsUndefined)
    : (type.flags & (ts.TypeFlags.Undefined | ts.TypeFlags.Any | ts.TypeFlags.Unknown | ts.TypeFlags.Void)) !== 0

  function visitType (type: ts.Type, where: string): void {
    if (seen.has(type)) return
    seen.add(type)
    if (type.isUnionOrIntersection()) {
      for (const member of type.types) visitType(member, where)
      return
    }
    if ((type.flags & ts.TypeFlags.Object) === 0 || type.getCallSignatures().length > 0 || type.getConstructSignatures().length > 0) return
    if (((type.getSymbol()?.flags ?? 0) & ts.SymbolFlags.Class) !== 0) return
    for (const prop of type.getProperties()) {
      const declaration = prop.valueDeclaration
      if (declaration === undefined || !own(declaration) || !(ts.isPropertySignature(declaration) || ts.isPropertyDeclaration(declaration))) continue
      const parent = declaration.parent
      const owner = (ts.isInterfaceDeclaration(parent) || ts.isClassDeclaration(parent)) && parent.name !== undefined ? parent.name.text : where
      const declared = declaration.type === undefined ? checker.getTypeOfSymbol(prop) : checker.getTypeFromTypeNode(declaration.type)
      if ((prop.flags & ts.SymbolFlags.Optional) !== 0 && !acceptsUndefined(declared)) found.add(`${owner}.${prop.name}`)
      visitType(declared, `${owner}.${prop.name}`)
    }
  }

  function visitSignatures (type: ts.Type, kind: ts.SignatureKind, where: string): void {
    for (const signature of checker.getSignaturesOfType(type, kind)) {
      if (signature.declaration !== undefined && internal(signature.declaration)) continue
      for (const parameter of signature.parameters) visitType(checker.getTypeOfSymbol(parameter), `${where}(${parameter.name})`)
    }
  }

  function visitMethods (type: ts.Type, name: string): void {
    for (const member of type.getProperties()) {
      const declaration = member.valueDeclaration
      if (declaration === undefined || !own(declaration) || internal(declaration) || (member.flags & ts.SymbolFlags.Method) === 0) continue
      visitSignatures(checker.getTypeOfSymbol(member), ts.SignatureKind.Call, `${name}.${member.name}`)
    }
  }

  const index = program.getSourceFile(path.join(packageDir, 'dist', 'lib', 'index.d.ts'))
  const moduleSymbol = index === undefined ? undefined : checker.getSymbolAtLocation(index)
  if (moduleSymbol === undefined) return ['(dist/lib/index.d.ts is not in the program)']
  for (const exported of checker.getExportsOfModule(moduleSymbol)) {
    const symbol = (exported.flags & ts.SymbolFlags.Alias) !== 0 ? checker.getAliasedSymbol(exported) : exported
    const name = exported.name
    if ((symbol.flags & ts.SymbolFlags.Class) !== 0) {
      const statics = checker.getTypeOfSymbol(symbol)
      visitSignatures(statics, ts.SignatureKind.Construct, `new ${name}`)
      visitMethods(statics, name)
      visitMethods(checker.getDeclaredTypeOfSymbol(symbol), name)
    } else if ((symbol.flags & ts.SymbolFlags.Function) !== 0) {
      visitSignatures(checker.getTypeOfSymbol(symbol), ts.SignatureKind.Call, name)
    } else if ((symbol.flags & (ts.SymbolFlags.Interface | ts.SymbolFlags.TypeAlias)) !== 0 && name.endsWith('Options')) {
      visitType(checker.getDeclaredTypeOfSymbol(symbol), name)
    } else if ((symbol.flags & ts.SymbolFlags.Interface) !== 0) {
      visitMethods(checker.getDeclaredTypeOfSymbol(symbol), name)
    }
  }
  return [...found].sort()
}

let input = ''
process.stdin.setEncoding('utf8')
process.stdin.on('data', (chunk: string) => { input += chunk })
process.stdin.on('end', () => {
  process.stdout.write(JSON.stringify(run(JSON.parse(input) as TypecheckJob[])))
})
