/** A profile's declared models in the provider settings: the list, a model's form and its checks,
 * declaring one the provider lists, removing one, and what is sent (the PATCH of `models`). */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { flushPromises, type DOMWrapper, type VueWrapper } from "@vue/test-utils";
import { defineComponent, h } from "vue";
import ProviderModels from "../src/components/ProviderModels.vue";
import { setLocale } from "../src/i18n";
import { fromDraft, startingCaps, toDraft } from "../src/modelCaps";
import type { ModelCaps, ModelInfo, ProviderProfile } from "../src/protocol";
import { usePanelStore } from "../src/store";
import { defaultRoutes, makeDeps, mountWith, type Routes } from "./harness";

beforeEach(() => setLocale("en"));
afterEach(() => {
  document.body.innerHTML = "";
});

const caps = (over: Partial<ModelCaps> = {}): ModelCaps => ({
  tools: true, vision: false, context_tokens: 8192, input_price: 1, output_price: 4, cache_read_price: null, cache_write_price: null, ...over,
});

function profile(over: Partial<ProviderProfile> = {}): ProviderProfile {
  return {
    name: "openai", kind: "openai", base_url: "https://api.example/v1", default_model: "m1", key_env: null,
    models: { m1: caps(), big: caps({ context_tokens: 1_047_576, vision: true, input_price: 2, output_price: 8, cache_read_price: 0.25 }) },
    extra: {}, has_key: true, key_hint: "…wxyz", ...over,
  };
}

/** ProviderModels for the store's only profile, as the dialog shows it; the PATCH answers with the body applied. */
function mounted(opts: { routes?: Routes; profile?: ProviderProfile; listed?: ModelInfo[]; open?: string } = {}) {
  const routes = opts.routes ?? defaultRoutes();
  const start = opts.profile ?? profile();
  routes["PATCH /opencode/providers/openai"] ??= (body) => [200, { ...start, ...(body as object) }];
  if (opts.listed) routes["GET /opencode/providers/openai/models"] = () => [200, { models: opts.listed }];
  const made = makeDeps(routes);
  const Host = defineComponent({
    setup() {
      const store = usePanelStore();
      store.providers = [start];
      return () => (store.providers[0] ? h(ProviderModels, { profile: store.providers[0], open: opts.open ?? null }) : null);
    },
  });
  const w = mountWith(Host, made.deps);
  const patches = () => made.transport.calls.filter((c) => c.method === "PATCH").map((c) => c.body);
  return { ...made, w, patches };
}

const byLabel = (w: VueWrapper, label: string) => w.find(`[aria-label="${label}"]`);
const form = (w: VueWrapper) => w.find("form[aria-label^='Model ']");
const field = (w: VueWrapper, name: string) => form(w).find(`[name=${name}]`) as DOMWrapper<HTMLInputElement>;
const rows = (w: VueWrapper) => w.findAll("li[data-model]").map((r) => [r.find(".oc-model-id").text(), ...r.findAll("dd").map((c) => c.text())]);
const alerts = (w: VueWrapper) => w.findAll("[role=alert]").map((a) => a.text());

