/**
 * A modal dialog's focus: Tab cycles inside it, and when it closes the focus goes back to what
 * opened it (never to <body>, which is outside the panel's key guard: else the panel's root).
 * Call it in setup before anything that moves the focus in, so the opener is read first.
 */
import { onBeforeUnmount, onMounted, type Ref } from "vue";

const FOCUSABLE = "button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex='-1'])";

export function useModalFocus(dialog: Ref<HTMLElement | null>) {
  let opener: HTMLElement | null = null;

  function focusables(): HTMLElement[] {
    return [...(dialog.value?.querySelectorAll<HTMLElement>(FOCUSABLE) ?? [])];
  }

  onMounted(() => {
    const active = document.activeElement;
    opener = active instanceof HTMLElement && active !== document.body ? active : null;
  });

  onBeforeUnmount(() => {
    const root = dialog.value?.closest<HTMLElement>(".oc-root");
    if (opener?.isConnected) opener.focus();
    else root?.focus();
  });

  /** The dialog's keydown: Tab from its last focusable goes to its first, Shift+Tab the other way. */
  function trapTab(ev: KeyboardEvent): void {
    if (ev.key !== "Tab") return;
    const all = focusables();
    if (all.length === 0) return;
    const first = all[0];
    const last = all[all.length - 1];
    const inside = dialog.value?.contains(document.activeElement) ?? false;
    if (ev.shiftKey && (document.activeElement === first || !inside)) {
      ev.preventDefault();
      last.focus();
    } else if (!ev.shiftKey && (document.activeElement === last || !inside)) {
      ev.preventDefault();
      first.focus();
    }
  }

  return { focusables, trapTab };
}
