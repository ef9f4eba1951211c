/**
 * Keep a scroll box pinned to the bottom while content grows, unless the person scrolled up.
 * Watches size changes with a ResizeObserver/MutationObserver released on unmount.
 */
import { onBeforeUnmount, onMounted, ref, type Ref } from "vue";

export function useAutoScroll(box: Ref<HTMLElement | null>, slack = 48) {
  const pinned = ref(true);
  let observer: MutationObserver | null = null;

  function atBottom(el: HTMLElement): boolean {
    return el.scrollHeight - el.scrollTop - el.clientHeight <= slack;
  }

  function onScroll(): void {
    if (box.value) pinned.value = atBottom(box.value);
  }

  function scrollToBottom(): void {
    const el = box.value;
    if (el) el.scrollTop = el.scrollHeight;
    pinned.value = true;
  }

  onMounted(() => {
    const el = box.value;
    if (!el) return;
    el.addEventListener("scroll", onScroll, { passive: true });
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
  });

  return { pinned, scrollToBottom };
}