describe("a profile's models", () => {
  it("lists each declared model: context, tools, vision, prices, and the default of an unset cache price", async () => {
    const { w } = mounted();
    await flushPromises();
    expect(w.find("li[data-model=m1]").findAll("dt").map((c) => c.text())).toEqual(["Context (tokens)", "Tools", "Vision", "Input", "Output", "Cache read", "Cache write"]);
    expect(rows(w)).toEqual([
      ["m1", "8,192", "yes", "no", "1", "4", "0.5 (default)", "1 (default)"],
      ["big", "1,047,576", "yes", "yes", "2", "8", "0.25", "2 (default)"],
    ]);
  });

  it("an Anthropic or Ollama profile's unset cache prices fall back to their own defaults", async () => {
    const anthropic = mounted({ profile: profile({ kind: "anthropic", models: { c: caps({ input_price: 3 }) } }) });
    await flushPromises();
    expect(rows(anthropic.w)[0].slice(6)).toEqual(["0.3 (default)", "3.75 (default)"]);
    const ollama = mounted({ profile: profile({ kind: "ollama", models: { q: caps({ input_price: 0 }) } }) });
    await flushPromises();
    expect(rows(ollama.w)[0].slice(6)).toEqual(["0 (default)", "0 (default)"]);
  });

  it("edits one: its form starts from its caps, checks the server's limits, and saves the whole table", async () => {
    const { w, patches } = mounted();
    await flushPromises();
    await byLabel(w, "Edit model m1").trigger("click");
    await flushPromises();
    expect(document.activeElement).toBe(field(w, "context_tokens").element);
    expect(field(w, "context_tokens").element.value).toBe("8192");
    expect(field(w, "cache_read_price").element.value).toBe("");
    expect(field(w, "cache_read_price").attributes("placeholder")).toBe("0.5 (default)");
    await field(w, "input_price").setValue("3");
    expect(field(w, "cache_read_price").attributes("placeholder")).toBe("1.5 (default)"); // follows the input price

    await field(w, "context_tokens").setValue("100");
    await field(w, "output_price").setValue("-1");
    await field(w, "cache_write_price").setValue("1e6");
    await form(w).trigger("submit");
    await flushPromises();
    expect(alerts(w)).toEqual(["A whole number from 512 to 100,000,000", "A number from 0 to 100,000", "A number from 0 to 100,000"]);
    expect(field(w, "output_price").attributes("aria-invalid")).toBe("true");
    expect(document.activeElement).toBe(field(w, "context_tokens").element);
    expect(patches()).toEqual([]);

    await field(w, "context_tokens").setValue("128,000");
    await field(w, "output_price").setValue("");
    await field(w, "cache_write_price").setValue("3.75");
    await field(w, "vision").setValue(true);
    await form(w).trigger("submit");
    await flushPromises();
    expect(patches()).toEqual([{
      models: {
        m1: { tools: true, vision: true, context_tokens: 128_000, input_price: 3, output_price: 0, cache_read_price: null, cache_write_price: 3.75 },
        big: profile().models.big,
      },
    }]);
    expect(form(w).exists()).toBe(false);
    expect(rows(w)[0]).toEqual(["m1", "128,000", "yes", "yes", "3", "0", "1.5 (default)", "3.75"]);
    expect(document.activeElement).toBe(byLabel(w, "Edit model m1").element);
  });

  it("declares a model the provider lists, its form prefilled with the caps the server uses for it now", async () => {
    const listed: ModelInfo[] = [
      { id: "m1", caps: caps() },
      // Undeclared: listed with the caps in effect, the kind's cache shares filled in (0.5x and 1x of 2).
      { id: "m2", caps: caps({ context_tokens: 65_536, vision: true, input_price: 2, output_price: 6, cache_read_price: 1, cache_write_price: 2 }) },
      { id: "m3", caps: null },
    ];
    const { w, patches } = mounted({ listed });
    await flushPromises();
    expect(w.findAll("datalist option").map((o) => o.attributes("value"))).toEqual(["m2", "m3"]); // not those declared
    const id = w.find("input[aria-label='Model id']");
    await w.find("form:not([aria-label])").trigger("submit");
    expect(alerts(w)).toEqual(["Name the model"]);
    await id.setValue(" m2 ");
    await w.find("form:not([aria-label])").trigger("submit");
    await flushPromises();
    expect(form(w).attributes("aria-label")).toBe("Model m2");
    expect(document.activeElement).toBe(field(w, "context_tokens").element);
    expect([field(w, "context_tokens"), field(w, "input_price"), field(w, "output_price"), field(w, "cache_read_price"), field(w, "cache_write_price")].map((f) => f.element.value))
      .toEqual(["65536", "2", "6", "", ""]); // the default cache prices stay unset, to follow the input price
    expect(field(w, "vision").element.checked).toBe(true);
    await form(w).trigger("submit");
    await flushPromises();
    expect(patches()).toEqual([{
      models: { ...profile().models, m2: { tools: true, vision: true, context_tokens: 65_536, input_price: 2, output_price: 6, cache_read_price: null, cache_write_price: null } },
    }]);
    expect(rows(w).map((r) => r[0])).toEqual(["m1", "big", "m2"]);
  });

  it("a model declared with nothing listed for it starts from ModelCaps' defaults; Cancel declares nothing", async () => {
    const { w, patches } = mounted({ listed: [] });
    await flushPromises();
    await w.find("input[aria-label='Model id']").setValue("vendor/new-model");
    await w.find("form:not([aria-label])").trigger("submit");
    await flushPromises();
    expect([field(w, "context_tokens"), field(w, "input_price"), field(w, "output_price")].map((f) => f.element.value)).toEqual(["32000", "0", "0"]);
    expect(field(w, "tools").element.checked).toBe(true);
    await w.findAll("button").find((b) => b.text() === "Cancel")!.trigger("click");
    await flushPromises();
    expect(form(w).exists()).toBe(false);
    expect(patches()).toEqual([]);
    expect(document.activeElement).toBe(w.find("input[aria-label='Model id']").element);
  });

  it("removes one after a confirm", async () => {
    const { w, patches } = mounted();
    await flushPromises();
    await byLabel(w, "Remove model big").trigger("click");
    await flushPromises();
    expect(w.find("[role=alertdialog]").attributes("aria-label")).toBe("Stop declaring big? It gets the caps Opencode knows for it.");
    expect(document.activeElement?.textContent).toBe("Cancel");
    await w.findAll("button").find((b) => b.text() === "Cancel")!.trigger("click");
    await flushPromises();
    expect(patches()).toEqual([]);
    expect(document.activeElement).toBe(byLabel(w, "Edit model big").element);
    await byLabel(w, "Remove model big").trigger("click");
    await w.findAll("button").find((b) => b.text() === "Confirm")!.trigger("click");
    await flushPromises();
    expect(patches()).toEqual([{ models: { m1: caps() } }]);
    expect(rows(w).map((r) => r[0])).toEqual(["m1"]);
  });

  it("shows the server's refusal beside the field it names, else under the form", async () => {
    const routes = defaultRoutes();
    const refusals = [
      [400, { error: { code: "validation_error", message: "invalid models.m1.input_price: Input should be less than or equal to 100000", details: { errors: [{ loc: ["models", "m1", "input_price"], msg: "Input should be less than or equal to 100000", type: "less_than_equal" }] } } }],
      [404, { error: { code: "not_found", message: "no provider named 'openai'", details: { provider: "openai" } } }],
    ] as [number, unknown][];
    routes["PATCH /opencode/providers/openai"] = () => refusals.shift()!;
    const { w, toasts } = mounted({ routes });
    await flushPromises();
    await byLabel(w, "Edit model m1").trigger("click");
    await flushPromises();
    await form(w).trigger("submit");
    await flushPromises();
    const input = field(w, "input_price");
    const described = w.find(`#${input.attributes("aria-describedby")}`);
    expect(described.text()).toBe("invalid models.m1.input_price: Input should be less than or equal to 100000");
    expect(described.attributes("role")).toBe("alert");
    expect(input.attributes("aria-invalid")).toBe("true");
    expect(toasts).toEqual([]);
    expect(form(w).attributes("aria-describedby")).toBeUndefined();
    await form(w).trigger("submit");
    await flushPromises();
    expect(input.attributes("aria-describedby")).toBeUndefined();
    const formError = w.find("[data-testid=model-form-error]");
    expect(formError.text()).toBe("no provider named 'openai'");
    expect(form(w).attributes("aria-describedby")).toBe(formError.attributes("id")); // the form's own error, read with it
    expect(form(w).exists()).toBe(true); // what was typed stays
  });

  it("sends the revision it loaded; refused as changed elsewhere, it says so, shows the profile as it is now and keeps what was typed", async () => {
    // Since this tab loaded the profile at r1, another declared `other` and set m1's output price.
    const now = profile({ revision: "r2", models: { ...profile().models, m1: caps({ output_price: 7 }), other: caps({ input_price: 9 }) } });
    const routes = defaultRoutes();
    const message = "provider 'openai' was changed elsewhere since you loaded it; reload it and apply your change again";
    const answers: [number, unknown][] = [[409, { error: { code: "profile_changed", message, details: { provider: "openai", revision: "r2" } } }]];
    routes["PATCH /opencode/providers/openai"] = (body) => answers.shift() ?? [200, { ...now, ...(body as object), revision: "r3" }];
    routes["GET /opencode/providers/openai"] = () => [200, now];
    const { w, patches, transport, toasts } = mounted({ routes, profile: profile({ revision: "r1" }) });
    await flushPromises();
    await byLabel(w, "Edit model m1").trigger("click");
    await flushPromises();
    await field(w, "input_price").setValue("3");
    await form(w).trigger("submit");
    await flushPromises();
    const ifMatch = () => transport.calls.filter((c) => c.method === "PATCH").map((c) => c.headers["If-Match"]);
    expect(ifMatch()).toEqual(['"r1"']);
    const formError = w.find("[data-testid=model-form-error]");
    expect(formError.text()).toBe(`${message} Reloaded: it shows as it is now. Check it and apply your change again (a form keeps what you typed).`);
    expect(form(w).attributes("aria-describedby")).toBe(formError.attributes("id"));
    expect(toasts).toEqual([]);
    expect(rows(w).map((r) => r[0])).toEqual(["m1", "big", "other"]); // read again
    expect(field(w, "input_price").element.value).toBe("3"); // what was typed stays
    expect(field(w, "output_price").element.value).toBe("7"); // what was not, follows the other tab

    await form(w).trigger("submit"); // applied to the models as they are now: the other tab's changes stay
    await flushPromises();
    expect(ifMatch()).toEqual(['"r1"', '"r2"']);
    expect(patches()[1]).toEqual({ models: { ...now.models, m1: caps({ input_price: 3, output_price: 7 }) } });
    expect(form(w).exists()).toBe(false);
  });

  it("an Ollama profile says the context it runs its models with", async () => {
    const { w } = mounted({ profile: profile({ kind: "ollama", extra: { options: { num_ctx: 16_384 } } }), open: "m1" });
    await flushPromises();
    expect(form(w).text()).toContain("Ollama runs its models with options.num_ctx = 16,384 tokens");
  });
});

