import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { flushPromises, mount } from "@vue/test-utils";
import MarkdownView from "../src/components/MarkdownView.vue";
import MessageView from "../src/components/MessageView.vue";
import PermissionCard from "../src/components/PermissionCard.vue";
import ToolCallCard from "../src/components/ToolCallCard.vue";
import ProposalCard from "../src/components/ProposalCard.vue";
import { setLocale } from "../src/i18n";
import hljs from "highlight.js/lib/core";
import { markdownToHtml, renderBlocks, renderMarkdown, RenderMemo } from "../src/markdown";
import { defineComponent, h, ref } from "vue";
import { mentionAt } from "../src/composables/useMention";
import { useAutoScroll } from "../src/composables/useAutoScroll";
import { leadingMentions } from "../src/store";
import { message, reply, skill } from "./fixtures";
import type { Message } from "../src/protocol";

const imageUrl = (p: { filename: string }) => `/view?filename=${p.filename}`;

beforeEach(() => setLocale("en"));
afterEach(() => {
  document.body.innerHTML = "";
});

// DOMPurify does not work under happy-dom (cure53/DOMPurify#1457): here it is a pass-through and
// sanitizing is proven in real Chromium by the e2e suite; markdown-it's own escaping is tested here.
vi.mock("dompurify", () => ({ default: () => ({ addHook: () => undefined, sanitize: (html: string) => html }) }));

describe("markdownToHtml", () => {
  it("escapes raw HTML and refuses script URLs", () => {
    const html = markdownToHtml('<img src=x onerror="alert(1)"> [a](javascript:alert(1)) [b](https://example.com)');
    expect(html).not.toContain("<img");
    expect(html).toContain("&lt;img");
    expect(html).not.toMatch(/href="javascript:/);
    expect(html).toContain('href="https://example.com"');
  });

  it("shows only images from this server; any other image is a link, so nothing is fetched unasked", () => {
    const html = markdownToHtml(
      "![chart](https://evil.example/pixel?leak=secret) ![x](//evil.example/a.png) ![y](/\\evil.example/b.png) ![out](/view?filename=a.png&type=output)",
    );
    // markdown-it encodes the backslash, so `/\\host` stays a path on this server.
    expect(html.match(/<img [^>]*>/g)).toEqual([
      '<img src="/%5Cevil.example/b.png" alt="y">',
      '<img src="/view?filename=a.png&amp;type=output" alt="out">',
    ]);
    expect(html).toContain('<a href="https://evil.example/pixel?leak=secret" class="oc-remote-image">chart</a>');
    expect(html).toContain('<a href="//evil.example/a.png" class="oc-remote-image">x</a>');
  });

  it("wraps fenced code with its language; its copy button comes only after sanitizing", () => {
    const html = markdownToHtml("```py\nx = 1\n```");
    expect(html).toContain('<div class="oc-code">');
    expect(html).toContain("<span>py</span>");
    expect(html).toContain('class="hljs-number"');
    expect(html).not.toContain("<button"); // nothing for the sanitizer to let through
    expect(renderMarkdown("```py\nx = 1\n```", { copy: "复制", title: "复制这段代码" })).toContain(
      '<span>py</span><button type="button" class="oc-code-copy" data-copy-code="" title="复制这段代码">复制</button></div>',
    );
  });
});

/** A clipboard that records what was written to it. */
function stubClipboard() {
  const writeText = vi.fn().mockResolvedValue(undefined);
  Object.defineProperty(navigator, "clipboard", { value: { writeText }, configurable: true });
  return writeText;
}

describe("MarkdownView", () => {
  it("renders markdown, highlights code and offers a copy button", () => {
    const w = mount(MarkdownView, { props: { source: "**bold**\n\n```python\nprint('x')\n```" } });
    expect(w.find("strong").text()).toBe("bold");
    expect(w.find(".oc-code-head").text()).toContain("python");
    expect(w.find("code.hljs").html()).toContain("hljs-");
    const button = w.get(".oc-code-head button");
    expect(button.text()).toBe("Copy");
    expect(button.attributes()).toMatchObject({ type: "button", title: "Copy this code" });
  });

  it("copies exactly the code of the block whose button was clicked, then says so for a moment", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const writeText = stubClipboard();
    const w = mount(MarkdownView, { props: { source: "```\nabc\n```\n\nthen\n\n```python\nsteps = 20\n\ncfg = 7.0\n\n\n```" } });
    const [first, second] = w.findAll("button");
    await second.trigger("click");
    await flushPromises();
    expect(writeText).toHaveBeenCalledWith("steps = 20\n\ncfg = 7.0"); // no trailing newlines
    expect([first.text(), second.text()]).toEqual(["Copy", "Copied"]);
    expect(w.get("[role=status]").text()).toBe("Copied");
    await first.trigger("click");
    await flushPromises();
    expect(writeText).toHaveBeenLastCalledWith("abc");
    expect([first.text(), second.text()]).toEqual(["Copied", "Copy"]); // one says it at a time
    vi.advanceTimersByTime(1500);
    await flushPromises();
    expect([first.text(), second.text()]).toEqual(["Copy", "Copy"]);
    expect(w.get("[role=status]").text()).toBe("");
    vi.useRealTimers();
  });

  it("gives model text no copy button: raw HTML in a reply stays text", async () => {
    const writeText = stubClipboard();
    const injected = '<button data-copy-code onclick="alert(1)">steal</button>';
    const w = mount(MarkdownView, {
      props: { source: `Try ${injected} or \`${injected}\`\n\n<div class="oc-code-head"><span>x</span></div>\n\n\`\`\`\nreal\n\`\`\`` },
    });
    expect(w.findAll("button")).toHaveLength(1); // the real code block's, nothing else
    expect(w.findAll("button[data-copy-code]")).toHaveLength(1);
    expect(w.find("[onclick]").exists()).toBe(false);
    expect(w.text()).toContain(injected);
    await w.get("p").trigger("click");
    await flushPromises();
    expect(writeText).not.toHaveBeenCalled();
    await w.get("button").trigger("click");
    await flushPromises();
    expect(writeText).toHaveBeenCalledWith("real");
  });
});

