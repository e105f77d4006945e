import { config, handler, kv, reject, setup } from "iotwasm-sdk";

let windowSize = 5;

setup(() => {
  windowSize = Math.max(1, Math.trunc(config.number("window", windowSize)));
});

handler((msg) => {
  const reading = msg.json();
  if (reading === null || typeof reading !== "object" || typeof reading.value !== "number") {
    reject("no numeric value");
  }
  const device = String(reading.device ?? msg.topic);
  const window = windowSize > 1 ? kv.getJson(`w/${device}`, []).slice(-(windowSize - 1)) : [];
  window.push(reading.value);
  kv.setJson(`w/${device}`, window); // a kv write: committed, never repeated after a trap
  return { device, avg: window.reduce((a, b) => a + b, 0) / window.length, n: window.length };
});
