// @vitest-environment node
/**
 * The TypeScript mirror must not drift from core/protocol.py: same version, same event and
 * command types, and the same fields on the models the panel sends. Reads the Python source.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { COMMAND_TYPES, EVENT_TYPES, PROTOCOL_VERSION } from "../src/protocol";

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

  it("knows every command type", () => {
    const types = [...block("COMMAND_TYPES").matchAll(/"([a-z.]+)"/g)].map((m) => m[1]);
    expect([...COMMAND_TYPES].sort()).toEqual(types.sort());
  });

  it.each([
    ["SessionCreate", ["id", "title", "skills", "provider", "model"]],
    ["SessionPatch", ["title", "skills", "provider", "model", "budget", "permissions"]],
    ["SendBody", ["text", "images", "skills", "mode"]],
    ["PermissionReplyBody", ["request_id", "decision", "remember"]],
    ["AbortBody", ["run_id", "skill"]],
    ["JoinCommand", ["type", "session_id", "after_seq", "panel"]],
    ["UiReplyCommand", ["type", "session_id", "request_id", "ok", "result", "error"]],
    ["ProviderKeyBody", ["key"]],
  ])("%s has the fields the panel sends", (model, fields) => {
    expect(fieldsOf(model)).toEqual(fields);
  });
});
