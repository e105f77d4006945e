import { config, handler, reject, setup } from "iotwasm-sdk";

let field = "value";

setup(() => {
  field = config.get("field", field);
});

handler((msg) => {
  const reading = msg.json();
  const value = reading === null || typeof reading !== "object" ? undefined : reading[field];
  if (typeof value !== "number") reject(`${field} is not a number`);
  reading[field] = Math.round((value * 9 / 5 + 32) * 100) / 100;
  reading.unit = "F";
  return reading; // an object is written as JSON
});