describe("streaming markdown", () => {
  // requestAnimationFrame by hand: a test says when the next frame comes.
  let frames: FrameRequestCallback[] = [];
  beforeEach(() => {
    frames = [];
    vi.stubGlobal("requestAnimationFrame", (cb: FrameRequestCallback) => frames.push(cb));
    vi.stubGlobal("cancelAnimationFrame", (id: number) => (frames[id - 1] = () => undefined));
  });
  afterEach(() => {
    vi.unstubAllGlobals();
    vi.restoreAllMocks();
  });
  function nextFrame(): void {
    const due = frames;
    frames = [];
    due.forEach((cb) => cb(0));
  }

  it("renders the blocks renderMarkdown makes, cut at block boundaries", () => {
    const source = "Intro [ref] and *em*.\n\n1. one\n2. two\n\n```py\nx = 1\n```\n\n> quote\n\n[ref]: /view?filename=a.png\n";
    const blocks = renderBlocks(source, new RenderMemo());
    expect(blocks).toHaveLength(4);
    expect(blocks.join("")).toBe(renderMarkdown(source));
  });

  it("renders a streaming reply once per frame, whatever the number of deltas", async () => {
    const w = mount(MarkdownView, { props: { source: "one", streaming: true } });
    for (const source of ["one two", "one two three", "one two three four"]) await w.setProps({ source });
    expect(w.text()).toBe("one"); // nothing rendered between frames
    expect(frames).toHaveLength(1); // one frame asked for, not one per delta
    nextFrame();
    await flushPromises();
    expect(w.text()).toBe("one two three four");
    await w.setProps({ source: "done.", streaming: false });
    expect(w.text()).toBe("done."); // the end shows at once
  });

  it("leaves finished blocks alone while the last one grows: an image there is not loaded again", async () => {
    const w = mount(MarkdownView, { props: { source: "![out](/view?filename=a.png)\n\nsecond", streaming: true } });
    const img = w.find("img").element;
    const first = w.find(".oc-md-block").element;
    await w.setProps({ source: "![out](/view?filename=a.png)\n\nsecond and more" });
    nextFrame();
    await flushPromises();
    expect(w.text()).toContain("second and more");
    expect(w.find(".oc-md-block").element).toBe(first);
    expect(w.find("img").element).toBe(img);
  });

  it("keeps an image in the block still being written as the block grows", async () => {
    const w = mount(MarkdownView, { props: { source: "see ![out](/view?filename=a.png) and", streaming: true } });
    const img = w.find("img").element;
    await w.setProps({ source: "see ![out](/view?filename=a.png) and **more** text" });
    nextFrame();
    await flushPromises();
    expect(w.find("strong").text()).toBe("more");
    expect(w.find("img").element).toBe(img);
    expect(w.find(".oc-md-block").element.innerHTML).toBe(renderMarkdown("see ![out](/view?filename=a.png) and **more** text"));
  });

  it("keeps a finished code block's copy button, and what it says, while the reply goes on", async () => {
    const writeText = stubClipboard();
    const w = mount(MarkdownView, { props: { source: "```py\nx = 1\n```\n\nAnd", streaming: true } });
    const button = w.get("button[data-copy-code]").element;
    await w.get("button[data-copy-code]").trigger("click");
    await flushPromises();
    expect(writeText).toHaveBeenCalledWith("x = 1");
    for (const tail of ["And so", "And so on", "And so on.\n\n```py\ny = 2"]) {
      await w.setProps({ source: `\`\`\`py\nx = 1\n\`\`\`\n\n${tail}` });
      nextFrame();
      await flushPromises();
    }
    const buttons = w.findAll("button[data-copy-code]");
    expect(buttons).toHaveLength(2); // the block still being written has one too
    expect(buttons[0].element).toBe(button); // the same element: no flicker, focus kept
    expect(buttons[0].text()).toBe("Copied");
    await buttons[1].trigger("click");
    await flushPromises();
    expect(writeText).toHaveBeenLastCalledWith("y = 2"); // what is written so far
  });

  it("highlights a code block once it is finished, not on every frame while it is written", async () => {
    const highlight = vi.spyOn(hljs, "highlight");
    const w = mount(MarkdownView, { props: { source: "```py\nx = 1\n", streaming: true } });
    await w.setProps({ source: "```py\nx = 1\ny = 2\n" });
    nextFrame();
    await flushPromises();
    expect(highlight).not.toHaveBeenCalled(); // still being written: plain text
    expect(w.find("code").element.textContent).toBe("x = 1\ny = 2\n");
    for (const tail of ["Done", "Done, as", "Done, as asked."]) {
      await w.setProps({ source: `\`\`\`py\nx = 1\ny = 2\n\`\`\`\n\n${tail}` });
      nextFrame();
      await flushPromises();
    }
    expect(highlight).toHaveBeenCalledTimes(1); // finished: highlighted once, then remembered
    expect(w.find("code").html()).toContain("hljs-number");
    await w.setProps({ streaming: false });
    expect(highlight).toHaveBeenCalledTimes(1);
  });
});