describe("modelCaps", () => {
  it("reads a draft by the server's limits", () => {
    const ok = (over: Partial<ReturnType<typeof toDraft>>) => fromDraft({ ...toDraft(caps()), ...over }).ok;
    expect(ok({ context_tokens: "512" })).toBe(true);
    expect(ok({ context_tokens: "100000000" })).toBe(true);
    for (const bad of ["511", "100000001", "1.5", "", "0x200", "Infinity", "12k"]) expect(ok({ context_tokens: bad })).toBe(false);
    expect(ok({ input_price: "100000" })).toBe(true);
    for (const bad of ["100000.5", "-0.1", "NaN", "1,5", "$1"]) expect(ok({ input_price: bad })).toBe(false);
  });

  it("starts from the declared caps, else the listed ones with their default cache prices unset", () => {
    const declared = caps({ cache_read_price: 0.1 });
    expect(startingCaps("openai", declared, caps({ context_tokens: 1 }))).toEqual(declared);
    expect(startingCaps("anthropic", undefined, caps({ input_price: 3, cache_read_price: 0.3, cache_write_price: 4 })))
      .toEqual(caps({ input_price: 3, cache_read_price: null, cache_write_price: 4 }));
    expect(startingCaps("openai", undefined, null)).toEqual(caps({ context_tokens: 32_000, input_price: 0, output_price: 0 }));
  });
});
