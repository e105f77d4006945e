// Package entry for asc, which resolves `import ... from "iotwasm"` to node_modules/iotwasm/index.ts.
export * from "./assembly/index";
