/**
 * What fixes a failed reply, read from its stable `error_code` (core/agent.py, core/providers/http.py):
 * the setting that removes the cause. Failures that may pass by themselves (a rate limit, an
 * overloaded, stalled or dropped server) have none here: Retry is their fix. Imports nothing.
 */

/** `key`: the provider's API key; `address`: its base URL; `context`: the session's model's
 * context_tokens in its profile; `provider`: its profile (its account); `budget`: the session's budget. */
export type Fix = "key" | "address" | "context" | "provider" | "budget";

/** The fixes the provider settings offer, and the profile they are for. */
export type ProviderFix = Exclude<Fix, "budget">;
export interface ProfileFix {
  profile: string;
  fix: ProviderFix;
  /** The session's model (`context`: its caps' form opens). */
  model?: string | null;
}

const BY_CODE: ReadonlyMap<string, Fix> = new Map<string, Fix>([
  ["provider_auth", "key"],
  ["provider_quota", "provider"],
  ["no_provider", "provider"], // no profile chosen and no local server answering: the settings add one
  ["provider_unreachable", "address"],
  ["provider_context_exceeded", "context"],
  ["context_exceeded", "context"],
  ["budget_exceeded", "budget"],
]);

/** The fix for a failure's code; null for no code (a row stored before codes) or one nothing fixes. */
export function fixFor(code: string | null | undefined): Fix | null {
  return (code && BY_CODE.get(code)) || null;
}