describe("MessageView", () => {
  it("labels an assistant reply with its role name and colour", () => {
    const w = mount(MessageView, {
      props: { message: reply({ parts: [{ type: "text", text: "hi *there*" }], status: "completed" }), skill: skill(), imageUrl },
    });
    expect(w.find(".oc-role").text()).toBe("Echo");
    expect(w.attributes("style")).toContain("--oc-role: #64748b");
    expect(w.find("em").text()).toBe("there");
  });

  it.each([
    ["aborted", "stopped"],
    ["error", "failed"],
    ["interrupted", "interrupted"],
    ["queued", "queued"],
  ] as const)("shows status %s as “%s”", (status, label) => {
    const w = mount(MessageView, { props: { message: message({ status }), imageUrl } });
    expect(w.find("[data-testid=message-status]").text()).toBe(label);
  });

  it("shows user text verbatim (no markdown) and images inline", () => {
    const w = mount(MessageView, {
      props: {
        message: message({
          parts: [
            { type: "text", text: "**not bold**" },
            { type: "image", source: "comfyui", filename: "a.png", subfolder: "", folder_type: "output", mime_type: "image/png" },
          ],
        }),
        imageUrl,
      },
    });
    expect(w.find("strong").exists()).toBe(false);
    expect(w.text()).toContain("**not bold**");
    expect(w.find("img").attributes("src")).toBe("/view?filename=a.png");
  });

  it("copies a reply's text as its markdown source, not its HTML", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const writeText = stubClipboard();
    const parts: Message["parts"] = [
      { type: "text", text: "A **prompt**:\n\n```\na cat, oil painting\n```" },
      { type: "tool_call", id: "c1", name: "get_workflow", arguments: {}, skill: null, status: "completed", started_at: 1, duration_ms: 5 },
      { type: "text", text: "Paste it into `CLIPTextEncode`." },
    ];
    const w = mount(MessageView, { props: { message: reply({ parts, status: "completed" }), imageUrl } });
    const copy = w.get("header button[aria-label='Copy message (markdown)']");
    expect(copy.attributes("type")).toBe("button"); // Tab reaches it, Enter presses it
    await copy.trigger("click");
    await flushPromises();
    expect(writeText).toHaveBeenCalledWith("A **prompt**:\n\n```\na cat, oil painting\n```\n\nPaste it into `CLIPTextEncode`.");
    expect(w.get("header [role=status]").text()).toBe("Copied");
    vi.advanceTimersByTime(1500);
    await flushPromises();
    expect(w.get("header [role=status]").text()).toBe("");
    vi.useRealTimers();
  });

  it("copies a reply still being written, and says it is partial; nothing to copy, no button", async () => {
    const writeText = stubClipboard();
    const w = mount(MessageView, { props: { message: reply({ parts: [] }), imageUrl } });
    expect(w.find("header button[aria-label^=Copy]").exists()).toBe(false);
    await w.setProps({ message: reply({ parts: [{ type: "text", text: "A cat, oil" }] }) });
    await w.get("header button[aria-label='Copy the reply so far (still being written)']").trigger("click");
    await flushPromises();
    expect(writeText).toHaveBeenCalledWith("A cat, oil");
    await w.setProps({ message: reply({ parts: [{ type: "text", text: "A cat, oil painting." }], status: "completed" }) });
    expect(w.find("header button[aria-label='Copy message (markdown)']").exists()).toBe(true);
  });

  it("copies the user's own message as typed", async () => {
    const writeText = stubClipboard();
    const w = mount(MessageView, { props: { message: message({ parts: [{ type: "text", text: "@assistant **a** prompt" }] }), imageUrl } });
    await w.get("header button[aria-label='Copy message (markdown)']").trigger("click");
    await flushPromises();
    expect(writeText).toHaveBeenCalledWith("@assistant **a** prompt");
  });

  it("speaks 简体中文 when the locale is zh", () => {
    setLocale("zh-CN");
    const w = mount(MessageView, { props: { message: message({ status: "queued" }), imageUrl } });
    expect(w.get("header button").attributes("aria-label")).toBe("复制消息（Markdown）");
    expect(w.find(".oc-role").text()).toBe("你");
    expect(w.find("[data-testid=message-status]").text()).toBe("排队中");
  });
});

