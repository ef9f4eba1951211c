/** A scripted WebSocket and transport: no network, every frame recorded. */
import type { SocketLike, Transport } from "../src/client";

export class FakeSocket implements SocketLike {
  static all: FakeSocket[] = [];
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  sent: Record<string, unknown>[] = [];
  closed = false;

  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }

  static reset(): void {
    FakeSocket.all = [];
  }

  static last(): FakeSocket {
    const s = FakeSocket.all[FakeSocket.all.length - 1];
    if (!s) throw new Error("no socket opened");
    return s;
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }

  close(): void {
    this.closed = true;
    this.readyState = 3;
  }

  // ---- driven by the test
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  drop(): void {
    this.readyState = 3;
    this.onclose?.({ code: 1006 });
  }

  receive(frame: unknown): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** Answer the last command of `type` with an ack. */
  ack(type: string, data: Record<string, unknown> = {}): Record<string, unknown> {
    const cmd = [...this.sent].reverse().find((c) => c.type === type);
    if (!cmd) throw new Error(`no ${type} command sent; sent: ${this.sent.map((c) => c.type).join(",")}`);
    this.receive({ type: "ack", id: cmd.id, data });
    return cmd;
  }

  commands(type: string): Record<string, unknown>[] {
    return this.sent.filter((c) => c.type === type);
  }
}

export interface Call {
  path: string;
  method: string;
  headers: Record<string, string>;
  body: unknown;
}

/** A transport answering from a route table; records every request. */
export function fakeTransport(routes: Record<string, (body: unknown) => [number, unknown]>): Transport & { calls: Call[] } {
  const calls: Call[] = [];
  return {
    calls,
    wsUrl: (path) => `ws://test${path}`,
    async fetch(path, init) {
      const method = init.method ?? "GET";
      const body = init.body ? JSON.parse(String(init.body)) : undefined;
      calls.push({ path, method, headers: (init.headers ?? {}) as Record<string, string>, body });
      const key = `${method} ${path.split("?")[0]}`;
      const handler = routes[key];
      const [status, json] = handler ? handler(body) : [404, { error: { code: "not_found", message: key, details: {} } }];
      return new Response(JSON.stringify(json), { status, headers: { "Content-Type": "application/json" } });
    },
  };
}
