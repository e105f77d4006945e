;; passthrough: the iotwasm ABI v1 by hand, without the C SDK (spec: docs/abi.md).
;;
;; Every input comes back unchanged: same payload, same topic. Build with
;;     wat2wasm passthrough.wat -o passthrough.wasm
;; No config and no host functions: the module imports nothing.
(module
  (memory (export "memory") 1)

  ;; Bump allocator. Addresses below 4096 are never handed out, so 0 can mean "no memory".
  (global $heap (mut i32) (i32.const 4096))

  (func (export "iot_abi_version") (result i32) (i32.const 1))

  (func (export "iot_alloc") (param $size i32) (result i32)
    (local $p i32) (local $end i64) (local $have i64)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 15)) (i32.const -16)))
    ;; 64-bit arithmetic: p + size may pass 4 GiB, which must fail rather than wrap
    (local.set $end (i64.add (i64.extend_i32_u (local.get $p)) (i64.extend_i32_u (local.get $size))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq (memory.grow (i32.wrap_i64 (i64.shr_u
                      (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                      (i64.const 16))))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $p))

  ;; in:  count records [i64 timestamp][u32 topic_len][u32 payload_len][topic][payload]
  ;; out: header [u32 used][u32 inputs_done], then records
  ;;      [u32 input_index][u32 kind][u32 topic_len][u32 payload_len][topic][payload]
  (func (export "iot_process")
        (param $in i32) (param $in_len i32) (param $count i32) (param $out i32) (param $cap i32)
        (result i32)
    (local $i i32) (local $p i32) (local $left i32) (local $body i64) (local $size i32)
    (local $used i32)
    ;; without room for the header nothing can be reported: IOT_ERR_INTERNAL
    (if (i32.lt_u (local.get $cap) (i32.const 8)) (then (return (i32.const -2))))
    (i64.store (local.get $out) (i64.const 0))
    (local.set $p (local.get $in))
    (local.set $left (local.get $in_len))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        ;; a record that does not parse is IOT_ERR_FRAMING; inputs_done names it
        (if (i32.lt_u (local.get $left) (i32.const 16)) (then (return (i32.const -1))))
        (local.set $body (i64.add (i64.load32_u offset=8 (local.get $p))
                                  (i64.load32_u offset=12 (local.get $p))))
        (if (i64.gt_u (local.get $body) (i64.extend_i32_u (i32.sub (local.get $left) (i32.const 16))))
          (then (return (i32.const -1))))
        (local.set $size (i32.add (i32.wrap_i64 (local.get $body)) (i32.const 16)))
        ;; the output record has the same size as the input record; when it does not fit,
        ;; IOT_OUTPUT_FULL: the header already says how many inputs are complete
        (if (i32.gt_u (local.get $size) (i32.sub (i32.sub (local.get $cap) (i32.const 8)) (local.get $used)))
          (then (return (i32.const 1))))
        (i32.store (i32.add (i32.add (local.get $out) (i32.const 8)) (local.get $used)) (local.get $i))
        (i32.store offset=4 (i32.add (i32.add (local.get $out) (i32.const 8)) (local.get $used)) (i32.const 0))
        ;; topic_len, payload_len, topic and payload are laid out in the output record exactly
        ;; as in the input record, after the 8 bytes that differ: one copy does it
        (memory.copy (i32.add (i32.add (local.get $out) (i32.const 16)) (local.get $used))
                     (i32.add (local.get $p) (i32.const 8))
                     (i32.sub (local.get $size) (i32.const 8)))
        (local.set $used (i32.add (local.get $used) (local.get $size)))
        (local.set $p (i32.add (local.get $p) (local.get $size)))
        (local.set $left (i32.sub (local.get $left) (local.get $size)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        ;; keep the header current: after a trap the host reads it to know what is done
        (i32.store (local.get $out) (local.get $used))
        (i32.store offset=4 (local.get $out) (local.get $i))
        (br $next)))
    (i32.const 0)))
