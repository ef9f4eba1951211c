// @vitest-environment node
/** Error words stay readable (WCAG AA, 4.5:1) on every ComfyUI palette the panel lives in: the
 * colours styles.css resolves from each palette's variables, as the browser would resolve them. */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

const css = readFileSync(new URL("../src/styles.css", import.meta.url), "utf8");

type Rgb = [number, number, number];

/** The host variables each palette sets (ComfyUI's `comfy_base`, the standalone page's own). */
const PALETTES: Record<string, Record<string, string>> = {
  "ComfyUI 1.27 dark": {
    "--fg-color": "#fff", "--comfy-menu-bg": "#353535", "--comfy-menu-secondary-bg": "#292929", "--comfy-input-bg": "#222",
    "--bg-color": "#202020", "--error-text": "#ff4444",
  },
  "ComfyUI 1.27 light": {
    "--fg-color": "#222", "--comfy-menu-bg": "#F5F5F5", "--comfy-input-bg": "#C9C9C9", "--bg-color": "#DDD", "--error-text": "#F44336",
  },
  "ComfyUI 1.58 dark": {
    "--fg-color": "#fff", "--comfy-menu-bg": "#171718", "--comfy-input-bg": "#222", "--bg-color": "#202020", "--error-text": "#b33a3a",
  },
  "ComfyUI 1.58 light": {
    "--fg-color": "#222", "--comfy-menu-bg": "#fff", "--comfy-input-bg": "#e5e5e5", "--bg-color": "#DDD", "--error-text": "#b33a3a",
  },
  "standalone dark": { "--fg-color": "#e8e8e8", "--comfy-menu-bg": "#202020", "--comfy-menu-secondary-bg": "#181818", "--comfy-input-bg": "#2b2b2b" },
  "standalone light": { "--fg-color": "#18181b", "--comfy-menu-bg": "#f4f4f5", "--comfy-menu-secondary-bg": "#ffffff", "--comfy-input-bg": "#ffffff" },
};

/** The custom properties `.oc-root` declares. */
const ROOT_VARS = Object.fromEntries(
  [...(/\.oc-root \{([^}]*)\}/.exec(css)?.[1] ?? "").matchAll(/(--[\w-]+):\s*([^;]+);/g)].map((m) => [m[1], m[2].trim()]),
);

/** The `color` a rule (its exact selector) declares. */
function colorOf(selector: string): string {
  const escaped = selector.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const rule = new RegExp(`(?:^|[}\\s,])${escaped}\\s*\\{([^}]*)\\}`, "m").exec(css);
  const value = rule && /(?:^|[;\s])color:\s*([^;]+);/.exec(rule[1])?.[1];
  if (!value) throw new Error(`no color for ${selector}`);
  return value.trim();
}

/** The closing parenthesis matching the one at `open`. */
function closing(s: string, open: number): number {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    if (s[i] === "(") depth++;
    else if (s[i] === ")" && --depth === 0) return i;
  }
  throw new Error(`unbalanced: ${s}`);
}

/** Split at top-level commas. */
function args(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "(") depth++;
    else if (s[i] === ")") depth--;
    else if (s[i] === "," && depth === 0) {
      out.push(s.slice(start, i).trim());
      start = i + 1;
    }
  }
  return [...out, s.slice(start).trim()];
}

function hex(s: string): Rgb {
  const h = s.slice(1);
  const full = h.length === 3 ? [...h].map((c) => c + c).join("") : h;
  return [0, 2, 4].map((i) => parseInt(full.slice(i, i + 2), 16)) as Rgb;
}

/** Resolve a colour value the way the browser does: var() with fallbacks, hex, color-mix in srgb. */
function resolve(value: string, host: Record<string, string>): Rgb {
  const v = value.trim();
  if (v.startsWith("#")) return hex(v);
  if (v.startsWith("var(")) {
    const [name, fallback] = (() => {
      const inner = v.slice(4, closing(v, 3));
      const i = inner.indexOf(",");
      return i < 0 ? [inner.trim(), undefined] : [inner.slice(0, i).trim(), inner.slice(i + 1)];
    })();
    const set = host[name] ?? ROOT_VARS[name];
    if (set !== undefined) return resolve(set, host);
    if (fallback === undefined) throw new Error(`${name} is not set`);
    return resolve(fallback, host);
  }
  if (v.startsWith("color-mix(")) {
    const [space, a, b] = args(v.slice(10, closing(v, 9)));
    if (space !== "in srgb") throw new Error(`color-mix ${space}`);
    const part = (s: string) => {
      const m = /^(.*?)\s+([\d.]+)%$/.exec(s);
      return m ? { color: resolve(m[1], host), p: Number(m[2]) / 100 } : { color: resolve(s, host), p: NaN };
    };
    const x = part(a);
    const y = part(b);
    const px = Number.isNaN(x.p) ? 1 - (Number.isNaN(y.p) ? 0.5 : y.p) : x.p;
    return x.color.map((c, i) => Math.round(c * px + y.color[i] * (1 - px))) as Rgb;
  }
  throw new Error(`cannot resolve ${v}`);
}

function luminance([r, g, b]: Rgb): number {
  const lin = (c: number) => {
    const s = c / 255;
    return s <= 0.04045 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

function contrast(a: Rgb, b: Rgb): number {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

// Where error words are drawn: a failed reply, a field's and the composer's error, a Delete or
// Remove button, the failed badge, the debug log's errors.
const ERROR_WORDS = [".oc-msg-error", ".oc-field-error", ".oc-hint--error", ".oc-btn--danger", ".oc-badge--error", ".oc-log--error"];
// What they are drawn on: the panel, its inputs' and its cards' backgrounds.
const BACKGROUNDS = ["var(--oc-bg)", "var(--oc-bg-2)", "var(--oc-bg-3)"];

describe("error colours", () => {
  it("the contrast ratio is WCAG's", () => {
    expect(contrast([255, 255, 255], [0, 0, 0])).toBeCloseTo(21, 5);
    expect(contrast(hex("#b33a3a"), hex("#171718"))).toBeLessThan(4.5); // 1.58's own error red on its dark menu
  });

  for (const [name, host] of Object.entries(PALETTES)) {
    it(`error words are readable on ${name}`, () => {
      const low = ERROR_WORDS.flatMap((selector) =>
        BACKGROUNDS.map((bg) => ({ selector, bg, ratio: contrast(resolve(colorOf(selector), host), resolve(bg, host)) })),
      ).filter((c) => c.ratio < 4.5);
      expect(low).toEqual([]);
    });
  }
});
