/**
 * `@role` completion for a textarea: finds the `@word` being typed before the caret, offers the
 * matching roles, and replaces the word with the chosen `@id `.
 */
import { computed, ref, type Ref } from "vue";
import type { Skill } from "../protocol";

/**
 * The `@word` being typed before the caret, if it is among the message's leading mentions
 * (only those address roles: "@echo @assistant hi" goes to both, "hi @echo" to the usual roles).
 */
export function mentionAt(text: string, caret: number): { start: number; query: string } | null {
  const before = text.slice(0, caret);
  const m = /^(\s*(?:@[a-z0-9_-]+\s+)*)@([a-z0-9_-]*)$/i.exec(before);
  if (!m) return null;
  return { start: caret - m[2].length - 1, query: m[2].toLowerCase() };
}

export function useMention(text: Ref<string>, area: Ref<HTMLTextAreaElement | null>, roles: Ref<Skill[]>) {
  const caret = ref(0);
  const active = ref(0);
  const dismissed = ref(false);

  const mention = computed(() => (dismissed.value ? null : mentionAt(text.value, caret.value)));
  const options = computed(() => {
    const m = mention.value;
    if (!m) return [];
    return roles.value
      .filter((r) => r.id.startsWith(m.query) || r.name.toLowerCase().includes(m.query))
      .slice(0, 8);
  });
  const open = computed(() => options.value.length > 0);

  function track(): void {
    caret.value = area.value?.selectionStart ?? text.value.length;
    dismissed.value = false;
    if (active.value >= options.value.length) active.value = 0;
  }

  function choose(role: Skill): void {
    const m = mention.value;
    if (!m) return;
    const end = caret.value;
    text.value = text.value.slice(0, m.start) + `@${role.id} ` + text.value.slice(end);
    const pos = m.start + role.id.length + 2;
    caret.value = pos;
    active.value = 0;
    requestAnimationFrame(() => {
      area.value?.focus();
      area.value?.setSelectionRange(pos, pos);
    });
  }

  /** Handle a key while the list is open; true when the key was used. */
  function onKey(ev: KeyboardEvent): boolean {
    if (!open.value) return false;
    const n = options.value.length;
    if (ev.key === "ArrowDown") active.value = (active.value + 1) % n;
    else if (ev.key === "ArrowUp") active.value = (active.value - 1 + n) % n;
    else if (ev.key === "Enter" || ev.key === "Tab") choose(options.value[active.value]);
    else if (ev.key === "Escape") dismissed.value = true;
    else return false;
    ev.preventDefault();
    return true;
  }

  return { options, open, active, track, choose, onKey };
}
