// The package as users import it (resolved through package.json "exports" to dist/).
import Fastify from 'fastify'
import pow, { type PowUser } from 'fastify-pow'

declare module 'fastify-pow' {
  interface PowUser { id: number, email: string }
}

const app = Fastify()
app.register(pow, { secret: 'x'.repeat(32) })
app.get('/', async (request) => {
  const user: PowUser | null = request.powSession.user
  const email: string | undefined = user?.email
  // @ts-expect-error the merged user type has no such field
  void user?.nope
  return { email }
})
