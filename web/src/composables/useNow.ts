/** The current time in seconds, ticking every `everyMs` while the component lives. */
import { onBeforeUnmount, ref } from "vue";

export function useNow(everyMs = 1000) {
  const now = ref(Date.now() / 1000);
  const timer = setInterval(() => (now.value = Date.now() / 1000), everyMs);
  onBeforeUnmount(() => clearInterval(timer));
  return now;
}
