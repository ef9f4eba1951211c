/**
 * Put sanitized HTML into an element, keeping the nodes that did not change: the block a reply is
 * still writing is re-rendered every frame, and `innerHTML` would re-create an image in it each
 * time (fetched again, flickering) and rebuild a long code block's text from scratch.
 */
export function morphHtml(el: Element, html: string): void {
  const next = document.createElement("template");
  next.innerHTML = html; // inert: nothing in a template loads or runs
  patchChildren(el, next.content);
}

function patchChildren(to: Node, from: Node): void {
  const old = Array.from(to.childNodes);
  const wanted = Array.from(from.childNodes);
  wanted.forEach((node, i) => {
    const was = old[i];
    if (!was) to.appendChild(node);
    else if (!sameKind(was, node)) to.replaceChild(node, was);
    else if (was instanceof Element) patchElement(was, node as Element);
    else if (was.nodeValue !== node.nodeValue) was.nodeValue = node.nodeValue;
  });
  for (const gone of old.slice(wanted.length)) to.removeChild(gone);
}

function sameKind(a: Node, b: Node): boolean {
  return a.nodeType === b.nodeType && a.nodeName === b.nodeName;
}

function patchElement(to: Element, from: Element): void {
  for (const { name } of Array.from(to.attributes)) if (!from.hasAttribute(name)) to.removeAttribute(name);
  for (const { name, value } of Array.from(from.attributes)) if (to.getAttribute(name) !== value) to.setAttribute(name, value);
  patchChildren(to, from);
}

/** `v-morph="html"`: like `v-html`, through `morphHtml` when the HTML changes. */
export const vMorph = {
  mounted(el: Element, binding: { value: string }): void {
    el.innerHTML = binding.value;
  },
  updated(el: Element, binding: { value: string; oldValue?: string | null }): void {
    if (binding.value !== binding.oldValue) morphHtml(el, binding.value);
  },
};
