;; spin1-echo.wasm: a Spin 1 HTTP module (spin-http.wit, wit-bindgen 0.2 canonical ABI), hand-written.
;; `handle-http-request` answers 200 with headers content-type: text/plain, x-method: <METHOD>, x-uri: <uri>,
;; every request header whose name starts with "x-" copied back, and the request body as the response body.
;; Special URIs: /trap (prints "about to trap" to stderr, then `unreachable`), /loop (spins forever),
;; /teapot (status 418), /bad-status (status 1000), /config (calls spin-config get-config("message") and adds
;; x-config: <value>, or x-config-error: <message> and x-config-error-tag: <error case>), /outbound (calls
;; wasi-outbound-http request and adds x-outbound-error: <http-error case> when it fails).
;; canonical_abi_realloc is a bump allocator that grows memory as needed (so 10 MiB bodies fit);
;; canonical_abi_free does nothing.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "spin-config" "get-config" (func $get_config (param i32 i32 i32)))
  (import "wasi-outbound-http" "request"
    (func $outbound (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))

  ;; 0..63 scratch; 192 method name lengths; 256 method names (8 bytes each); 512.. constant strings
  (data (i32.const 192) "\03\04\03\06\05\04\07")
  (data (i32.const 256) "GET\00\00\00\00\00POST\00\00\00\00PUT\00\00\00\00\00DELETE\00\00PATCH\00\00\00HEAD\00\00\00\00OPTIONS\00")
  (data (i32.const 512) "content-type")
  (data (i32.const 528) "text/plain")
  (data (i32.const 544) "x-method")
  (data (i32.const 560) "x-uri")
  (data (i32.const 576) "x-config")
  (data (i32.const 592) "x-config-error")
  (data (i32.const 608) "x-config-error-tag")
  (data (i32.const 640) "x-outbound-error")
  (data (i32.const 672) "/trap")
  (data (i32.const 688) "/loop")
  (data (i32.const 704) "/config")
  (data (i32.const 720) "/outbound")
  (data (i32.const 736) "/teapot")
  (data (i32.const 752) "/bad-status")
  (data (i32.const 768) "message")
  (data (i32.const 784) "https://example.com/")
  (data (i32.const 816) "about to trap\n")
  (data (i32.const 848) "0123456789")

  (func $realloc (export "canonical_abi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $p) (local.get $new_size)))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have)) (then
      (if (i32.eq (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                                          (i32.const 16)))
                  (i32.const -1))
        (then (unreachable)))))
    (global.set $heap (local.get $end))
    (if (local.get $old) (then
      (memory.copy (local.get $p) (local.get $old)
        (select (local.get $old_size) (local.get $new_size) (i32.lt_u (local.get $old_size) (local.get $new_size))))))
    (local.get $p))

  (func (export "canonical_abi_free") (param i32 i32 i32))

  ;; 1 if the $len bytes at $p equal the $qlen bytes at $q
  (func $eq (param $p i32) (param $len i32) (param $q i32) (param $qlen i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $len) (local.get $qlen)) (then (return (i32.const 0))))
    (block $diff (loop $next
      (if (i32.ge_u (local.get $i) (local.get $len)) (then (return (i32.const 1))))
      (br_if $diff (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $i)))
                           (i32.load8_u (i32.add (local.get $q) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.const 0))

  ;; store header ($kp,$kl,$vp,$vl) as element $i of the 16-byte-element array at $arr
  (func $put (param $arr i32) (param $i i32) (param $kp i32) (param $kl i32) (param $vp i32) (param $vl i32)
    (local $e i32)
    (local.set $e (i32.add (local.get $arr) (i32.shl (local.get $i) (i32.const 4))))
    (i32.store (local.get $e) (local.get $kp))
    (i32.store offset=4 (local.get $e) (local.get $kl))
    (i32.store offset=8 (local.get $e) (local.get $vp))
    (i32.store offset=12 (local.get $e) (local.get $vl)))

  (func (export "handle-http-request")
    (param $method i32) (param $uri i32) (param $uri_len i32) (param $hdrs i32) (param $hdrs_len i32)
    (param $params i32) (param $params_len i32) (param $body_tag i32) (param $body i32) (param $body_len i32)
    (result i32)
    (local $status i32) (local $arr i32) (local $n i32) (local $i i32) (local $entry i32) (local $key i32)
    (local $ret i32)
    (local.set $status (i32.const 200))
    (if (call $eq (local.get $uri) (local.get $uri_len) (i32.const 672) (i32.const 5)) (then
      (i32.store (i32.const 0) (i32.const 816))
      (i32.store (i32.const 4) (i32.const 14))
      (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
      (unreachable)))
    (if (call $eq (local.get $uri) (local.get $uri_len) (i32.const 688) (i32.const 5)) (then
      (loop $forever (br $forever))))
    (if (call $eq (local.get $uri) (local.get $uri_len) (i32.const 736) (i32.const 7)) (then
      (local.set $status (i32.const 418))))
    (if (call $eq (local.get $uri) (local.get $uri_len) (i32.const 752) (i32.const 11)) (then
      (local.set $status (i32.const 1000))))

    (local.set $arr (call $realloc (i32.const 0) (i32.const 0) (i32.const 4)
      (i32.shl (i32.add (local.get $hdrs_len) (i32.const 6)) (i32.const 4))))
    (call $put (local.get $arr) (i32.const 0) (i32.const 512) (i32.const 12) (i32.const 528) (i32.const 10))
    (call $put (local.get $arr) (i32.const 1) (i32.const 544) (i32.const 8)
      (i32.add (i32.const 256) (i32.shl (local.get $method) (i32.const 3)))
      (i32.load8_u (i32.add (i32.const 192) (local.get $method))))
    (call $put (local.get $arr) (i32.const 2) (i32.const 560) (i32.const 5) (local.get $uri) (local.get $uri_len))
    (local.set $n (i32.const 3))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $hdrs_len)))
      (local.set $entry (i32.add (local.get $hdrs) (i32.shl (local.get $i) (i32.const 4))))
      (local.set $key (i32.load (local.get $entry)))
      (if (i32.ge_u (i32.load offset=4 (local.get $entry)) (i32.const 2)) (then
        (if (i32.and (i32.eq (i32.load8_u (local.get $key)) (i32.const 120))
                     (i32.eq (i32.load8_u offset=1 (local.get $key)) (i32.const 45))) (then
          (memory.copy (i32.add (local.get $arr) (i32.shl (local.get $n) (i32.const 4))) (local.get $entry) (i32.const 16))
          (local.set $n (i32.add (local.get $n) (i32.const 1)))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))

    (if (call $eq (local.get $uri) (local.get $uri_len) (i32.const 704) (i32.const 7)) (then
      (call $get_config (i32.const 768) (i32.const 7) (i32.const 32))
      (if (i32.eqz (i32.load8_u (i32.const 32)))
        (then
          (call $put (local.get $arr) (local.get $n) (i32.const 576) (i32.const 8)
            (i32.load (i32.const 36)) (i32.load (i32.const 40)))
          (local.set $n (i32.add (local.get $n) (i32.const 1))))
        (else
          (call $put (local.get $arr) (local.get $n) (i32.const 592) (i32.const 14)
            (i32.load (i32.const 40)) (i32.load (i32.const 44)))
          (call $put (local.get $arr) (i32.add (local.get $n) (i32.const 1)) (i32.const 608) (i32.const 18)
            (i32.add (i32.const 848) (i32.load8_u (i32.const 36))) (i32.const 1))
          (local.set $n (i32.add (local.get $n) (i32.const 2)))))))
    (if (call $eq (local.get $uri) (local.get $uri_len) (i32.const 720) (i32.const 9)) (then
      (call $outbound (i32.const 0) (i32.const 784) (i32.const 20) (i32.const 4) (i32.const 0) (i32.const 4)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 32))
      (if (i32.load8_u (i32.const 32)) (then
        (call $put (local.get $arr) (local.get $n) (i32.const 640) (i32.const 16)
          (i32.add (i32.const 848) (i32.load8_u (i32.const 36))) (i32.const 1))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))))))

    (local.set $ret (call $realloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 28)))
    (i32.store16 (local.get $ret) (local.get $status))
    (i32.store8 offset=4 (local.get $ret) (i32.const 1))
    (i32.store offset=8 (local.get $ret) (local.get $arr))
    (i32.store offset=12 (local.get $ret) (local.get $n))
    (i32.store8 offset=16 (local.get $ret) (local.get $body_tag))
    (i32.store offset=20 (local.get $ret) (local.get $body))
    (i32.store offset=24 (local.get $ret) (local.get $body_len))
    (local.get $ret))
)
