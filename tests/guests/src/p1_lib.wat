;; Shared helpers for the WASI preview 1 test guests, pasted by scripts/build_guests.py where a guest says
;; ";; @include p1_lib.wat" (WAT has no includes). Expects the guest to import, under these names:
;; $fd_write, $args_sizes_get, $args_get, $environ_sizes_get, $environ_get, $proc_exit,
;; and to define no memory of its own. Memory map: 0..1023 scratch (iovecs, out-params), 1024..65535 the guest's
;; string data, 65536.. bump heap (args, environ, file buffers).
  (memory (export "memory") 4)
  (global $heap (mut i32) (i32.const 65536))
  (global $argc (mut i32) (i32.const 0))
  (global $argv (mut i32) (i32.const 0))
  (global $envc (mut i32) (i32.const 0))
  (global $envv (mut i32) (i32.const 0))

  (func $alloc (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $p))

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))

  ;; write all of [p, p+len) to fd (loops on short writes; gives up on an error)
  (func $write (param $fd i32) (param $p i32) (param $len i32)
    (block $done (loop $more
      (br_if $done (i32.le_s (local.get $len) (i32.const 0)))
      (i32.store (i32.const 0) (local.get $p))
      (i32.store (i32.const 4) (local.get $len))
      (br_if $done (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $p (i32.add (local.get $p) (i32.load (i32.const 8))))
      (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
      (br $more))))

  (func $write_cstr (param $fd i32) (param $p i32)
    (call $write (local.get $fd) (local.get $p) (call $strlen (local.get $p))))

  (func $write_char (param $fd i32) (param $c i32)
    (i32.store8 (i32.const 16) (local.get $c))
    (call $write (local.get $fd) (i32.const 16) (i32.const 1)))

  ;; decimal, for errnos and exit codes
  (func $write_int (param $fd i32) (param $n i32)
    (local $p i32)
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then
      (call $write_char (local.get $fd) (i32.const 45))
      (local.set $n (i32.sub (i32.const 0) (local.get $n)))))
    (local.set $p (i32.const 63))
    (loop $digit
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (br_if $digit (local.get $n)))
    (call $write (local.get $fd) (i32.add (local.get $p) (i32.const 1)) (i32.sub (i32.const 63) (local.get $p))))

  (func $atoi (param $p i32) (result i32)
    (local $n i32) (local $c i32)
    (block $done (loop $next
      (local.set $c (i32.load8_u (local.get $p)))
      (br_if $done (i32.lt_u (i32.sub (local.get $c) (i32.const 48)) (i32.const 0)))
      (br_if $done (i32.gt_u (i32.sub (local.get $c) (i32.const 48)) (i32.const 9)))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (i32.sub (local.get $c) (i32.const 48))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $next)))
    (local.get $n))

  ;; 1 if the NUL-terminated string at $a equals the $len bytes at $b
  (func $streq (param $a i32) (param $b i32) (param $len i32) (result i32)
    (local $i i32)
    (if (i32.ne (call $strlen (local.get $a)) (local.get $len)) (then (return (i32.const 0))))
    (block $diff (loop $next
      (if (i32.ge_u (local.get $i) (local.get $len)) (then (return (i32.const 1))))
      (br_if $diff (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                           (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.const 0))

  (func $load_args
    (drop (call $args_sizes_get (i32.const 24) (i32.const 28)))
    (global.set $argc (i32.load (i32.const 24)))
    (global.set $argv (call $alloc (i32.mul (i32.load (i32.const 24)) (i32.const 4))))
    (drop (call $args_get (global.get $argv) (call $alloc (i32.load (i32.const 28))))))

  (func $arg (param $i i32) (result i32)
    (i32.load (i32.add (global.get $argv) (i32.mul (local.get $i) (i32.const 4)))))

  ;; value of the env var named by the $len bytes at $name (as a C string), or 0 when unset
  (func $getenv (param $name i32) (param $len i32) (result i32)
    (local $i i32) (local $entry i32)
    (if (i32.eqz (global.get $envv)) (then
      (drop (call $environ_sizes_get (i32.const 24) (i32.const 28)))
      (global.set $envc (i32.load (i32.const 24)))
      (global.set $envv (call $alloc (i32.mul (i32.load (i32.const 24)) (i32.const 4))))
      (drop (call $environ_get (global.get $envv) (call $alloc (i32.load (i32.const 28)))))))
    (block $none (loop $next
      (br_if $none (i32.ge_u (local.get $i) (global.get $envc)))
      (local.set $entry (i32.load (i32.add (global.get $envv) (i32.mul (local.get $i) (i32.const 4)))))
      (if (i32.eq (i32.load8_u (i32.add (local.get $entry) (local.get $len))) (i32.const 61))
        (then (if (call $prefix (local.get $entry) (local.get $name) (local.get $len))
          (then (return (i32.add (i32.add (local.get $entry) (local.get $len)) (i32.const 1)))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.const 0))

  ;; 1 if the $len bytes at $b are a prefix of the C string at $a
  (func $prefix (param $a i32) (param $b i32) (param $len i32) (result i32)
    (local $i i32)
    (block $diff (loop $next
      (if (i32.ge_u (local.get $i) (local.get $len)) (then (return (i32.const 1))))
      (br_if $diff (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                           (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.const 0))
