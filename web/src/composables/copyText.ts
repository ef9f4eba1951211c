/**
 * Copying text: `copyText` (the Clipboard API, else a hidden textarea on plain http) and
 * `useCopied`, which also says "copied" for a moment and drops its timer on unmount.
 */
import { getCurrentInstance, onBeforeUnmount, ref, type Ref } from "vue";

/** Copy text, falling back to a hidden textarea where the Clipboard API is missing (plain http). */
export async function copyText(text: string): Promise<boolean> {
  try {
    if (navigator.clipboard?.writeText) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // fall through to the old way
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** `copy(text)` copies; `copied` is true for `ms` after a copy that worked. */
export function useCopied(ms = 1500): { copied: Ref<boolean>; copy: (text: string) => Promise<boolean> } {
  const copied = ref(false);
  let timer: ReturnType<typeof setTimeout> | undefined;
  async function copy(text: string): Promise<boolean> {
    const ok = await copyText(text);
    clearTimeout(timer);
    copied.value = ok;
    if (ok) timer = setTimeout(() => (copied.value = false), ms);
    return ok;
  }
  if (getCurrentInstance()) onBeforeUnmount(() => clearTimeout(timer));
  return { copied, copy };
}
