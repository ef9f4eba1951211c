/**
 * Keep a scroll box pinned to the bottom while content grows, unless the person scrolled up.
 * Watches its content with a MutationObserver, and with a ResizeObserver its own size and that of
 * `content` (its one child, when it has one: content grows without a DOM change as an image loads,
 * or as a turn out of view is laid out for the first time), all released on unmount.
 *
 * Only a scroll the person makes unpins it. When the box itself shrinks (the composer grows
 * with a long message) the gap below grows without anyone scrolling, and the scroll event that
 * follows must not read as "scrolled up": a pinned box stays pinned through a resize.
 */
import { nextTick, onBeforeUnmount, onMounted, ref, type Ref } from "vue";

export function useAutoScroll(box: Ref<HTMLElement | null>, content?: Ref<HTMLElement | null>, slack = 48) {
  const pinned = ref(true);
  let observer: MutationObserver | null = null;
  let resizes: ResizeObserver | null = null;
  let height = 0;

  function atBottom(el: HTMLElement): boolean {
    return el.scrollHeight - el.scrollTop - el.clientHeight <= slack;
  }

  function onScroll(): void {
    const el = box.value;
    if (!el) return;
    if (el.clientHeight !== height) return onResize(); // the box changed size: nobody scrolled
    pinned.value = atBottom(el);
  }

  function onResize(): void {
    const el = box.value;
    if (!el) return;
    height = el.clientHeight;
    if (pinned.value) el.scrollTop = el.scrollHeight;
  }

  function scrollToBottom(): void {
    const el = box.value;
    if (el) el.scrollTop = el.scrollHeight;
    pinned.value = true;
  }

  /**
   * Run `change`, which puts content above what is shown (an older page of history), and keep the
   * reader where they were: the same distance from the bottom, not carried to the new top.
   */
  async function keepPlace(change: () => Promise<unknown>): Promise<void> {
    const el = box.value;
    const fromBottom = el ? el.scrollHeight - el.scrollTop : 0;
    await change();
    await nextTick();
    if (el && box.value === el) el.scrollTop = el.scrollHeight - fromBottom;
  }

  onMounted(() => {
    const el = box.value;
    if (!el) return;
    height = el.clientHeight;
    el.addEventListener("scroll", onScroll, { passive: true });
    if (typeof ResizeObserver !== "undefined") {
      resizes = new ResizeObserver(onResize);
      resizes.observe(el);
      if (content?.value) resizes.observe(content.value);
    }
    if (typeof MutationObserver !== "undefined") {
      observer = new MutationObserver(() => {
        if (pinned.value) el.scrollTop = el.scrollHeight;
      });
      observer.observe(el, { childList: true, subtree: true, characterData: true });
    }
    scrollToBottom();
  });

  onBeforeUnmount(() => {
    box.value?.removeEventListener("scroll", onScroll);
    observer?.disconnect();
    observer = null;
    resizes?.disconnect();
    resizes = null;
  });

  return { pinned, scrollToBottom, keepPlace };
}
