/** Add a DOM listener for the life of the calling component; removed on unmount. */
import { onBeforeUnmount } from "vue";

export function useEventListener<K extends keyof DocumentEventMap>(
  target: Document | Window | HTMLElement,
  type: K,
  handler: (ev: DocumentEventMap[K]) => void,
  options?: AddEventListenerOptions,
): () => void {
  target.addEventListener(type, handler as EventListener, options);
  const remove = () => target.removeEventListener(type, handler as EventListener, options);
  onBeforeUnmount(remove);
  return remove;
}
