/** Numbers as the panel shows them: token counts compact, dollar amounts never rounded to zero. */
import { t } from "./i18n";
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
export function cachedNote(u: Usage): string {
  return u.cache_read_tokens ? t("usage.cached", { cached: compactTokens(u.cache_read_tokens) }) : "";
}

/** A usage line, "1.3k in (1.2k cached) · 20 out", in the three parts around its cached note, so
 * a narrow panel can drop that note first (styles.css); `text` is the whole line. */
export function usageParts(u: Usage): { before: string; cached: string; after: string; text: string } {
  const cut = "\u0000";
  const [before, after = ""] = t("usage.tokens", { input: compactTokens(u.input_tokens), cached: cut, output: compactTokens(u.output_tokens) }).split(cut);
  const cached = cachedNote(u);
  return { before, cached, after, text: before + cached + after };
}
