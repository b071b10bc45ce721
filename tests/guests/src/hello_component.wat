;; hello-component.wasm: a WASI preview 2 command COMPONENT (exports wasi:cli/run@0.2.0), written by hand in the
;; component-model text format so it builds offline with nothing but wasmtime's own WAT parser. It prints
;; "hello from wasm component", its arguments and $GREETING to stdout and a line to stderr, then
;;   ... exit N   -> wasi:cli/exit.exit-with-code(N)   (exit code N)
;;   ... fail     -> run returns err                    (exit code 1)
;;   otherwise    -> run returns ok                     (exit code 0)
;; The import shapes are the ones wit-component emits for these WASI 0.2.0 interfaces.
(component
  (type (instance (export "error" (type (sub resource)))))
  (import "wasi:io/error@0.2.0" (instance $ioerr (type 0)))
  (alias export $ioerr "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $error (type $err))
    (export "error" (type $err2 (eq $err)))
    (export "output-stream" (type $os (sub resource)))
    (type $own-err (own $err2))
    (type $stream-error (variant (case "last-operation-failed" $own-err) (case "closed")))
    (export "stream-error" (type $se (eq $stream-error)))
    (type $b (borrow $os))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" $b) (param "contents" (list u8)) (result (result (error $se)))))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $o))
    (export "output-stream" (type $o2 (eq $o)))
    (export "get-stdout" (func (result (own $o2))))))
  (import "wasi:cli/stderr@0.2.0" (instance $stderr
    (alias outer 1 $output-stream (type $o))
    (export "output-stream" (type $o2 (eq $o)))
    (export "get-stderr" (func (result (own $o2))))))
  (import "wasi:cli/environment@0.2.0" (instance $environment
    (export "get-environment" (func (result (list (tuple string string)))))
    (export "get-arguments" (func (result (list string))))))
  (import "wasi:cli/exit@0.2.0" (instance $exit
    (export "exit-with-code" (func (param "status-code" u8)))))

  ;; memory + a bump cabi_realloc for the lists/strings the host returns
  (core module $libc
    (memory (export "memory") 2)
    (global $heap (mut i32) (i32.const 65536))
    (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $p) (local.get $size)))
      (local.get $p)))
  (core instance $libc (instantiate $libc))

  (core func $get-stdout (canon lower (func $stdout "get-stdout")))
  (core func $get-stderr (canon lower (func $stderr "get-stderr")))
  (core func $write (canon lower (func $streams "[method]output-stream.blocking-write-and-flush")
    (memory (core memory $libc "memory"))))
  (core func $get-arguments (canon lower (func $environment "get-arguments")
    (memory (core memory $libc "memory")) (realloc (core func $libc "cabi_realloc")) string-encoding=utf8))
  (core func $get-environment (canon lower (func $environment "get-environment")
    (memory (core memory $libc "memory")) (realloc (core func $libc "cabi_realloc")) string-encoding=utf8))
  (core func $exit-with-code (canon lower (func $exit "exit-with-code")))

  (core module $main
    (import "host" "get-stdout" (func $get-stdout (result i32)))
    (import "host" "get-stderr" (func $get-stderr (result i32)))
    (import "host" "write" (func $write-raw (param i32 i32 i32 i32)))
    (import "host" "get-arguments" (func $get-arguments (param i32)))
    (import "host" "get-environment" (func $get-environment (param i32)))
    (import "host" "exit-with-code" (func $exit-with-code (param i32)))
    (import "libc" "memory" (memory 2))
    (data (i32.const 1024) "hello from wasm component\n")   ;; 26
    (data (i32.const 1060) "args:")                         ;; 5
    (data (i32.const 1070) "GREETING")                      ;; 8
    (data (i32.const 1080) "GREETING=")                     ;; 9
    (data (i32.const 1090) "GREETING is not set\n")         ;; 20
    (data (i32.const 1120) "hello on stderr from component\n") ;; 31
    (data (i32.const 1160) "exit")                          ;; 4
    (data (i32.const 1170) "fail")                          ;; 4
    (data (i32.const 1180) " \n")

    (func $write (param $stream i32) (param $p i32) (param $len i32)
      (call $write-raw (local.get $stream) (local.get $p) (local.get $len) (i32.const 128)))

    (func $memeq (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
      (local $i i32)
      (if (i32.ne (local.get $alen) (local.get $blen)) (then (return (i32.const 0))))
      (block $diff (loop $next
        (if (i32.ge_u (local.get $i) (local.get $alen)) (then (return (i32.const 1))))
        (br_if $diff (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                             (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (i32.const 0))

    (func $atoi (param $p i32) (param $len i32) (result i32)
      (local $n i32) (local $i i32)
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
                               (i32.sub (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 48))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (local.get $n))

    (func (export "run") (result i32)
      (local $out i32) (local $err i32) (local $args i32) (local $argc i32) (local $i i32)
      (local $env i32) (local $envc i32) (local $entry i32) (local $found i32) (local $last i32)
      (local.set $out (call $get-stdout))
      (local.set $err (call $get-stderr))
      (call $write (local.get $out) (i32.const 1024) (i32.const 26))
      ;; args: list<string> -> (ptr, len) at 136; elements are (ptr, len) pairs
      (call $get-arguments (i32.const 136))
      (local.set $args (i32.load (i32.const 136)))
      (local.set $argc (i32.load (i32.const 140)))
      (call $write (local.get $out) (i32.const 1060) (i32.const 5))
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $argc)))
        (call $write (local.get $out) (i32.const 1180) (i32.const 1))
        (call $write (local.get $out)
          (i32.load (i32.add (local.get $args) (i32.mul (local.get $i) (i32.const 8))))
          (i32.load offset=4 (i32.add (local.get $args) (i32.mul (local.get $i) (i32.const 8)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (call $write (local.get $out) (i32.const 1181) (i32.const 1))
      ;; environment: list<tuple<string,string>> -> (ptr, len) at 144; elements are 16 bytes
      (call $get-environment (i32.const 144))
      (local.set $env (i32.load (i32.const 144)))
      (local.set $envc (i32.load (i32.const 148)))
      (local.set $i (i32.const 0))
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $envc)))
        (local.set $entry (i32.add (local.get $env) (i32.mul (local.get $i) (i32.const 16))))
        (if (call $memeq (i32.load (local.get $entry)) (i32.load offset=4 (local.get $entry)) (i32.const 1070) (i32.const 8))
          (then
            (local.set $found (i32.const 1))
            (call $write (local.get $out) (i32.const 1080) (i32.const 9))
            (call $write (local.get $out) (i32.load offset=8 (local.get $entry)) (i32.load offset=12 (local.get $entry)))
            (call $write (local.get $out) (i32.const 1181) (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (if (i32.eqz (local.get $found)) (then (call $write (local.get $out) (i32.const 1090) (i32.const 20))))
      (call $write (local.get $err) (i32.const 1120) (i32.const 31))
      ;; "... exit N" -> exit-with-code(N); "... fail" -> err
      (if (i32.ge_u (local.get $argc) (i32.const 3)) (then
        (local.set $entry (i32.add (local.get $args) (i32.mul (i32.sub (local.get $argc) (i32.const 2)) (i32.const 8))))
        (if (call $memeq (i32.load (local.get $entry)) (i32.load offset=4 (local.get $entry)) (i32.const 1160) (i32.const 4))
          (then (call $exit-with-code (call $atoi (i32.load offset=8 (local.get $entry)) (i32.load offset=12 (local.get $entry))))))))
      (if (i32.ge_u (local.get $argc) (i32.const 1)) (then
        (local.set $last (i32.add (local.get $args) (i32.mul (i32.sub (local.get $argc) (i32.const 1)) (i32.const 8))))
        (if (call $memeq (i32.load (local.get $last)) (i32.load offset=4 (local.get $last)) (i32.const 1170) (i32.const 4))
          (then (return (i32.const 1))))))
      (i32.const 0)))

  (core instance $main (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance
      (export "get-stdout" (func $get-stdout))
      (export "get-stderr" (func $get-stderr))
      (export "write" (func $write))
      (export "get-arguments" (func $get-arguments))
      (export "get-environment" (func $get-environment))
      (export "exit-with-code" (func $exit-with-code))))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