describe("MessageView: a failed reply's way out", () => {
  const failed = (code: string | null | undefined, error = "it went wrong") =>
    reply({ status: "error", error, ...(code === undefined ? {} : { error_code: code }) });
  const mountFailed = (code: string | null | undefined, props: { retries?: boolean; canRetry?: boolean } = {}) =>
    mount(MessageView, { props: { message: failed(code), imageUrl, ...props } });
  /** The buttons in the error's row, by their accessible names. */
  const fixes = (w: ReturnType<typeof mountFailed>) => w.get("[data-testid=message-error]").findAll("button").map((b) => b.text().trim());

  it.each([
    ["provider_auth", "Check the API key", "key"],
    ["provider_quota", "Provider settings", "provider"],
    ["no_provider", "Provider settings", "provider"],
    ["provider_unreachable", "Check the base URL", "address"],
    ["provider_context_exceeded", "Set the model's context", "context"],
    ["context_exceeded", "Set the model's context", "context"],
    ["budget_exceeded", "Change the budget", "budget"],
  ])("%s offers “%s” beside the error, which asks for the %s fix", async (code, label, fix) => {
    const w = mountFailed(code);
    expect(w.get("[data-testid=message-error]").text()).toContain("it went wrong");
    expect(fixes(w)).toEqual([label]);
    const button = w.findAll("button").find((b) => b.text().trim() === label)!;
    expect(button.attributes("type")).toBe("button"); // a real button: Tab reaches it, Enter presses it
    await button.trigger("click");
    expect(w.emitted("fix")).toEqual([[fix]]);
  });

  it.each(["provider_rate_limited", "provider_overloaded", "provider_stalled", "provider_stream_broken"])(
    "%s: Retry is the fix, beside the error (no settings to change)",
    async (code) => {
      const w = mountFailed(code, { retries: true, canRetry: true });
      expect(fixes(w)).toEqual(["Retry"]);
      expect(w.get("header").findAll("button")).toHaveLength(0); // not twice
      await w.get("[data-testid=message-error]").findAll("button")[0].trigger("click");
      expect(w.emitted("retry")).toEqual([["msg_a1"]]);
    },
  );

  it("an unreachable provider offers its base URL and Retry (it may only have been down)", () => {
    expect(fixes(mountFailed("provider_unreachable", { retries: true, canRetry: false }))).toEqual(["Check the base URL", "Retry"]);
  });

  it.each([undefined, null, "provider_error", "provider_bad_request", "internal_error", "something_new"])(
    "code %s: the error alone, as before",
    (code) => {
      const w = mountFailed(code);
      expect(w.get("[data-testid=message-error]").text()).toBe("it went wrong");
      expect(w.findAll("button")).toHaveLength(0);
    },
  );

  it("a stopped reply, which has no error, keeps Retry in its header", () => {
    const w = mount(MessageView, { props: { message: reply({ status: "aborted" }), imageUrl, retries: true, canRetry: true } });
    expect(w.get("header").findAll("button").map((b) => b.text().trim())).toEqual(["Retry"]);
    expect(w.find("[data-testid=message-error]").exists()).toBe(false);
  });

  it("speaks 简体中文 when the locale is zh", () => {
    setLocale("zh");
    expect(fixes(mountFailed("budget_exceeded"))).toEqual(["修改预算"]);
  });
});

