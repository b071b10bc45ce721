;; hello.wasm: WASI p1 command. Prints a greeting, its argv and $GREETING to stdout, a line to stderr, then
;; exits 0, or N when its last two args are "exit N" (e.g. `hello.wasm exit 3`).
(module
  ;; @include p1_imports.wat
  ;; @include p1_lib.wat
  (data (i32.const 1024) "hello from wasm\n\00")
  (data (i32.const 1100) "args:\00")
  (data (i32.const 1200) "GREETING")
  (data (i32.const 1220) "GREETING=\00")
  (data (i32.const 1240) "GREETING is not set\n\00")
  (data (i32.const 1300) "hello on stderr\n\00")
  (data (i32.const 1400) "exit")

  (func (export "_start")
    (local $i i32) (local $value i32)
    (call $load_args)
    (call $write_cstr (i32.const 1) (i32.const 1024))
    (call $write_cstr (i32.const 1) (i32.const 1100))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (global.get $argc)))
      (call $write_char (i32.const 1) (i32.const 32))
      (call $write_cstr (i32.const 1) (call $arg (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $write_char (i32.const 1) (i32.const 10))
    (local.set $value (call $getenv (i32.const 1200) (i32.const 8)))
    (if (local.get $value)
      (then
        (call $write_cstr (i32.const 1) (i32.const 1220))
        (call $write_cstr (i32.const 1) (local.get $value))
        (call $write_char (i32.const 1) (i32.const 10)))
      (else (call $write_cstr (i32.const 1) (i32.const 1240))))
    (call $write_cstr (i32.const 2) (i32.const 1300))
    (if (i32.ge_u (global.get $argc) (i32.const 3))
      (then (if (call $streq (call $arg (i32.sub (global.get $argc) (i32.const 2))) (i32.const 1400) (i32.const 4))
        (then (call $proc_exit (call $atoi (call $arg (i32.sub (global.get $argc) (i32.const 1))))))))))
)
