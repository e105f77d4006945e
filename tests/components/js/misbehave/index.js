// A test module that misbehaves on request; the payload says what to do (as the Python twin):
// ok:* emits it; log:* logs it, counts it in kv, emits it; loop spins; oom allocates until
// memory runs out; deep recurses without end; boom throws; binary emits bytes that are not
// UTF-8; many:N emits N outputs, the i-th on topic t/i.
import { emit, handler, kv, log, setup } from "iotwasm-sdk";

const hoard = [];

function deep(n) {
  return deep(n + 1) + 1;
}

setup(() => {
  kv.get("calls");
});

handler((msg) => {
  const cmd = msg.text;
  if (cmd.startsWith("ok:")) return msg;
  if (cmd.startsWith("log:")) {
    log.info(cmd);
    kv.set("calls", String(Number(kv.get("calls") || "0") + 1));
    return msg;
  }
  if (cmd === "loop") for (;;) {}
  if (cmd === "oom") for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
  if (cmd === "deep") return deep(0);
  if (cmd === "boom") throw new Error("boom");
  if (cmd === "binary") return Uint8Array.from([0xff, 0x00, 0x1e, 0x1f]);
  if (cmd.startsWith("many:")) {
    for (let i = 0; i < Number(cmd.slice(5)); i++) emit(String(i), `t/${i}`);
    return null;
  }
  throw new Error(`unknown command ${cmd}`);
});
