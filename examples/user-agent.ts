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

/**
 * The longest user agent the example keeps with a device, in characters. The devices page needs
 * only the browser and system parsed at sign-in; the start of the header is kept for support
 * questions ("which build was that?"). Most real agents fit; a long, padded or hostile one is cut,
 * so a sign-in stores under 2 kB of JSON whatever the header holds (even if every character
 * needs a 6-byte escape), below the plugin's maxMetadataBytes (4096) that would otherwise refuse
 * the sign-in with a 400.
 */
export const USER_AGENT_MAX_LENGTH = 200
// Parsed names and IPs are short; the caps only matter for junk (a 500-digit "Chrome/999…").
const NAME_MAX_LENGTH = 60
const IP_MAX_LENGTH = 64

/**
 * What the example stores with a sign-in, and what the devices page and the API show. (A type,
 * not an interface, so that it is a `PowMetadata` record as it is.)
 */
export type DeviceMetadata = {
  browser: string
  os: string
  /** The start of the User-Agent header, at most USER_AGENT_MAX_LENGTH characters (cut ones end in "…"). */
  userAgent: string | null
  ip: string | null
}

/** `text` in at most `max` characters: a longer one is cut and ends in "…", never in half a surrogate pair. */
export function truncate (text: string, max: number): string {
  if (text.length <= max) return text
  let end = max - 1
  // A UTF-16 high surrogate without its low half would be an unpaired one.
  const last = text.charCodeAt(end - 1)
  if (last >= 0xd800 && last <= 0xdbff) end--
  return text.slice(0, end) + '…'
}

/** The metadata a sign-in stores: parsed browser and system, a cut user agent, the IP. */
export function deviceMetadata (userAgent: string | undefined, ip: string | undefined): DeviceMetadata {
  const { browser, os } = describeUserAgent(userAgent)
  return {
    browser: truncate(browser, NAME_MAX_LENGTH),
    os: truncate(os, NAME_MAX_LENGTH),
    userAgent: userAgent === undefined ? null : truncate(userAgent, USER_AGENT_MAX_LENGTH),
    ip: ip === undefined ? null : truncate(ip, IP_MAX_LENGTH)
  }
}

/**
 * A device's stored metadata as the pages and the API show it. Anything may be there (devices
 * signed in before the example stored parsed names, or by other code), so each field is checked;
 * without stored names the stored user agent is parsed.
 */
export function readDeviceMetadata (metadata: Record<string, unknown>): DeviceMetadata {
  const userAgent = typeof metadata.userAgent === 'string' ? metadata.userAgent : null
  const parsed = typeof metadata.browser === 'string' && typeof metadata.os === 'string'
    ? { browser: metadata.browser, os: metadata.os }
    : describeUserAgent(userAgent)
  return {
    browser: parsed.browser,
    os: parsed.os,
    userAgent,
    ip: typeof metadata.ip === 'string' ? metadata.ip : null
  }
}