describe("ToolCallCard", () => {
  it("shows name, status, duration, arguments and result", () => {
    const w = mount(ToolCallCard, {
      props: {
        call: { type: "tool_call", id: "c1", name: "list_models", arguments: { folder: "checkpoints" }, skill: null, status: "completed", started_at: 1, duration_ms: 1500 },
        result: { type: "tool_result", tool_call_id: "c1", name: "list_models", content: "sd15.safetensors", is_error: false, images: [] },
        imageUrl,
      },
    });
    expect(w.find("summary").text()).toContain("list_models");
    expect(w.find("summary").text()).toContain("done");
    expect(w.find("summary").text()).toContain("1.5 s");
    expect(w.text()).toContain('"folder": "checkpoints"');
    expect(w.text()).toContain("sd15.safetensors");
  });
});

describe("images", () => {
  const part = { type: "image" as const, source: "upload" as const, filename: "cat.png", subfolder: "", folder_type: "output" as const, mime_type: "image/png" };

  it("a tool's images show outside its collapsed card", () => {
    const w = mount(ToolCallCard, {
      props: {
        call: { type: "tool_call", id: "c1", name: "view_image", arguments: {}, skill: null, status: "completed", started_at: 1, duration_ms: 5 },
        result: { type: "tool_result", tool_call_id: "c1", name: "view_image", content: "Attached", is_error: false, images: [part] },
        imageUrl,
      },
    });
    expect(w.find("details img").exists()).toBe(false);
    expect(w.find("img").attributes("src")).toBe("/view?filename=cat.png");
  });

  it("an image that cannot load turns into its file name", async () => {
    const w = mount(MessageView, { props: { message: message({ parts: [part] }), imageUrl } });
    await w.find("img").trigger("error");
    expect(w.find("img").exists()).toBe(false);
    expect(w.text()).toContain("cat.png");
  });
});

