import { existsSync } from 'node:fs'
import { chromium, type Browser } from 'playwright-core'
import t0, { test } from 'tap'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync']

/**
 * Debian's Chromium, headless, closed when the test file ends; or null when it is not installed,
 * after adding a test that says so: a failure under CI=true, a loud skip otherwise.
 */
export async function launchChromium (what: string): Promise<Browser | null> {
  if (!existsSync(CHROMIUM)) {
    const message = `Chromium not found at ${CHROMIUM}: install it with \`apt-get install -y chromium\` (.ci/run does this)`
    if (process.env.CI === 'true') {
      test(`${what} need Chromium`, async (t) => { t.fail(message) })
    } else {
      console.error(`\n!!! SKIPPING THE ${what.toUpperCase()}: ${message}\n`)
      test(what, { skip: message }, async () => {})
    }
    return null
  }
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS })
  t0.teardown(async () => { await browser.close() })
  return browser
}
