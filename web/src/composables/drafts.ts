/**
 * What was typed in a chat and not yet taken by the server, kept in this tab's sessionStorage, so a
 * reload gives it back: the box (`opencode.draft.<chat>`) and a send on its way
 * (`opencode.unsent.<chat>`, until the server answers). Only message text is written. Storage
 * that is not there (a sandboxed frame, a full quota) only means nothing is kept.
 */
function get(key: string): string {
  try {
    return sessionStorage.getItem(key) ?? "";
  } catch {
    return "";
  }
}

function set(key: string, text: string): void {
  try {
    if (text.trim()) sessionStorage.setItem(key, text);
    else sessionStorage.removeItem(key);
  } catch {
    // nothing kept
  }
}

/** Two pieces of text in the order they were written, a blank line between; either may be empty. */
export function joinDrafts(first: string, then: string): string {
  return first && then ? `${first}\n\n${then}` : first || then;
}

export function saveDraft(sessionId: string, text: string): void {
  set(`opencode.draft.${sessionId}`, text);
}

/** The text of a send on its way (kept until `sent`), or "" once the server answered. */
export function markUnsent(sessionId: string, text: string): void {
  set(`opencode.unsent.${sessionId}`, text);
}

/** What to put back in the box of a chat: a send a reload cut off (unless `unsent` is false: it is
 * still on its way), then the draft. A send put back is the draft's now, never given back twice. */
export function takeDraft(sessionId: string, unsent = true): string {
  const draft = get(`opencode.draft.${sessionId}`);
  if (!unsent) return draft;
  const text = joinDrafts(get(`opencode.unsent.${sessionId}`), draft);
  markUnsent(sessionId, "");
  return text;
}
