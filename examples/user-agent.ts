/**
 * A small user-agent reader for the devices page: browser and operating system, enough to tell
 * a person's devices apart. Not a full parser: unknown agents fall back to "Unknown browser".
 */
export interface Device {
  browser: string
  os: string
}

const BROWSERS: Array<[RegExp, string]> = [
  [/\bEdg(?:e|A|iOS)?\/(\d+)/, 'Edge'],
  [/\bOPR\/(\d+)/, 'Opera'],
  [/\bSamsungBrowser\/(\d+)/, 'Samsung Internet'],
  [/\bFirefox\/(\d+)/, 'Firefox'],
  [/\bFxiOS\/(\d+)/, 'Firefox'],
  [/\bHeadlessChrome\/(\d+)/, 'Headless Chrome'],
  [/\bCriOS\/(\d+)/, 'Chrome'],
  [/\bChrome\/(\d+)/, 'Chrome'],
  [/\bVersion\/(\d+)(?:\.\d+)*.*\bSafari\//, 'Safari'],
  [/\bcurl\/(\d+)/, 'curl']
]

const SYSTEMS: Array<[RegExp, string]> = [
  [/\b(?:iPhone|iPad|iPod)\b/, 'iOS'],
  [/\bAndroid\b/, 'Android'],
  [/\bCrOS\b/, 'ChromeOS'],
  [/\bWindows\b/, 'Windows'],
  [/\bMac OS X\b|\bMacintosh\b/, 'macOS'],
  [/\bLinux\b|\bX11\b/, 'Linux']
]

export function describeUserAgent (userAgent: string | null | undefined): Device {
  // Real user agents are a few hundred characters; the cap keeps the patterns cheap on junk.
  const ua = (userAgent ?? '').slice(0, 512)
  let browser = 'Unknown browser'
  for (const [pattern, name] of BROWSERS) {
    const match = pattern.exec(ua)
    if (match !== null) {
      browser = `${name} ${match[1]}`
      break
    }
  }
  let os = 'unknown system'
  for (const [pattern, name] of SYSTEMS) {
    if (pattern.test(ua)) {
      os = name
      break
    }
  }
  return { browser, os }
}
