;; wagi-echo.wasm: a WAGI (CGI over WASI p1) module. Prints a CGI header block (Content-Type: text/plain and an
;; empty line), then one line per argv element ("arg: A"), one per environment entry ("env: NAME=VALUE"; so the
;; CGI variables REQUEST_METHOD, PATH_INFO, QUERY_STRING, X_MATCHED_ROUTE, ... are all there), then "body: "
;; followed by everything it reads from stdin, copied through in 64 KiB chunks.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  ;; @include p1_imports.wat
  ;; @include p1_lib.wat
  (data (i32.const 1024) "Content-Type: text/plain\n\n\00")
  (data (i32.const 1100) "arg: \00")
  (data (i32.const 1120) "env: \00")
  (data (i32.const 1140) "body: \00")

  (func (export "_start")
    (local $i i32) (local $buf i32) (local $n i32)
    (call $write_cstr (i32.const 1) (i32.const 1024))
    (call $load_args)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (global.get $argc)))
      (call $write_cstr (i32.const 1) (i32.const 1100))
      (call $write_cstr (i32.const 1) (call $arg (local.get $i)))
      (call $write_char (i32.const 1) (i32.const 10))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (drop (call $getenv (i32.const 1024) (i32.const 0)))  ;; loads $envc / $envv
    (local.set $i (i32.const 0))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (global.get $envc)))
      (call $write_cstr (i32.const 1) (i32.const 1120))
      (call $write_cstr (i32.const 1) (i32.load (i32.add (global.get $envv) (i32.mul (local.get $i) (i32.const 4)))))
      (call $write_char (i32.const 1) (i32.const 10))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $write_cstr (i32.const 1) (i32.const 1140))
    (local.set $buf (call $alloc (i32.const 65536)))
    (block $eof (loop $chunk
      (i32.store (i32.const 48) (local.get $buf))
      (i32.store (i32.const 52) (i32.const 65536))
      (br_if $eof (call $fd_read (i32.const 0) (i32.const 48) (i32.const 1) (i32.const 56)))
      (local.set $n (i32.load (i32.const 56)))
      (br_if $eof (i32.eqz (local.get $n)))
      (call $write (i32.const 1) (local.get $buf) (local.get $n))
      (br $chunk))))
)
