import { emit, handler, reject } from "iotwasm-sdk";

handler((msg) => {
  const readings = [];
  msg.text.split(/\r?\n/).filter((l) => l !== "").forEach((line, i) => {
    const parts = line.split(",");
    if (parts.length !== 3) reject(`line ${i + 1}: expected device,sensor,value`);
    const value = Number(parts[2]);
    if (parts[2].trim() === "" || Number.isNaN(value)) reject(`line ${i + 1}: ${parts[2]} is not a number`);
    readings.push({ device: parts[0], sensor: parts[1], value });
  });
  for (const r of readings) emit(r, `out/${r.device}/${r.sensor}`); // only when every line decoded
});
