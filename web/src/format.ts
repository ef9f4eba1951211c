/** Numbers and times as the panel shows them: token counts compact, dollar amounts never rounded
 * to zero, a chat's last activity relative to now. */
import { intlLocale, t } from "./i18n";
import type { Usage } from "./protocol";

/** 950 → "950", 12_300 → "12.3k", 2_500_000 → "2.5M". */
export function compactTokens(n: number): string {
  return n >= 1_000_000 ? `${(n / 1_000_000).toFixed(1)}M` : n >= 1000 ? `${(n / 1000).toFixed(1)}k` : String(n);
}

/** US dollars without the sign: cents from ten cents up ("12.34", "0.50"), four decimals from a
 * cent ("0.0123"), below that two significant digits ("0.0048", "0.001"), so a small amount or a
 * small budget never reads "0.00". */
export function dollars(usd: number): string {
  if (usd === 0) return "0";
  if (usd >= 0.1) return usd.toFixed(2);
  if (usd >= 0.01) return usd.toFixed(4);
  return Number(usd.toPrecision(2)).toString();
}

/** The part of the input tokens the provider's prompt cache served, " (1.2k cached)", or "" when it served none. */
function cachedNote(u: Usage): string {
  return u.cache_read_tokens ? t("usage.cached", { cached: compactTokens(u.cache_read_tokens) }) : "";
}

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;

/** Whole calendar days (local time) from `then` to `now`: 0 today, 1 yesterday. */
function calendarDays(then: Date, now: Date): number {
  const midnight = (d: Date) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  return Math.round((midnight(now) - midnight(then)) / (24 * HOUR_MS)); // round: a DST day is 23 or 25 h
}

/** Says when chats were last active, relative to `now`. Made once per list: each date format
 * costs about 0.1 ms to make, a hundred rows' a frame's worth. */
export function activityClock(now: number = Date.now()) {
  const locale = intlLocale();
  const day = new Intl.DateTimeFormat(locale, { month: "short", day: "numeric" });
  const dayOfYear = new Intl.DateTimeFormat(locale, { year: "numeric", month: "short", day: "numeric" });
  const moment = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short" });
  const today = new Date(now);
  return {
    /** `updatedAt` (seconds since the epoch): "just now", "5 min ago", "3 h ago" (today),
     * "yesterday", "3 days ago", then the date ("May 8"; "Dec 30, 2025" in another year). */
    since(updatedAt: number): string {
      const then = new Date(updatedAt * 1000);
      const ago = now - then.getTime();
      if (ago < MINUTE_MS) return t("time.justNow"); // a server clock ahead of this one too
      if (ago < HOUR_MS) return t("time.minutes", { n: Math.floor(ago / MINUTE_MS) });
      const days = calendarDays(then, today);
      if (days <= 0) return t("time.hours", { n: Math.floor(ago / HOUR_MS) });
      if (days === 1) return t("time.yesterday");
      if (days < 7) return t("time.days", { n: days });
      return (then.getFullYear() === today.getFullYear() ? day : dayOfYear).format(then);
    },
    /** The date and time in full, for a tooltip. */
    at: (updatedAt: number): string => moment.format(updatedAt * 1000),
  };
}

/** A usage line, "1.3k in (1.2k cached) · 20 out", in the three parts around its cached note, so
 * a narrow panel can drop that note first (styles.css); `text` is the whole line. */
export function usageParts(u: Usage): { before: string; cached: string; after: string; text: string } {
  const cut = "\u0000";
  const [before, after = ""] = t("usage.tokens", { input: compactTokens(u.input_tokens), cached: cut, output: compactTokens(u.output_tokens) }).split(cut);
  const cached = cachedNote(u);
  return { before, cached, after, text: before + cached + after };
}