describe("PermissionCard", () => {
  const request = {
    request_id: "perm_1", run_id: "run_1", skill: "assistant", tool: "queue_workflow", permission_class: "run" as const,
    summary: "Queue the graph", arguments: { n: 1 }, expires_at: Date.now() / 1000 + 60, decision: "pending" as const, remember: false,
  };

  it.each([
    ["Allow", "allow", false],
    ["Always allow", "allow", true],
    ["Deny", "deny", false],
  ] as const)("%s emits reply(%s, remember=%s) once; its buttons are off while it is sent", async (label, decision, remember) => {
    const w = mount(PermissionCard, { props: { request, skillName: "Assistant" } });
    expect(w.text()).toContain("Assistant wants to use queue_workflow");
    const button = w.findAll("button").find((b) => b.text() === label)!;
    await button.trigger("click");
    expect(w.emitted("reply")).toEqual([[decision, remember]]);
    await w.setProps({ sending: true });
    expect(button.attributes("disabled")).toBeDefined();
    await w.setProps({ sending: false }); // the answer failed: it can be given again
    expect(button.attributes("disabled")).toBeUndefined();
  });

  it.each([
    [undefined, "Denied"],
    ["answered", "Denied"],
    ["no answer before the timeout", "Timed out (denied)"],
    ["the run was aborted", "Run stopped (denied)"],
    ["something else", "Denied: something else"],
  ])("a denial for the reason %s reads %s", (reason, text) => {
    const w = mount(PermissionCard, { props: { request: { ...request, decision: "deny", reason }, skillName: "A" } });
    expect(w.text()).toContain(text);
    expect(w.text().includes("Timed out")).toBe(text.startsWith("Timed out"));
  });

  it("shows the outcome once resolved", () => {
    const w = mount(PermissionCard, { props: { request: { ...request, decision: "allow", remember: true }, skillName: "A" } });
    expect(w.findAll("button")).toHaveLength(0);
    expect(w.text()).toContain("Always allowed");
  });
});

describe("ProposalCard", () => {
  it("summarises the proposed graph and answers", async () => {
    const w = mount(ProposalCard, {
      props: {
        request: {
          request_id: "ui_1", run_id: null, action: "propose_workflow",
          payload: { graph: { "1": { class_type: "KSampler" }, "2": { class_type: "CLIPTextEncode" }, "3": { class_type: "CLIPTextEncode" } } },
        },
        canLoad: true,
      },
    });
    expect(w.text()).toContain("Proposed workflow: 3 nodes");
    expect(w.text()).toContain("CLIPTextEncode ×2");
    await w.findAll("button").find((b) => b.text() === "Load into canvas")!.trigger("click");
    expect(w.emitted("answer")).toEqual([[true]]);
  });
});

