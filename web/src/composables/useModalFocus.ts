/**
 * A modal dialog's focus and keys: Tab cycles inside it, Escape closes it (one step at a time,
 * through `escape`), and when it closes the focus goes back to what opened it (never to <body>,
 * which is outside the panel's key guard: else the panel's root). Only keys whose target is inside
 * the dialog count: an Escape pressed on the canvas, or in another panel's dialog, is not this
 * dialog's. Focus moves never scroll the page (ComfyUI's containers hide their overflow but can
 * still be scrolled, which shifts the canvas's widgets); the dialog's own body scrolls just enough
 * to show what took the focus. Call it in setup before anything that moves the focus in, so the
 * opener is read first.
 */
import { nextTick, onBeforeUnmount, onMounted, type Ref } from "vue";

const FOCUSABLE = "button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex='-1'])";

/** Focus `el` without scrolling any of its containers (see `revealFocus` for the dialog's body). */
export function focusQuietly(el: HTMLElement | null | undefined): void {
  el?.focus({ preventScroll: true });
}

/** Focus, quietly, what `find` returns once the DOM shows the change just made: `find` runs after
 * the render, as what it looks for (a confirm's Cancel, a reopened button) may only exist then. */
export async function focusWhenRendered(find: () => HTMLElement | null | undefined): Promise<void> {
  await nextTick();
  focusQuietly(find());
}

export function useModalFocus(dialog: Ref<HTMLElement | null>, opts: { escape: () => void; body?: Ref<HTMLElement | null> }) {
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
    focusQuietly(opener?.isConnected ? opener : root);
  });

  /** The dialog's keydown (bound on the dialog itself, so only its own keys reach it). */
  function onKeydown(ev: KeyboardEvent): void {
    if (ev.key === "Escape") {
      ev.preventDefault();
      opts.escape();
    } else if (ev.key === "Tab") trapTab(ev);
  }

  /** Tab from the last focusable goes to the first, Shift+Tab the other way. */
  function trapTab(ev: KeyboardEvent): void {
    const all = focusables();
    if (all.length === 0) return;
    const first = all[0];
    const last = all[all.length - 1];
    const inside = dialog.value?.contains(document.activeElement) ?? false;
    if (ev.shiftKey && (document.activeElement === first || !inside)) {
      ev.preventDefault();
      focusQuietly(last);
    } else if (!ev.shiftKey && (document.activeElement === last || !inside)) {
      ev.preventDefault();
      focusQuietly(first);
    }
  }

  /** The dialog's focusin: its body scrolls (it alone) to show the focused element whole. */
  function revealFocus(ev: FocusEvent): void {
    const body = opts.body?.value;
    const el = ev.target;
    if (!body || !(el instanceof HTMLElement) || !body.contains(el) || el === body) return;
    const margin = 8;
    const view = body.getBoundingClientRect();
    const box = el.getBoundingClientRect();
    if (box.top < view.top) body.scrollTop -= view.top - box.top + margin;
    else if (box.bottom > view.bottom) body.scrollTop += Math.min(box.bottom - view.bottom + margin, box.top - view.top - margin);
  }

  return { focusables, onKeydown, revealFocus };
}
