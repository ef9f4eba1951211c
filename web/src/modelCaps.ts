/**
 * A model's caps as the provider settings edit them: the form's text to and from `ModelCaps`,
 * checked against the server's limits (core/protocol.py), and what a cache price left unset costs
 * (core/providers/profiles.py `_CACHE_SHARES`). Imports protocol and the i18n key type only.
 */
import type { MessageKey } from "./i18n";
import { MAX_CONTEXT_TOKENS, MAX_PRICE, MIN_CONTEXT_TOKENS, type ModelCaps, type ProviderKind, type ProviderProfile } from "./protocol";

/** The share of `input_price` that an unset cache read and cache write price cost, by provider
 * kind. Other kinds report no cached tokens, and there an unset price is the input price. */
export const CACHE_SHARES: Readonly<Partial<Record<ProviderKind, readonly [read: number, write: number]>>> = {
  anthropic: [0.1, 1.25],
  openai: [0.5, 1.0],
};

/** `ModelCaps`' defaults: what a model declared with nothing else gets. */
export const DEFAULT_CAPS: Readonly<ModelCaps> = {
  tools: true, vision: false, context_tokens: 32_000, input_price: 0, output_price: 0, cache_read_price: null, cache_write_price: null,
};

export type CacheField = "cache_read_price" | "cache_write_price";
export type PriceField = "input_price" | "output_price" | CacheField;
export type NumberField = "context_tokens" | PriceField;
export const PRICE_FIELDS: readonly PriceField[] = ["input_price", "output_price", "cache_read_price", "cache_write_price"];
export const NUMBER_FIELDS: readonly NumberField[] = ["context_tokens", ...PRICE_FIELDS];
/** Each price's name, on a model's card and in its form alike. */
export const PRICE_LABELS: Readonly<Record<PriceField, MessageKey>> = {
  input_price: "models.input",
  output_price: "models.output",
  cache_read_price: "models.cacheRead",
  cache_write_price: "models.cacheWrite",
};
export const isCacheField = (field: PriceField): field is CacheField => field === "cache_read_price" || field === "cache_write_price";

/** Python's `round(x, 9)`, as the server rounds a default cache price. */
const round9 = (x: number) => Math.round(x * 1e9) / 1e9;

/** What an unset cache price costs for a model of `kind` whose input costs `inputPrice`. */
export function defaultCachePrice(kind: ProviderKind, inputPrice: number, field: CacheField): number {
  const share = CACHE_SHARES[kind]?.[field === "cache_read_price" ? 0 : 1];
  return share === undefined ? inputPrice : Math.min(round9(inputPrice * share), MAX_PRICE);
}

/**
 * The caps a model's form starts from: those declared for it; else those the server uses for it
 * now (the model list's), whose cache prices are left unset where they are only the kind's
 * default, so that they keep following the input price; else `ModelCaps`' defaults.
 */
export function startingCaps(kind: ProviderKind, declared: ModelCaps | undefined, listed: ModelCaps | null | undefined): ModelCaps {
  if (declared) return { ...declared };
  if (!listed) return { ...DEFAULT_CAPS };
  const own = (field: CacheField) => {
    const price = listed[field];
    return price == null || Math.abs(price - defaultCachePrice(kind, listed.input_price, field)) < 1e-9 ? null : price;
  };
  return { ...listed, cache_read_price: own("cache_read_price"), cache_write_price: own("cache_write_price") };
}

/** The form's fields: the numbers as typed. */
export interface CapsDraft {
  tools: boolean;
  vision: boolean;
  context_tokens: string;
  input_price: string;
  output_price: string;
  cache_read_price: string;
  cache_write_price: string;
}

export function toDraft(caps: ModelCaps): CapsDraft {
  const text = (n: number | null | undefined) => (n == null ? "" : String(n));
  return {
    tools: caps.tools,
    vision: caps.vision,
    context_tokens: String(caps.context_tokens),
    input_price: text(caps.input_price),
    output_price: text(caps.output_price),
    cache_read_price: text(caps.cache_read_price),
    cache_write_price: text(caps.cache_write_price),
  };
}

/** A number as typed: null when empty, NaN when not a plain decimal number (no hex, no Infinity).
 * A count may group its thousands ("128,000"). */
export function parseNumber(text: string, grouped = false): number | null {
  const s = grouped ? text.replace(/[\s,_]/g, "") : text.trim();
  if (s === "") return null;
  return /^\+?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(s) ? Number(s) : NaN;
}

export type DraftErrors = Partial<Record<NumberField, MessageKey>>;
export type DraftOutcome = { ok: true; caps: ModelCaps } | { ok: false; errors: DraftErrors };

/** The caps a draft stands for, or what is wrong with each field, by the server's limits. An
 * empty input or output price is 0 (`ModelCaps`' default); an empty cache price is unset. */
export function fromDraft(d: CapsDraft): DraftOutcome {
  const errors: DraftErrors = {};
  const context = parseNumber(d.context_tokens, true);
  if (context === null || !Number.isInteger(context) || context < MIN_CONTEXT_TOKENS || context > MAX_CONTEXT_TOKENS) {
    errors.context_tokens = "models.contextRange";
  }
  const price = (field: PriceField): number | null => {
    const n = parseNumber(d[field]);
    if (n !== null && !(n >= 0 && n <= MAX_PRICE)) errors[field] = "models.priceRange";
    return n;
  };
  const caps: ModelCaps = {
    tools: d.tools,
    vision: d.vision,
    context_tokens: context ?? 0,
    input_price: price("input_price") ?? 0,
    output_price: price("output_price") ?? 0,
    cache_read_price: price("cache_read_price"),
    cache_write_price: price("cache_write_price"),
  };
  return Object.keys(errors).length ? { ok: false, errors } : { ok: true, caps };
}

/** The context an Ollama profile runs its models with (`extra.options.num_ctx`), whatever they declare. */
export function ollamaNumCtx(profile: ProviderProfile): number | null {
  const options = profile.kind === "ollama" ? profile.extra.options : null;
  const n = options && typeof options === "object" ? (options as Record<string, unknown>).num_ctx : null;
  return typeof n === "number" && Number.isInteger(n) && n >= MIN_CONTEXT_TOKENS ? n : null;
}

/** A price as the list shows it: no float noise (0.30000000000000004 → "0.3"). */
export function priceText(n: number): string {
  return String(round9(n));
}
