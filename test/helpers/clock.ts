import { install } from '@sinonjs/fake-timers'

export type InstalledClock = ReturnType<typeof install>
import type { Test } from 'tap'

/**
 * Fakes Date only: TTL and renewal logic reads Date.now(), while Fastify's own timers and
 * promises keep running on the real clock. Uninstalled when the test ends.
 */
export function fakeClock (t: Test, now = Date.UTC(2026, 0, 1)): InstalledClock {
  const clock = install({ now, toFake: ['Date'] })
  t.teardown(() => clock.uninstall())
  return clock
}
