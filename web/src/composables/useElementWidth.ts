/** An element's width, followed with a ResizeObserver released on unmount (0 where there is none). */
import { onBeforeUnmount, onMounted, ref, type Ref } from "vue";

export function useElementWidth(el: Ref<HTMLElement | null>) {
  const width = ref(0);
  let observer: ResizeObserver | null = null;

  onMounted(() => {
    if (!el.value || typeof ResizeObserver === "undefined") return;
    observer = new ResizeObserver((entries) => {
      const last = entries[entries.length - 1];
      if (last) width.value = last.contentRect.width;
    });
    observer.observe(el.value);
  });

  onBeforeUnmount(() => {
    observer?.disconnect();
    observer = null;
  });

  return width;
}
