// @vitest-environment node
/**
 * The TypeScript mirror must not drift from core/protocol.py: same version, same event and
 * command types, and the same fields on the models the panel sends. Reads the Python source.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import type {
  ImagePart, LogData, Message, ModelCaps, PermissionRequestedData, ProviderProfile, Run, Session, ToolCallPart,
  ToolResultPart, UiRequestData, Usage,
} from "../src/protocol";
import { COMMAND_TYPES, EVENT_TYPES, MAX_CONTEXT_TOKENS, MAX_PRICE, MIN_CONTEXT_TOKENS, PROTOCOL_VERSION, SESSIONS_ROOM } from "../src/protocol";
import { CACHE_SHARES, DEFAULT_CAPS } from "../src/modelCaps";

/** All keys of T, checked by the type checker (a missing or unknown key fails `npm run typecheck`). */
function keys<T>() {
  return <const K extends readonly (keyof T)[]>(...k: Exclude<keyof T, K[number]> extends never ? K : never) => [...k] as string[];
}

const py = readFileSync(new URL("../../core/protocol.py", import.meta.url), "utf8");

function block(start: string): string {
  const i = py.indexOf(start);
  if (i < 0) throw new Error(`${start} not found in core/protocol.py`);
  const end = py.indexOf("\n\n", i);
  return py.slice(i, end < 0 ? undefined : end);
}

/** Field names of a pydantic model: its indented `name: type` lines, up to the next top-level line. */
function fieldsOf(model: string): string[] {
  const lines = py.slice(py.indexOf(`class ${model}(`)).split("\n").slice(1);
  const end = lines.findIndex((l) => l.length > 0 && !/^\s/.test(l));
  return lines
    .slice(0, end < 0 ? undefined : end)
    .map((l) => /^ {4}([a-z_]+):/.exec(l)?.[1])
    .filter((x): x is string => Boolean(x));
}

describe("protocol.ts mirrors core/protocol.py", () => {
  it("has the same protocol version", () => {
    expect(Number(/^PROTOCOL_VERSION = (\d+)/m.exec(py)?.[1])).toBe(PROTOCOL_VERSION);
  });

  it("knows every event type", () => {
    const types = [...block("EVENT_DATA").matchAll(/"([a-z.]+)":/g)].map((m) => m[1]);
    expect([...EVENT_TYPES].sort()).toEqual(types.sort());
  });

  it("names the list room as the server does", () => {
    expect(/^SESSIONS_ROOM = "(.*)"$/m.exec(py)?.[1]).toBe(SESSIONS_ROOM);
  });

  it("knows every command type", () => {
    const types = [...block("COMMAND_TYPES").matchAll(/"([a-z.]+)"/g)].map((m) => m[1]);
    expect([...COMMAND_TYPES].sort()).toEqual(types.sort());
  });

  it.each([
    ["SessionCreate", ["id", "title", "skills", "provider", "model"]],
    ["SessionPatch", ["title", "skills", "provider", "model", "budget", "permissions"]],
    ["SendBody", ["text", "images", "skills", "mode", "client_id"]],
    ["PermissionReplyBody", ["request_id", "decision", "remember"]],
    ["AbortBody", ["run_id", "skill"]],
    ["JoinCommand", ["type", "session_id", "after_seq", "panel"]],
    ["SessionsJoinCommand", ["type", "after_seq"]],
    ["UiReplyCommand", ["type", "session_id", "request_id", "ok", "result", "error", "answer_id"]],
    ["ProviderKeyBody", ["key"]],
  ])("%s has the fields the panel sends", (model, fields) => {
    expect(fieldsOf(model)).toEqual(fields);
  });

  it.each([
    ["Session", keys<Session>()("id", "title", "skills", "provider", "model", "created_at", "updated_at", "usage", "budget", "permissions", "last_seq")],
    ["Message", keys<Message>()("id", "session_id", "role", "skill", "run_id", "parts", "status", "created_at", "updated_at", "usage", "error", "error_code", "reply_to", "client_id")],
    ["Run", keys<Run>()("id", "session_id", "message_id", "skill", "status", "error", "error_code")],
    ["Usage", keys<Usage>()("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost")],
    ["ModelCaps", keys<ModelCaps>()("tools", "vision", "context_tokens", "input_price", "output_price", "cache_read_price", "cache_write_price")],
    ["ToolCallPart", keys<ToolCallPart>()("type", "id", "name", "arguments", "skill", "status", "started_at", "duration_ms", "provider_data")],
    ["ToolResultPart", keys<ToolResultPart>()("type", "tool_call_id", "name", "content", "is_error", "images")],
    ["ImagePart", keys<ImagePart>()("type", "source", "filename", "subfolder", "folder_type", "mime_type")],
    ["PermissionRequestedData", keys<PermissionRequestedData>()("request_id", "run_id", "skill", "tool", "permission_class", "summary", "arguments", "expires_at")],
    ["UiRequestData", keys<UiRequestData>()("request_id", "run_id", "action", "payload")],
    ["ProviderProfile", keys<ProviderProfile>()("name", "kind", "base_url", "default_model", "key_env", "models", "extra", "has_key", "key_hint", "revision")],
    ["LogData", keys<LogData>()("level", "module", "message", "time", "run_id")],
  ])("%s has the same fields in both", (model, fields) => {
    expect(fieldsOf(model).sort()).toEqual([...fields].sort());
  });
});

describe("the model caps form checks what the server checks", () => {
  const profiles = readFileSync(new URL("../../core/providers/profiles.py", import.meta.url), "utf8");
  const number = (text: string) => Number(text.replace(/_/g, ""));

  it("has ModelCaps' limits and defaults", () => {
    expect(number(/^MAX_PRICE = ([\d_.]+)/m.exec(py)![1])).toBe(MAX_PRICE);
    expect(number(/^MAX_CONTEXT_TOKENS = ([\d_]+)/m.exec(py)![1])).toBe(MAX_CONTEXT_TOKENS);
    const caps = py.slice(py.indexOf("class ModelCaps("), py.indexOf("\nclass ", py.indexOf("class ModelCaps(") + 1));
    expect(caps).toMatch(/context_tokens: int = Field\(default=32_000, ge=512, le=MAX_CONTEXT_TOKENS\)/);
    expect([MIN_CONTEXT_TOKENS, DEFAULT_CAPS.context_tokens]).toEqual([512, 32_000]);
    expect(caps).toMatch(/tools: bool = True\n\s+vision: bool = False/);
    for (const price of ["input_price", "output_price"]) expect(caps).toMatch(new RegExp(`${price}: float = Field\\(default=0\\.0, ge=0, le=MAX_PRICE`));
    for (const price of ["cache_read_price", "cache_write_price"]) expect(caps).toMatch(new RegExp(`${price}: float \\| None = Field\\(default=None, ge=0, le=MAX_PRICE`));
  });

  it("has each provider kind's default cache prices (profiles._CACHE_SHARES)", () => {
    const shares = /_CACHE_SHARES[^=]*= \{([^}]*)\}/.exec(profiles)![1];
    const parsed = Object.fromEntries([...shares.matchAll(/"(\w+)": \(([\d.]+), ([\d.]+)\)/g)].map((m) => [m[1], [Number(m[2]), Number(m[3])]]));
    expect(parsed).toEqual(CACHE_SHARES);
  });
});
