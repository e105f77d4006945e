;; Logs one hostile line per batch and emits nothing (every input handled, no output): terminal escapes (clear the screen, set
;; the window title), NUL, a carriage return, rich markup and a right-to-left override. Needs
;; the log capability.
(module
  (import "iot" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  ;; 36 bytes: ESC[2J ESC]0;owned BEL [red]boom NUL CR gone U+202E evil
  (data (i32.const 64) "\1b[2J\1b]0;owned\07[red]boom\00\0dgone\e2\80\aeevil")
  (global $heap (mut i32) (i32.const 4096))
  (func (export "iot_abi_version") (result i32) (i32.const 1))
  (func (export "iot_alloc") (param $n i32) (result i32)
    (local $p i32) (local $need i32)
    (local.set $p (global.get $heap))
    (local.set $need (i32.add (local.get $p) (local.get $n)))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (local.get $need) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (return (i32.const 0))))
        (br $grow)))
    (global.set $heap (local.get $need))
    (local.get $p))
  (func (export "iot_process") (param $in i32) (param $len i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (call $log (i32.const 1) (i32.const 64) (i32.const 36))
    (i32.store (local.get $out) (i32.const 0))
    (i32.store offset=4 (local.get $out) (local.get $count))
    (i32.const 0)))
