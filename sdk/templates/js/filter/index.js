import { config, handler, reject, setup } from "iotwasm-sdk";

let lo = -Infinity, hi = Infinity;

setup(() => {
  lo = config.number("min", lo);
  hi = config.number("max", hi);
});

handler((msg) => {
  const reading = msg.json();
  const value = reading === null || typeof reading !== "object" ? undefined : reading.value;
  if (typeof value !== "number") reject("no numeric value");
  return lo <= value && value <= hi ? msg : null; // passed on unchanged, or dropped
});
