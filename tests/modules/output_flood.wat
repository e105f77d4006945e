;; Hostile: an output flood. For every call it fills the whole output buffer with 1 KiB
;; records for input 0 and answers IOT_OUTPUT_FULL without ever finishing that input
;; (inputs_done stays 0). The host keeps granting bigger buffers until max_output, then
;; dead-letters the input with OutputLimitExceeded. The records are well-formed, so what
;; stops it is the limit, not a framing error.
(module
  (memory (export "memory") 1)
  (func (export "iot_abi_version") (result i32) (i32.const 1))
  ;; Bump allocator over the memory above 4096; grows memory on demand, 0 when it cannot.
  (global $heap (mut i32) (i32.const 4096))
  (func $alloc (export "iot_alloc") (param $size i32) (result i32)
    (local $p i32) (local $end i64) (local $have i64)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 15)) (i32.const -16)))
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
  (func (export "iot_process") (param $in i32) (param $in_len i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (local $used i32) (local $r i32)
    (if (i32.lt_u (local.get $cap) (i32.const 8)) (then (return (i32.const -2))))
    (i64.store (local.get $out) (i64.const 0))
    (block $full
      (loop $more
        ;; 16-byte record header + 1024 payload bytes (whatever the buffer holds)
        (br_if $full (i32.gt_u (i32.const 1040)
                                (i32.sub (i32.sub (local.get $cap) (i32.const 8)) (local.get $used))))
        (local.set $r (i32.add (i32.add (local.get $out) (i32.const 8)) (local.get $used)))
        (i32.store (local.get $r) (i32.const 0))                 ;; input_index 0
        (i32.store offset=4 (local.get $r) (i32.const 0))        ;; kind message
        (i32.store offset=8 (local.get $r) (i32.const 0))        ;; no topic
        (i32.store offset=12 (local.get $r) (i32.const 1024))    ;; payload_len
        (local.set $used (i32.add (local.get $used) (i32.const 1040)))
        (i32.store (local.get $out) (local.get $used))
        (br $more)))
    (i32.const 1)))
