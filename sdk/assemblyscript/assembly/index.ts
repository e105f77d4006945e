// iotwasm SDK for AssemblyScript: guest modules on the iotwasm ABI v1 (docs/abi.md), with
// the reach of sdk/c/iotwasm.h. A module:
//
//   import { Message, Output, register } from "iotwasm";
//   import { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process } from "iotwasm";
//   export { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process };  // the ABI's exports
//
//   function handle(msg: Message, out: Output): void {
//     if (msg.payload.length == 0) throw new Error("empty payload");   // a reject
//     out.emit(msg.payload);
//   }
//   register(handle);
//
// Build with `iotwasm build` (it passes --runtime minimal and --use abort=..., see abi.ts).
export {
  Message, Output, Handler, Init, register,
  iot_abi_version, iot_alloc, iot_free, iot_init, iot_process, iotAbort,
  IOT_OK, IOT_OUTPUT_FULL, IOT_ERR_FRAMING, IOT_ERR_INTERNAL,
} from "./abi";
export { Bytes, Utf8 } from "./bytes";
export { Buf } from "./buf";
export { isNumber, parseNumber } from "./number";
export { Level, log, nowMs, randomBytes, randomU64, kv, config, metrics, twin } from "./host";
import * as json from "./json";
export { json };
