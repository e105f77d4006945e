;; Echoes every input like trap_on_marker.wat (and traps on a payload starting with '!'),
;; but first hands each payload to the host through iot.log. A test's log callback can hold
;; the call there: the batch is then provably inside the guest, in the middle of its store,
;; and goes on writing guest memory once the callback returns. Needs capability log.
(module
  (import "iot" "log" (func $log (param i32 i32 i32)))
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
  ;; in:  records [i64 timestamp][u32 topic_len][u32 payload_len][topic][payload]
  ;; out: header [u32 used][u32 inputs_done], then records
  ;;      [u32 input_index][u32 kind][u32 topic_len][u32 payload_len][topic][payload]
  (func (export "iot_process") (param $in i32) (param $in_len i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (local $i i32) (local $p i32) (local $size i32) (local $used i32)
    (if (i32.lt_u (local.get $cap) (i32.const 8)) (then (return (i32.const -2))))
    (i64.store (local.get $out) (i64.const 0))
    (local.set $p (local.get $in))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $size (i32.add (i32.const 16)
          (i32.add (i32.load offset=8 (local.get $p)) (i32.load offset=12 (local.get $p)))))
        ;; the marker: a non-empty payload whose first byte is '!'
        (if (i32.load offset=12 (local.get $p))
          (then
            (if (i32.eq (i32.load8_u (i32.add (i32.add (local.get $p) (i32.const 16))
                                              (i32.load offset=8 (local.get $p))))
                        (i32.const 0x21))
              (then unreachable))))
        ;; iot.log(info, payload, payload_len)
        (call $log (i32.const 1)
                   (i32.add (i32.add (local.get $p) (i32.const 16)) (i32.load offset=8 (local.get $p)))
                   (i32.load offset=12 (local.get $p)))
        (if (i32.gt_u (local.get $size) (i32.sub (i32.sub (local.get $cap) (i32.const 8)) (local.get $used)))
          (then (return (i32.const 1))))
        (i32.store (i32.add (i32.add (local.get $out) (i32.const 8)) (local.get $used)) (local.get $i))
        (i32.store offset=4 (i32.add (i32.add (local.get $out) (i32.const 8)) (local.get $used)) (i32.const 0))
        ;; lengths, topic and payload have the same layout in both records: one copy
        (memory.copy (i32.add (i32.add (local.get $out) (i32.const 16)) (local.get $used))
                     (i32.add (local.get $p) (i32.const 8))
                     (i32.sub (local.get $size) (i32.const 8)))
        (local.set $used (i32.add (local.get $used) (local.get $size)))
        (local.set $p (i32.add (local.get $p) (local.get $size)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (i32.store (local.get $out) (local.get $used))
        (i32.store offset=4 (local.get $out) (local.get $i))
        (br $next)))
    (i32.const 0)))