describe("mentions", () => {
  it.each([
    ["@ec", 3, { start: 0, query: "ec" }],
    ["@echo @as", 9, { start: 6, query: "as" }],
    ["hi @", 4, null],  // only leading mentions address roles
    ["tell me @workflow", 17, null],
    ["mail@x", 6, null],
    ["@echo hi", 8, null],
  ] as const)("mentionAt(%j, %d)", (text, caret, expected) => {
    expect(mentionAt(text, caret)).toEqual(expected);
  });

  it("leadingMentions keeps only known roles at the start", () => {
    const roles = new Set(["echo", "assistant"]);
    expect(leadingMentions("@echo @assistant hi", roles)).toEqual(["echo", "assistant"]);
    expect(leadingMentions("@nobody hi", roles)).toEqual([]);
    expect(leadingMentions("hi @echo", roles)).toEqual([]);
  });
});

describe("useAutoScroll", () => {
  /** A scroll box whose layout the test sets (happy-dom lays nothing out). */
  function scrollBox() {
    const Box = defineComponent({
      setup(_, { expose }) {
        const box = ref<HTMLElement | null>(null);
        expose(useAutoScroll(box));
        return () => h("div", { ref: box }, [h("p", "x")]);
      },
    });
    const w = mount(Box, { attachTo: document.body });
    const el = w.element as HTMLElement;
    const layout = { scrollHeight: 1000, clientHeight: 300 };
    Object.defineProperty(el, "scrollHeight", { get: () => layout.scrollHeight });
    Object.defineProperty(el, "clientHeight", { get: () => layout.clientHeight });
    const scrollTo = (top: number) => {
      el.scrollTop = top;
      el.dispatchEvent(new Event("scroll"));
    };
    const api = w.vm as unknown as { pinned: boolean; scrollToBottom(): void };
    return { w, api, el, layout, scrollTo };
  }

  it("follows content that grows with no change to the DOM (an image loads, a turn is first laid out)", async () => {
    // A ResizeObserver by hand: happy-dom has none that fires.
    const observed: Element[] = [];
    let changed = () => undefined as void;
    vi.stubGlobal("ResizeObserver", class {
      constructor(cb: () => void) {
        changed = cb;
      }
      observe(el: Element) {
        observed.push(el);
      }
      disconnect() {}
    });
    const Box = defineComponent({
      setup() {
        const box = ref<HTMLElement | null>(null);
        const content = ref<HTMLElement | null>(null);
        useAutoScroll(box, content);
        return () => h("div", { ref: box }, [h("div", { ref: content }, "x")]);
      },
    });
    const w = mount(Box, { attachTo: document.body });
    const el = w.element as HTMLElement;
    let scrollHeight = 1000;
    Object.defineProperty(el, "scrollHeight", { get: () => scrollHeight });
    expect(observed).toEqual([el, el.firstElementChild]);
    scrollHeight = 1600; // the content grew; nothing was added
    changed();
    expect(el.scrollTop).toBe(1600);
    w.unmount();
    vi.unstubAllGlobals();
  });

  it("stays pinned when the box shrinks under it, and lets go only when the person scrolls up", async () => {
    const { w, api, el, layout, scrollTo } = scrollBox();
    scrollTo(700); // at the bottom
    expect(api.pinned).toBe(true);
    layout.clientHeight = 190; // the composer grew with a long message: the gap is now 110 px
    scrollTo(700);
    expect(api.pinned).toBe(true);
    expect(el.scrollTop).toBe(1000);
    scrollTo(200); // the person scrolls up
    expect(api.pinned).toBe(false);
    api.scrollToBottom();
    expect([api.pinned, el.scrollTop]).toEqual([true, 1000]);
    w.unmount();
  });
});
