;; readfile.wasm: WASI p1 command. `readfile.wasm PATH` prints the file at the absolute guest PATH to stdout;
;; `readfile.wasm PATH write` tries to create/truncate it and write "x". PATH is resolved against the preopened
;; directories like wasi-libc does (longest matching preopen name). On failure it prints one line to stderr,
;;   readfile: PATH is not inside any preopened directory
;;   readfile: cannot open PATH: errno N        (N is the WASI errno, e.g. 44 = noent, 63 = perm, 76 = notcapable)
;;   readfile: cannot write PATH: errno N
;; and exits 1.
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  ;; @include p1_imports.wat
  ;; @include p1_lib.wat
  (data (i32.const 1024) "readfile: \00")
  (data (i32.const 1040) " is not inside any preopened directory\n\00")
  (data (i32.const 1100) "readfile: cannot open \00")
  (data (i32.const 1130) "readfile: cannot write \00")
  (data (i32.const 1160) ": errno \00")
  (data (i32.const 1180) "write")
  (data (i32.const 1190) "wrote \00")
  (data (i32.const 1200) "usage: readfile.wasm PATH [write]\n\00")
  (data (i32.const 1240) "x")

  (global $best_fd (mut i32) (i32.const -1))
  (global $best_len (mut i32) (i32.const 0))

  ;; find the preopen whose name is the longest prefix of the C string $path (ending at '/' or NUL)
  (func $find_preopen (param $path i32)
    (local $fd i32) (local $name i32) (local $len i32) (local $next i32)
    (local.set $fd (i32.const 3))
    (block $end (loop $each
      (br_if $end (call $fd_prestat_get (local.get $fd) (i32.const 32)))
      (local.set $len (i32.load (i32.const 36)))
      (local.set $name (call $alloc (i32.add (local.get $len) (i32.const 1))))
      (drop (call $fd_prestat_dir_name (local.get $fd) (local.get $name) (local.get $len)))
      ;; strip trailing '/' of the name (so "/" becomes "")
      (block $stripped (loop $strip
        (br_if $stripped (i32.eqz (local.get $len)))
        (br_if $stripped (i32.ne (i32.load8_u (i32.add (local.get $name) (i32.sub (local.get $len) (i32.const 1)))) (i32.const 47)))
        (local.set $len (i32.sub (local.get $len) (i32.const 1)))
        (br $strip)))
      (if (call $prefix (local.get $path) (local.get $name) (local.get $len)) (then
        (local.set $next (i32.load8_u (i32.add (local.get $path) (local.get $len))))
        (if (i32.or (i32.eqz (local.get $next)) (i32.eq (local.get $next) (i32.const 47))) (then
          (if (i32.or (i32.lt_s (global.get $best_fd) (i32.const 0)) (i32.gt_u (local.get $len) (global.get $best_len))) (then
            (global.set $best_fd (local.get $fd))
            (global.set $best_len (local.get $len))))))))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br $each))))

  (func $fail (param $msg i32) (param $path i32) (param $errno i32)
    (call $write_cstr (i32.const 2) (local.get $msg))
    (call $write_cstr (i32.const 2) (local.get $path))
    (call $write_cstr (i32.const 2) (i32.const 1160))
    (call $write_int (i32.const 2) (local.get $errno))
    (call $write_char (i32.const 2) (i32.const 10))
    (call $proc_exit (i32.const 1)))

  (func (export "_start")
    (local $path i32) (local $rel i32) (local $rel_len i32) (local $errno i32) (local $fd i32)
    (local $buf i32) (local $n i32) (local $writing i32)
    (call $load_args)
    (if (i32.lt_u (global.get $argc) (i32.const 2)) (then
      (call $write_cstr (i32.const 2) (i32.const 1200))
      (call $proc_exit (i32.const 2))))
    (local.set $path (call $arg (i32.const 1)))
    (if (i32.ge_u (global.get $argc) (i32.const 3)) (then
      (local.set $writing (call $streq (call $arg (i32.const 2)) (i32.const 1180) (i32.const 5)))))
    (call $find_preopen (local.get $path))
    (if (i32.lt_s (global.get $best_fd) (i32.const 0)) (then
      (call $write_cstr (i32.const 2) (i32.const 1024))
      (call $write_cstr (i32.const 2) (local.get $path))
      (call $write_cstr (i32.const 2) (i32.const 1040))
      (call $proc_exit (i32.const 1))))
    ;; path relative to the preopen: skip its name and any '/'
    (local.set $rel (i32.add (local.get $path) (global.get $best_len)))
    (block $slashes (loop $skip
      (br_if $slashes (i32.ne (i32.load8_u (local.get $rel)) (i32.const 47)))
      (local.set $rel (i32.add (local.get $rel) (i32.const 1)))
      (br $skip)))
    (local.set $rel_len (call $strlen (local.get $rel)))
    (if (local.get $writing) (then
      ;; oflags creat|trunc = 9, rights fd_write = 1<<6
      (local.set $errno (call $path_open (global.get $best_fd) (i32.const 1) (local.get $rel) (local.get $rel_len)
        (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 40)))
      (if (local.get $errno) (then (call $fail (i32.const 1130) (local.get $path) (local.get $errno))))
      (call $write (i32.load (i32.const 40)) (i32.const 1240) (i32.const 1))
      (call $write_cstr (i32.const 1) (i32.const 1190))
      (call $write_cstr (i32.const 1) (local.get $path))
      (call $write_char (i32.const 1) (i32.const 10))
      (return)))
    ;; rights fd_read = 1<<1
    (local.set $errno (call $path_open (global.get $best_fd) (i32.const 1) (local.get $rel) (local.get $rel_len)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 40)))
    (if (local.get $errno) (then (call $fail (i32.const 1100) (local.get $path) (local.get $errno))))
    (local.set $fd (i32.load (i32.const 40)))
    (local.set $buf (call $alloc (i32.const 4096)))
    (block $eof (loop $chunk
      (i32.store (i32.const 48) (local.get $buf))
      (i32.store (i32.const 52) (i32.const 4096))
      (local.set $errno (call $fd_read (local.get $fd) (i32.const 48) (i32.const 1) (i32.const 56)))
      (if (local.get $errno) (then (call $fail (i32.const 1100) (local.get $path) (local.get $errno))))
      (local.set $n (i32.load (i32.const 56)))
      (br_if $eof (i32.eqz (local.get $n)))
      (call $write (i32.const 1) (local.get $buf) (local.get $n))
      (br $chunk))))
)
